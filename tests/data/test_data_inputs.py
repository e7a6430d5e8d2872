"""Missing inputs: one wording, naming the setting, the path and how to get it."""
from __future__ import annotations

import pytest

from data.inputs import require_input, require_setting


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


def test_a_default_under_a_data_directory_names_the_directory_setting(tmp_path):
    """An unset file setting falls back to a path under the data directory: a missing one names the file's setting
    and the directory's (the one to fix when the directory is wrong)."""
    default = tmp_path / "data" / "preference" / "heldout.jsonl"
    with pytest.raises(FileNotFoundError) as err:
        require_setting("", "dpo.heldout_file", default, under="dpo.data_dir")
    assert str(err.value) == (f"dpo.heldout_file: {default} does not exist (dpo.heldout_file is unset: this is its "
                              "default under dpo.data_dir); run `python -m data.prepare` or set dpo.data_dir or "
                              "dpo.heldout_file")
    with pytest.raises(FileNotFoundError, match=r"^dpo\.heldout_file: .*nope\.jsonl does not exist; run"):
        require_setting(str(tmp_path / "nope.jsonl"), "dpo.heldout_file", default, under="dpo.data_dir")
    default.parent.mkdir(parents=True)
    default.write_text("{}\n")
    assert require_setting(None, "dpo.heldout_file", default, under="dpo.data_dir") == default
    with pytest.raises(FileNotFoundError, match=r"^perplexity\.shard_dir: .* is not a shard set \(no m\.json\); x$"):
        require_setting(tmp_path, "perplexity.shard_dir", default, under="data_dir", remedy="x", marker="m.json",
                        what="a shard set")
