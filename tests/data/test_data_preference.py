"""Preference pairs: TRL conversational format, corrupted-solution pairs, on-policy pairs from samples."""
from __future__ import annotations

import json

import pytest

from data.jsonl import DataFormatError
from data.preference import pairs_from_corruptions, pairs_from_samples, read_preference_jsonl, validate_pair
from data.reasoning import format_prompt, generate_problems, generate_problems_with_values
from tests.data.answer_check import is_correct


def test_corruption_pairs_are_valid_dpo_records(tmp_path):
    pairs = pairs_from_corruptions(generate_problems_with_values(50, "train", seed=0), seed=0)
    assert len(pairs) == 50
    for p in pairs:
        validate_pair(p, "x")
        assert p["prompt"][0]["role"] == "user" and p["chosen"][0]["role"] == "assistant"
        assert is_correct(p["chosen"][0]["content"], p["answer"])
        assert not is_correct(p["rejected"][0]["content"], p["answer"])
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    assert read_preference_jsonl(path) == pairs


def test_on_policy_pairs_from_fake_sampler():
    problems = generate_problems(6, "heldout", seed=0)
    by_prompt = {format_prompt(p["question"]): p for p in problems}
    calls = []

    def generate_fn(prompts, k):
        calls.append((prompts, k))
        out = []
        for i, pr in enumerate(prompts):
            ans = int(by_prompt[pr]["answer"])
            if i % 3 == 0:    # all right -> no pair
                out.append([f"\\boxed{{{ans}}}"] * k)
            elif i % 3 == 1:  # all wrong -> no pair
                out.append([f"\\boxed{{{ans + 1}}}"] * k)
            else:             # mixed -> one pair
                out.append([f"try \\boxed{{{ans + j}}}" for j in range(k)])
        return out

    pairs = pairs_from_samples(problems, generate_fn, is_correct, k=3, seed=0)
    assert calls == [([format_prompt(p["question"]) for p in problems], 3)]
    assert len(pairs) == 2
    for p in pairs:
        validate_pair(p, "x")
        assert is_correct(p["chosen"][0]["content"], p["answer"])
        assert not is_correct(p["rejected"][0]["content"], p["answer"])
    with pytest.raises(ValueError, match="sample lists"):
        pairs_from_samples(problems, lambda prompts, k: [], is_correct)


def test_identical_chosen_rejected_and_bad_records_are_rejected(tmp_path):
    same = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "a"}]}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(same) + "\n")
    with pytest.raises(DataFormatError, match=r"p\.jsonl: record 1: chosen and rejected are identical"):
        read_preference_jsonl(path)
    path.write_text(json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    with pytest.raises(DataFormatError, match=r"p\.jsonl:1: record lacks required field\(s\) \['rejected'\]"):
        read_preference_jsonl(path)
    bad_role = dict(same, rejected=[{"role": "user", "content": "b"}])
    with pytest.raises(DataFormatError, match="role 'assistant'"):
        validate_pair(bad_role, "here")
