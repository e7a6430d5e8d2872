"""Missing inputs: one wording, naming the setting, the path and how to get it."""
from __future__ import annotations

import pytest

from data.inputs import require_input


def test_an_existing_file_or_directory_passes(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    assert require_input(str(tmp_path / "a.jsonl"), "x.file") == tmp_path / "a.jsonl"
    assert require_input(tmp_path, "x.dir") == tmp_path


def test_a_missing_path_names_the_setting_and_data_prepare(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError) as err:
        require_input(missing, "dpo.train_file")
    assert str(err.value) == (f"dpo.train_file: {missing} does not exist; "
                              "run `python -m data.prepare` or set dpo.train_file")
    with pytest.raises(FileNotFoundError, match=r"^score_file: .* does not exist; point it at a file$"):
        require_input(missing, "score_file", "point it at a file")


def test_a_directory_without_its_marker_file_is_named_by_what_it_should_be(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        require_input(tmp_path, "model_path", "train a stage first", marker="config.json", what="a model export")
    assert str(err.value) == f"model_path: {tmp_path} is not a model export (no config.json); train a stage first"
    (tmp_path / "config.json").write_text("{}")
    assert require_input(tmp_path, "model_path", marker="config.json") == tmp_path
