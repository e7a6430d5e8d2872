"""Preference data in every TRL format (standard / conversational, explicit / implicit prompt) from every file
kind (JSONL, JSON, Parquet, a list of files, a datasets save_to_disk directory): data.preference.read_preference_data
and data.records."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from data.jsonl import DataFormatError
from data.preference import read_preference_data


def _msgs(*turns):
    return [{"role": role, "content": text} for role, text in turns]


# Two pairs in each format, and the {prompt, chosen, rejected} each must come out as.
STANDARD = [{"prompt": "Q: 2+2? A:", "chosen": " 4", "rejected": " 5"},
            {"prompt": "Q: 3+3? A:", "chosen": " 6", "rejected": " 9"}]
CONVERSATIONAL = [
    {"prompt": _msgs(("user", "2+2?")), "chosen": _msgs(("assistant", "4")), "rejected": _msgs(("assistant", "5"))},
    {"prompt": _msgs(("system", "Be brief."), ("user", "3+3?")), "chosen": _msgs(("assistant", "6")),
     "rejected": _msgs(("assistant", "9"))},
]
FORMATS = {
    "standard_explicit": (STANDARD, STANDARD),
    "standard_implicit": ([{"chosen": p["prompt"] + p["chosen"], "rejected": p["prompt"] + p["rejected"]}
                           for p in STANDARD], STANDARD),
    "conversational_explicit": (CONVERSATIONAL, CONVERSATIONAL),
    "conversational_implicit": ([{"chosen": p["prompt"] + p["chosen"], "rejected": p["prompt"] + p["rejected"]}
                                 for p in CONVERSATIONAL], CONVERSATIONAL),
}


def _write(kind: str, records: list[dict], root):
    """``records`` as a data setting of file kind ``kind``; returns the setting (a path or a list of paths)."""
    if kind == "jsonl":
        path = root / "p.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return str(path)
    if kind == "json":
        path = root / "p.json"
        path.write_text(json.dumps(records, indent=1))
        return str(path)
    if kind == "parquet":
        path = root / "p.parquet"
        pq.write_table(pa.Table.from_pylist(records), path)
        return str(path)
    if kind == "list":
        paths = [root / "a.jsonl", root / "b.jsonl"]
        paths[0].write_text(json.dumps(records[0]) + "\n")
        paths[1].write_text("".join(json.dumps(r) + "\n" for r in records[1:]))
        return [str(p) for p in paths]
    Dataset.from_list(records).save_to_disk(str(root / "saved"))
    return str(root / "saved")


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "list", "saved"])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_from_every_file_kind(tmp_path, fmt, kind):
    records, expected = FORMATS[fmt]
    assert read_preference_data(_write(kind, records, tmp_path), "dpo.train_data") == expected


def test_extra_keys_are_dropped_and_a_single_split_datasetdict_is_read(tmp_path):
    records = [dict(r, score=1.0, id=i) for i, r in enumerate(CONVERSATIONAL)]
    DatasetDict({"train": Dataset.from_list(records)}).save_to_disk(str(tmp_path / "dd"))
    assert read_preference_data(str(tmp_path / "dd"), "dpo.train_data") == CONVERSATIONAL
    DatasetDict({"train": Dataset.from_list(records), "test": Dataset.from_list(records)}).save_to_disk(
        str(tmp_path / "two"))
    with pytest.raises(DataFormatError, match=r"dpo.eval_data: .*two is a DatasetDict with splits \['test', 'train'\]"):
        read_preference_data(str(tmp_path / "two"), "dpo.eval_data")


def test_one_data_set_holds_one_format(tmp_path):
    path = _write("list", [STANDARD[0], CONVERSATIONAL[1]], tmp_path)
    with pytest.raises(DataFormatError, match=r"b\.jsonl: record 1: conversational record, but .*a\.jsonl: record 1 "
                                              r"is standard"):
        read_preference_data(path, "dpo.train_data")


@pytest.mark.parametrize("record,message", [
    ({"chosen": "blue", "rejected": "green"}, "share no prompt"),
    ({"chosen": _msgs(("assistant", "a")), "rejected": _msgs(("assistant", "b"))}, "share no prompt"),
    ({"prompt": "q", "chosen": "a", "rejected": "a"}, "chosen and rejected are identical"),
    ({"prompt": "q", "chosen": "a"}, r"needs 'chosen' and 'rejected'"),
    ({"prompt": "q", "chosen": 3, "rejected": "a"}, "'chosen' must be a string"),
    ({"prompt": _msgs(("user", "q")), "chosen": _msgs(("user", "a")), "rejected": _msgs(("assistant", "b"))},
     "role 'assistant'"),
    ({"prompt": _msgs(("user", "q")), "chosen": _msgs(("assistant", "a")), "rejected": "b"}, "'rejected'"),
])
def test_bad_records_are_errors_naming_file_and_record(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(STANDARD[0] if isinstance(record["chosen"], str) else CONVERSATIONAL[0]) + "\n"
                    + json.dumps(record) + "\n")
    with pytest.raises(DataFormatError, match=rf"bad\.jsonl: record 2: .*{message}"):
        read_preference_data(str(path), "dpo.train_data")


def test_missing_or_unknown_inputs_name_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dpo.train_data: .*nowhere.jsonl does not exist"):
        read_preference_data(str(tmp_path / "nowhere.jsonl"), "dpo.train_data")
    (tmp_path / "p.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataFormatError, match=r"dpo.train_data: .*p\.csv: unknown file kind"):
        read_preference_data(str(tmp_path / "p.csv"), "dpo.train_data")
    (tmp_path / "p.json").write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}))
    with pytest.raises(DataFormatError, match=r"p\.json: expected a JSON list of records, got dict"):
        read_preference_data(str(tmp_path / "p.json"), "dpo.train_data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match=r"dpo.eval_data: .*empty is a directory but not a datasets"):
        read_preference_data(str(tmp_path / "empty"), "dpo.eval_data")
