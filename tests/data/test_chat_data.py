"""A user's chat data in TRL's formats (data.chat_data): messages and prompt/completion records, from every file kind
data.records reads, with errors naming the file, the record and the key."""
import json

import pytest
from datasets import Dataset, DatasetDict

from data.chat_data import chat_example, iter_chat_examples
from data.jsonl import DataFormatError

USER, ASSISTANT = {"role": "user", "content": "2 plus 2?"}, {"role": "assistant", "content": "4"}
RECORDS = [{"messages": [USER, ASSISTANT, USER, ASSISTANT]}, {"prompt": "3 plus 3?", "completion": "6"},
           {"prompt": [USER], "completion": [ASSISTANT], "extra": 1}]


def test_formats_give_messages_and_trained_turns():
    ex = [chat_example(r, f"r{i}") for i, r in enumerate(RECORDS)]
    assert ex[0].train_turns == (1, 3) and ex[0].messages == [USER, ASSISTANT, USER, ASSISTANT]
    assert ex[1].messages == [{"role": "user", "content": "3 plus 3?"}, {"role": "assistant", "content": "6"}]
    assert ex[1].train_turns == (1,) and ex[2].train_turns == (1,) and ex[2].where == "r2"


@pytest.mark.parametrize("record, error", [
    ({"messages": [USER]}, "no assistant message"),
    ({"prompt": "x", "completion": [USER]}, "'completion' has no assistant message"),
    ({"prompt": "x"}, "needs 'messages', or 'prompt' and 'completion'"),
    ({"text": "x"}, r"has \['text'\]"),
    ({"prompt": [{"role": "user"}], "completion": "y"}, "'prompt' message 0"),
    ({"messages": [{"role": "robot", "content": "x"}, ASSISTANT]}, "unknown role 'robot'"),
])
def test_bad_records_name_where(record, error):
    with pytest.raises(DataFormatError, match=f"f.jsonl: record 3: .*{error}"):
        chat_example(record, "f.jsonl: record 3")


def test_every_file_kind_and_lists(tmp_path):
    jsonl, js, pq_path, saved = (tmp_path / n for n in ("a.jsonl", "b.json", "c.parquet", "d"))
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    js.write_text(json.dumps(RECORDS))
    Dataset.from_list(RECORDS[1:2] * 3).to_parquet(str(pq_path))
    DatasetDict({"train": Dataset.from_list(RECORDS[:1] * 2)}).save_to_disk(str(saved))
    got = list(iter_chat_examples([str(jsonl), str(js), str(pq_path), str(saved)], "sft.train_data"))
    assert len(got) == 3 + 3 + 3 + 2
    assert [e.train_turns for e in got[:3]] == [(1, 3), (1,), (1,)] == [e.train_turns for e in got[3:6]]
    assert got[6].messages[1]["content"] == "6" and got[-1].train_turns == (1, 3)
    assert len(list(iter_chat_examples(str(jsonl), "sft.train_data"))) == 3  # one path, not a list


def test_missing_file_and_bad_record_name_the_key_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="sft.train_data: .*nope.jsonl"):
        list(iter_chat_examples([str(tmp_path / "nope.jsonl")], "sft.train_data"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(DataFormatError, match="bad.jsonl: record 2"):
        list(iter_chat_examples(str(bad), "sft.train_data"))
