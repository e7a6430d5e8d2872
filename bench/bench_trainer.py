"""Trainer overhead on CPU: tokens/s of ``train.engine.trainer.train`` vs a bare forward+backward+AdamW loop on the
same model, batches and thread count, measured in this one process (goal: overhead < 5%).

    python bench/bench_trainer.py [--steps 10] [--hidden 64] [--seq-len 128] [--rows 4]

Prints the medians of the per-step throughputs (first step excluded: warm-up) and their ratio. On a shared
machine the load changes between the bare blocks and the trainer run, so it also times a DeepSpeed engine step
and a bare step *alternately* on the same batch (load changes hit both equally): the engine's own overhead.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_data(root: Path) -> Path:
    from data.shards import ShardSetWriter, tokenizer_info
    from data.tokenizer import train_bpe_tokenizer

    train_bpe_tokenizer([f"bench corpus line {i} {i * 3}" for i in range(200)], 512, root / "tokenizer")
    info = tokenizer_info(root / "tokenizer")
    rng = np.random.default_rng(0)
    with ShardSetWriter(root / "pretrain", "pretrain", info, ["random"]) as w:
        for _ in range(400):
            w.add("train", rng.integers(1, info["vocab_size"], size=int(rng.integers(50, 400))))
    return root / "pretrain"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rows", type=int, default=4)
    args = ap.parse_args()

    from data.loader import PackedLoader
    from train.config import DataConfig, DataSource, DeepSpeedConfig, ModelConfig, OptimConfig, TrainerConfig, WandbConfig
    from train.runtime.distributed import init_distributed
    from train.runtime.model_build import build_fresh, hf_config
    from train.engine.optim import build_optimizer
    from train.engine.trainer import TrainSpec, train

    tmp = Path(tempfile.mkdtemp(prefix="bench_trainer_"))
    shards = make_data(tmp)
    mc = ModelConfig(hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_hidden_layers=8,
                     num_attention_heads=4, num_key_value_heads=2, sliding_window=args.seq_len // 2, vocab_size=512)
    config = hf_config(mc, vocab_size=512, eos_token_id=0)
    tokens_per_step = args.rows * args.seq_len
    data = DataConfig(sources=[DataSource(path=str(shards))], seq_len=args.seq_len,
                      global_batch_tokens=tokens_per_step, micro_batch_rows=args.rows)
    optim = OptimConfig(lr=1e-3)

    # Bare loop: the same model, batches and optimizer, no DeepSpeed, no logging. Run before and after the
    # trainer so that a change in machine load during the benchmark hits both sides.
    model = build_fresh(config, "cpu", seed=0)
    opt = build_optimizer(model, mc, optim, tokens_per_step)
    loader = PackedLoader([(str(shards), 1.0)], seq_len=args.seq_len, global_batch_rows=args.rows, seed=0)

    def bare_loop(n: int) -> list[float]:
        out_tps = []
        for _ in range(n):
            batch = loader.next_batch()
            t0 = time.perf_counter()
            out = model(input_ids=batch["input_ids"], labels=batch["labels"], doc_ids=batch["doc_ids"],
                        use_cache=False)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            out_tps.append(tokens_per_step / (time.perf_counter() - t0))
        return out_tps[1:]  # first step: warm-up

    bare = bare_loop(args.steps // 2 + 1)

    dist_info = init_distributed(DeepSpeedConfig())
    spec = TrainSpec(
        run_name="bench", run_dir=tmp / "run", wandb=WandbConfig(mode="disabled"), optim=optim,
        deepspeed=DeepSpeedConfig(), data=data, model_cfg=mc,
        trainer=TrainerConfig(max_steps=args.steps, save_every=0, log_every=1, export=False, progress_bar=False),
        build_model=lambda device: build_fresh(config, device, 0), tokenizer_dir=tmp / "tokenizer",
        config_yaml="bench: true\n", config_dict={})
    train(spec, dist_info)
    rows = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    trainer = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]
    bare += bare_loop(args.steps // 2 + 1)

    # Alternating engine / bare steps on one batch: robust to load changes.
    import deepspeed

    from train.runtime.distributed import deepspeed_json

    engine_model = build_fresh(config, "cpu", seed=0)
    engine, _, _, _ = deepspeed.initialize(
        model=engine_model, optimizer=build_optimizer(engine_model, mc, optim, tokens_per_step),
        config=deepspeed_json(DeepSpeedConfig(), micro_batch_rows=args.rows, grad_accum=1, world_size=1,
                              compute_dtype=torch.float32))
    batch = {k: v for k, v in loader.next_batch().items()}
    t_engine, t_bare = [], []
    for _ in range(args.steps // 2 + 1):
        t0 = time.perf_counter()
        out = engine(**batch, use_cache=False)
        engine.backward(out.loss)
        engine.step()
        t_engine.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = model(**batch, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t_bare.append(time.perf_counter() - t0)
    e_alt, b_alt = statistics.median(t_engine[1:]), statistics.median(t_bare[1:])

    b, t = statistics.median(bare), statistics.median(trainer)
    print(f"model: hidden {args.hidden}, 8 layers, {sum(p.numel() for p in model.parameters()):,} params; "
          f"batch {args.rows} x {args.seq_len} tokens; {args.steps} steps; torch threads {torch.get_num_threads()}")
    print(f"bare loop   tokens/s (median): {b:10.1f}")
    print(f"trainer     tokens/s (median): {t:10.1f}")
    print(f"trainer / bare: {t / b:.3f}  (overhead {100 * (1 - t / b):+.1f}%)")
    print(f"alternating steps: engine {e_alt:.3f} s, bare {b_alt:.3f} s; bare / engine time: {b_alt / e_alt:.3f} "
          f"(engine overhead {100 * (e_alt / b_alt - 1):+.1f}%)")


if __name__ == "__main__":
    main()
