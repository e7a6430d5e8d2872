"""Which pairs a DPO run uses (train.alignment.preference_data): dpo.train_data in TRL's formats with a held-out
split or dpo.eval_data, the prepared data of dpo.data_dir, caps that say what they drop, the steps that cover the
pairs; held-out scoring of standard-format pairs tokenised as TRL does; the dry run on one's own data."""
import json

import pytest
from trl.data_utils import common_prefix_length

from tests.train.builders import dpo_cfg, run_dpo
from train.alignment.preference_data import optimizer_steps, select_pairs, split_heldout


def _standard_file(path, n):
    path.write_text("".join(json.dumps({"chosen": f"Question {i}: what is {i} plus {i}? The answer is {2 * i}.",
                                        "rejected": f"Question {i}: what is {i} plus {i}? The answer is {2 * i + 1}."})
                            + "\n" for i in range(n)))
    return path


def _own_data_cfg(tmp_path, dpo_tiny, n=40, **dpo):
    data, export = dpo_tiny
    own = {"data_dir": None, "train_limit": 0, "train_data": str(_standard_file(tmp_path / "prefs.jsonl", n))}
    return dpo_cfg(data, export, tmp_path / "run", **{**own, **dpo})


def test_held_out_split_is_seeded_disjoint_and_logged(tmp_path, dpo_tiny):
    cfg = _own_data_cfg(tmp_path, dpo_tiny, n=40, eval_fraction=0.1)
    split = select_pairs(cfg)
    assert len(split.heldout) == 4 and len(split.train) == 36
    prompts = [p["prompt"] for p in split.train + split.heldout]
    assert len(set(prompts)) == 40  # every pair used once: train and held-out are disjoint and cover the data
    assert split.heldout[0]["prompt"].endswith("The answer is") and split.heldout[0]["chosen"].startswith(" ")
    assert any("held-out split: 4 of 40 pairs of dpo.train_data (dpo.eval_fraction=0.1" in n for n in split.notes)
    assert select_pairs(cfg).heldout == split.heldout  # seeded by trainer.seed
    cfg.trainer.seed += 1
    assert select_pairs(cfg).heldout != split.heldout
    cfg.dpo.heldout_limit = 2  # caps the split: the other pairs train
    assert [len(x) for x in (select_pairs(cfg).train, select_pairs(cfg).heldout)] == [38, 2]


def test_split_sizes_at_the_edges():
    pairs = [{"prompt": str(i)} for i in range(3)]
    assert [len(x) for x in split_heldout(pairs, 0.05, 0, seed=0)] == [2, 1]  # at least one held out
    assert [len(x) for x in split_heldout(pairs, 0.9, 0, seed=0)] == [1, 2]  # at least one trains
    with pytest.raises(ValueError, match="dpo.train_data has 1 pair.*set dpo.eval_data"):
        split_heldout(pairs[:1], 0.05, 0, seed=0)


def test_eval_data_and_train_limit_are_used_as_given_and_a_cap_says_what_it_drops(tmp_path, dpo_tiny):
    cfg = _own_data_cfg(tmp_path, dpo_tiny, n=30, train_limit=25,
                        eval_data=str(_standard_file(tmp_path / "held.jsonl", 6)))
    split = select_pairs(cfg)
    assert len(split.train) == 25 and len(split.heldout) == 6
    assert "dpo.train_limit=25: using the first 25 of 30 training pairs (5 dropped; dpo.train_limit=0 uses all)" \
        in split.notes


def test_prepared_data_dir_still_works_and_no_source_names_both_keys(tmp_path, dpo_tiny):
    data, export = dpo_tiny
    cfg = dpo_cfg(data, export, tmp_path / "run", train_limit=0)
    split = select_pairs(cfg)
    n_train = len((data / "preference" / "train.jsonl").read_text().splitlines())
    assert len(split.train) == n_train and len(split.heldout) == 12
    assert isinstance(split.train[0]["prompt"], list)  # the prepared pairs are conversational
    cfg.dpo.data_dir = None
    with pytest.raises(ValueError, match=r"set dpo.train_data .* or dpo.data_dir"):
        select_pairs(cfg)
    with pytest.raises(ValueError, match=r"set dpo.train_data .* or dpo.data_dir"):
        run_dpo(cfg)
    assert not (tmp_path / "run").exists()


def test_steps_cover_the_pairs(tmp_path, dpo_tiny):
    cfg = _own_data_cfg(tmp_path, dpo_tiny, per_device_batch_size=4, gradient_accumulation_steps=2, epochs=1.5)
    cfg.trainer.max_steps = 0
    steps, note = optimizer_steps(cfg, 100, world_size=2)  # 16 pairs per step
    assert steps == 10 and "dpo.epochs=1.5 over 100 training pairs at 16 pairs per step" in note
    cfg.trainer.max_steps = 3
    assert optimizer_steps(cfg, 100, world_size=2) == (
        3, "trainer.max_steps=3 at 16 pairs per step: only 48 of the 100 training pairs are seen "
           "(trainer.max_steps=0 runs dpo.epochs passes)")


def test_standard_pairs_are_scored_on_the_tokens_trl_trains_on(dpo_tiny):
    from data.tokenizer import load_tokenizer
    from train.alignment.preference_scoring import encode_pair_side

    tok = load_tokenizer(dpo_tiny[1])
    ids, n_prompt = encode_pair_side(tok, "Question 3: what is 3 plus 3? The answer is", " 6.", 512)
    # TRL's DPOTrainer: prompt + completion + EOS, the completion starting where the prompt's tokens end.
    full = tok(text="Question 3: what is 3 plus 3? The answer is 6." + tok.eos_token)["input_ids"]
    prompt = tok(text="Question 3: what is 3 plus 3? The answer is")["input_ids"]
    assert ids == full and ids[-1] == tok.eos_token_id and n_prompt == common_prefix_length(prompt, full) > 0
    assert n_prompt < len(ids)
    assert encode_pair_side(tok, "Question 3: what is 3 plus 3? The answer is", " 6." + tok.eos_token, 512)[0] == full
    assert encode_pair_side(tok, "Question 3: what is 3 plus 3? The answer is", " 6.", 4)[0] == full[:4]


def test_dry_run_on_own_standard_data_prints_the_split(tmp_path, dpo_tiny, capsys):
    cfg = _own_data_cfg(tmp_path, dpo_tiny, n=20, eval_fraction=0.25)
    cfg.trainer.dry_run, cfg.trainer.max_steps = True, 0
    summary = run_dpo(cfg)
    assert summary["offline_pairs"] == 15 and summary["heldout_pairs"] == 5
    assert summary["max_steps"] == 4  # one epoch of 15 pairs at 4 per step
    out = capsys.readouterr().out
    assert "[dpo] held-out split: 5 of 20 pairs of dpo.train_data" in out and "[dpo] 4 optimizer steps" in out
    assert not (tmp_path / "run").exists()
