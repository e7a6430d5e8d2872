"""On-policy DPO pairs: sample k completions per training problem from the init (SFT) model, grade them with the
math grader, pair a right completion with a wrong one; every rank samples its share of the problems.

Files in the run directory: ``on_policy_parts/part-R-of-W.jsonl`` (each rank's share, written atomically; a
relaunch keeps finished parts) and ``on_policy_pairs.jsonl`` (rank 0 concatenates the parts in rank order, which
is problem order; a resumed run reuses it).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

from data.inputs import require_input
from data.jsonl import read_jsonl, write_jsonl
from data.layout import PreparedData
from data.preference import FIELDS, pairs_from_samples
from train.alignment.dpo_config import DPORunConfig
from train.evals.math_accuracy import load_problems
from train.alignment.preference_scoring import load_preference_pairs
from train.evals.generation import chat_prompt, generate
from train.evals.math_grader import grade

ON_POLICY_POLL_S = 5.0  # how often a rank that finished its share of on-policy sampling looks for the others'


def problems_file(cfg: DPORunConfig) -> Path:
    """``dpo.on_policy.problems``, else the prepared data's reasoning training set (``dpo.data_dir``)."""
    op = cfg.dpo.on_policy
    if op.problems:
        return Path(op.problems)
    if cfg.dpo.data_dir is None:
        raise ValueError("dpo.on_policy.enabled=true needs problems to sample on: set dpo.on_policy.problems (a "
                         "reasoning JSONL) or dpo.data_dir (the output of python -m data.prepare)")
    return PreparedData(cfg.dpo.data_dir).reasoning("train")


def load_on_policy_problems(cfg: DPORunConfig) -> list[dict]:
    """The problems to sample on (first ``num_problems``); a missing or malformed file is an error naming it."""
    path = require_input(problems_file(cfg), "dpo.on_policy.problems")
    return load_problems(path, limit=cfg.dpo.on_policy.num_problems or None)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous block ``[lo, hi)`` of ``n`` items for ``rank``: blocks in rank order are the items in order."""
    return n * rank // world_size, n * (rank + 1) // world_size


def build_on_policy_pairs(model, tokenizer, cfg: DPORunConfig, shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """Sample k completions per training problem from ``model``, grade them, pair right with wrong.

    ``shard=(rank, world_size)``: only this rank's contiguous block of the problems (seeded per rank).
    """
    op = cfg.dpo.on_policy
    problems = load_on_policy_problems(cfg)
    lo, hi = shard_bounds(len(problems), *shard)

    def generate_fn(user_prompts: list[str], k: int) -> list[list[str]]:
        sampling = copy.copy(op.sampling)
        sampling.num_samples = k
        return generate(model, tokenizer, [chat_prompt(tokenizer, p) for p in user_prompts], sampling, progress=True)

    return pairs_from_samples(problems[lo:hi], generate_fn, lambda c, a: grade(c, a).correct,
                              k=op.sampling.num_samples, seed=cfg.trainer.seed + shard[0])


def _wait_for_files(paths: list[Path], poll_s: float) -> None:
    """Poll until every path exists. Not a collective: no NCCL watchdog timeout while others still sample."""
    while not all(p.exists() for p in paths):
        time.sleep(poll_s)


def gather_on_policy_pairs(cfg: DPORunConfig, model, tokenizer, run_dir: Path, rank: int, world_size: int,
                           poll_s: float = ON_POLICY_POLL_S) -> Path:
    """``run_dir/on_policy_pairs.jsonl``, built once with every rank sampling its share of the problems.

    Ranks wait for each other by polling files: sampling takes hours at ``recipes/dpo/gpu.yaml`` sizes and
    ranks finish at different times, so a barrier (NCCL's watchdog aborts after 10 minutes) must not wait on it.
    """
    final = run_dir / "on_policy_pairs.jsonl"
    if final.exists():
        return final
    parts = [run_dir / "on_policy_parts" / f"part-{r:05d}-of-{world_size:05d}.jsonl" for r in range(world_size)]
    if not parts[rank].exists():
        built = build_on_policy_pairs(model, tokenizer, cfg, shard=(rank, world_size))
        write_jsonl(parts[rank], built)
        print(f"[dpo] rank {rank}: built {len(built)} on-policy pairs -> {parts[rank]}", flush=True)
    _wait_for_files(parts, poll_s)
    if rank == 0:
        # A rank whose problems gave no right/wrong pair wrote an empty part (read_jsonl rejects empty files).
        n = write_jsonl(final, [rec for part in parts if part.stat().st_size for rec in read_jsonl(part)])
        print(f"[dpo] {n} on-policy pairs from {world_size} rank(s) -> {final}", flush=True)
    _wait_for_files([final], poll_s)
    return final


def training_pairs(cfg: DPORunConfig, offline: list[dict], model, tokenizer, run_dir: Path, rank: int,
                   world_size: int) -> list[dict]:
    """The offline pairs plus (``mix=append``) or replaced by (``mix=replace``) the on-policy pairs."""
    pairs = list(offline)
    if cfg.dpo.on_policy.enabled:
        if cfg.dpo.on_policy.mix == "replace":
            pairs = []
        path = gather_on_policy_pairs(cfg, model, tokenizer, run_dir, rank, world_size)
        if path.stat().st_size:
            pairs += load_preference_pairs(path)
    if not pairs:
        raise ValueError("no DPO training pairs: on-policy sampling gave no right/wrong pair and mix=replace")
    return [{k: p[k] for k in FIELDS} for p in pairs]
