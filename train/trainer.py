"""The DeepSpeed training loop shared by pretraining and SFT.

One optimizer step = one global batch of ``data.global_batch_tokens`` tokens: every rank takes its share from
the :class:`data.loader.PackedLoader` and runs ``grad_accum`` micro-batches of ``micro_batch_rows`` rows.

Loss normalisation: the step's loss is the sum of token losses over the whole global batch (all micro-batches,
all ranks) divided by the number of target tokens ``N`` in it. Each micro-batch's loss is
``sum(token losses) / N`` (``num_items_in_batch=N`` in the model) and is multiplied by ``grad_accum *
world_size`` before ``engine.backward``, because DeepSpeed divides by the accumulation steps and averages
gradients over ranks. So micro-batch 1 x accumulation 4, micro-batch 4 x 1, and 2 ranks x half the rows give
the same update.

Exit behaviour (see :class:`StopReason`): a normal end writes ``export/`` and ``DONE``; SIGTERM / SIGUSR1
(Slurm's pre-emption warning) make all ranks save a checkpoint at the next step boundary and return
normally (process exit code 0, no ``DONE``: relaunching resumes); a non-finite loss raises
:class:`NonFiniteLossError` (exit code 3) before the update, leaving the last checkpoint intact, unless
``trainer.skip_nonfinite`` is set, in which case that step's update is skipped.
"""
from __future__ import annotations

import enum
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from train import checkpoint
from train.config import DataConfig, DeepSpeedConfig, ModelConfig, OptimConfig, TrainerConfig, WandbConfig
from train.eval_perplexity import perplexity_from_loss
from train.distributed import (DistInfo, all_reduce_sum, autocast_weight_cache, barrier, bf16_comm_modules,
                               deepspeed_json, resolve_precision)
from train.flops import device_peak_flops, flops_per_token, mfu
from train.metrics import MetricsLogger, truncate_after
from train.optim import build_optimizer, group_summary, mup_reinit_hidden
from train.run_dir import RunDir
from train.run_lock import hold_run_dir
from train.schedule import build_scheduler
from train.stop_signal import StopSignal


class NonFiniteLossError(RuntimeError):
    """The loss of a step was NaN or Inf (and ``trainer.skip_nonfinite`` is false)."""

    exit_code = 3


class StopReason(str, enum.Enum):
    finished = "finished"  # all steps done, export/ + DONE written
    preempted = "preempted"  # a signal arrived: checkpoint saved, relaunch resumes
    already_done = "already_done"  # DONE existed: nothing to do
    dry_run = "dry_run"


@dataclass
class BatchGeometry:
    """Global batch in tokens, split into rows, ranks and micro-batches (validated)."""

    seq_len: int
    global_batch_tokens: int
    micro_batch_rows: int
    world_size: int

    @property
    def global_rows(self) -> int:
        return self.global_batch_tokens // self.seq_len

    @property
    def grad_accum(self) -> int:
        return self.global_rows // (self.micro_batch_rows * self.world_size)

    def validate(self, prefix: str = "data") -> None:
        if self.seq_len < 2 or self.micro_batch_rows < 1:
            raise ValueError(f"{prefix}.seq_len={self.seq_len} must be >= 2 and {prefix}.micro_batch_rows="
                             f"{self.micro_batch_rows} >= 1")
        per_step = self.seq_len * self.micro_batch_rows * self.world_size
        if self.global_batch_tokens <= 0 or self.global_batch_tokens % per_step:
            raise ValueError(
                f"{prefix}.global_batch_tokens={self.global_batch_tokens} must be a positive multiple of "
                f"seq_len x micro_batch_rows x world_size = {self.seq_len} x {self.micro_batch_rows} x "
                f"{self.world_size} = {per_step}")

    def describe(self) -> dict[str, int]:
        return {"seq_len": self.seq_len, "global_batch_tokens": self.global_batch_tokens,
                "global_batch_rows": self.global_rows, "micro_batch_rows": self.micro_batch_rows,
                "world_size": self.world_size, "grad_accum": self.grad_accum}


@dataclass
class TrainSpec:
    """Everything one training run (a pretraining run or one SFT stage) needs."""

    run_name: str
    run_dir: Path
    wandb: WandbConfig
    optim: OptimConfig
    deepspeed: DeepSpeedConfig
    trainer: TrainerConfig
    data: DataConfig
    model_cfg: ModelConfig  # muP++ depth and activation checkpointing
    build_model: Callable[[torch.device | str], torch.nn.Module]
    tokenizer_dir: Path
    config_yaml: str
    config_dict: dict[str, Any]
    split_documents: bool = True
    max_steps: int = 0  # 0: derive from ``epochs``
    epochs: float = 0.0
    data_manifests: list[dict] = field(default_factory=list)


def target_count(labels: torch.Tensor) -> torch.Tensor:
    """Positions that are predicted: labels are shifted inside the model, so column 0 is never a target."""
    return (labels[:, 1:] != -100).sum()


def total_steps(spec: TrainSpec, padded_tokens_per_epoch: int) -> int:
    """``max_steps``, or ``epochs`` passes in batch tokens: padding counts, since a step's rows include it."""
    if spec.max_steps > 0:
        return spec.max_steps
    if spec.epochs > 0:
        return max(1, math.ceil(spec.epochs * padded_tokens_per_epoch / spec.data.global_batch_tokens))
    raise ValueError(f"{spec.run_name}: set trainer.max_steps > 0 or a number of epochs")


def _grad_norm_stage0(model: torch.nn.Module) -> float:
    sq = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        if p.grad is not None:
            sq += p.grad.detach().double().pow(2).sum().cpu()
    return float(sq.sqrt())


def _loader(spec: TrainSpec, geometry: BatchGeometry, split: str, dist_info: DistInfo):
    from data.loader import PackedLoader

    return PackedLoader(sources=[(s.path, s.weight) for s in spec.data.sources], split=split, seq_len=geometry.seq_len,
                        global_batch_rows=geometry.global_rows, rank=dist_info.rank, world_size=dist_info.world_size,
                        seed=spec.trainer.seed, split_documents=spec.split_documents)


def dry_run_summary(spec: TrainSpec, world_size: int) -> dict[str, Any]:
    """Build model (meta device for large ones), optimizer groups and the FLOPs estimate; run nothing."""
    geometry = BatchGeometry(spec.data.seq_len, spec.data.global_batch_tokens, spec.data.micro_batch_rows, world_size)
    geometry.validate()
    model = spec.build_model("meta")
    optimizer = build_optimizer(model, spec.model_cfg, spec.optim, spec.data.global_batch_tokens)
    groups = group_summary(model)
    fl = flops_per_token(model.config, geometry.seq_len)
    return {
        "run_name": spec.run_name, "run_dir": str(spec.run_dir), "batch": geometry.describe(),
        "params": sum(p.numel() for p in model.parameters()),
        "param_groups": {k: len(v) for k, v in groups.items()},
        "lr_per_group": {g["name"]: g["lr"] for g in optimizer.param_groups},
        "train_flops_per_token": fl.train, "data_manifests": len(spec.data_manifests),
    }


def train(spec: TrainSpec, dist_info: DistInfo) -> StopReason:
    """Train (or resume) ``spec`` to completion or until a stop signal; collective over all ranks.

    Raises :class:`train.run_lock.RunDirLockedError` on every rank when another live run holds the directory.
    """
    rd = RunDir(spec.run_dir)
    if rd.is_done():
        if dist_info.is_main:
            print(f"[train] {rd.root} is complete (DONE exists); nothing to do", flush=True)
        return StopReason.already_done
    with hold_run_dir(rd.lock, dist_info):
        return _train_holding(spec, dist_info, rd)


def _train_holding(spec: TrainSpec, dist_info: DistInfo, rd: RunDir) -> StopReason:
    """:func:`train` once this job holds the run directory."""
    import deepspeed

    geometry = BatchGeometry(spec.data.seq_len, spec.data.global_batch_tokens, spec.data.micro_batch_rows,
                             dist_info.world_size)
    geometry.validate()
    cfg = spec.trainer
    dtype = resolve_precision(spec.deepspeed, dist_info.device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)

    loader = _loader(spec, geometry, "train", dist_info)
    steps = total_steps(spec, loader.padded_tokens_per_epoch)

    model = spec.build_model(dist_info.device)
    if spec.optim.mup.enabled and spec.optim.mup.reinit_hidden_uniform and not spec.model_cfg.init_from:
        mup_reinit_hidden(model, torch.Generator(device=dist_info.device).manual_seed(cfg.seed))
    if spec.model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    fl = flops_per_token(model.config, geometry.seq_len)
    peak = device_peak_flops(dist_info.device, cfg.peak_flops_per_device)

    optimizer = build_optimizer(model, spec.model_cfg, spec.optim, spec.data.global_batch_tokens,
                                offload=spec.deepspeed.offload_optimizer)
    scheduler = build_scheduler(optimizer, spec.optim.schedule, steps)
    # bf16 runs as DeepSpeed's torch_autocast inside engine(...): no autocast of our own (distributed.py).
    ds_cfg = deepspeed_json(spec.deepspeed, micro_batch_rows=geometry.micro_batch_rows,
                            grad_accum=geometry.grad_accum, world_size=dist_info.world_size, compute_dtype=dtype,
                            bf16_modules=bf16_comm_modules(model))
    ds_cfg = checkpoint.with_resume_config(ds_cfg, rd.checkpoints, dist_info.world_size)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)

    if dist_info.is_main:
        rd.create()
        rd.write_config(spec.config_yaml)
        rd.write_data_manifest(spec.data_manifests)
    barrier()

    state = checkpoint.load(engine, rd.checkpoints, dist_info)
    step, tokens, wandb_id = 0, 0, None
    if state is not None:
        step, tokens, wandb_id = state["step"], state["tokens"], state.get("wandb_id")
        loader.load_state_dict(state["loader"])
        if dist_info.is_main:
            truncate_after(rd.metrics, step)
            print(f"[train] resumed {rd.root} at step {step}", flush=True)
    else:
        torch.manual_seed(cfg.seed + dist_info.rank)
    if dist_info.is_main and wandb_id is None and rd.wandb_id.exists():
        wandb_id = rd.wandb_id.read_text().strip()

    logger = MetricsLogger(enabled=dist_info.is_main, path=rd.metrics, wandb_cfg=spec.wandb, run_name=spec.run_name,
                           run_dir=rd.root, config=spec.config_dict, wandb_id=wandb_id, total_steps=steps,
                           start_step=step, progress_bar=cfg.progress_bar)
    if dist_info.is_main and logger.wandb_id:
        from data.atomic import atomic_write_text

        atomic_write_text(rd.wandb_id, logger.wandb_id, overwrite=True)
    if dist_info.is_main:
        print(f"[train] {spec.run_name}: {steps} steps, batch {json.dumps(geometry.describe())}, "
              f"{fl.train:.3e} train FLOPs/token, precision {dtype}", flush=True)

    def save(at_step: int) -> None:
        checkpoint.save(engine, rd.checkpoints, at_step,
                        {"step": at_step, "tokens": tokens, "loader": loader.state_dict(), "wandb_id": logger.wandb_id},
                        dist_info, cfg.keep_last)

    zero_stage = spec.deepspeed.zero_stage
    has_val = bool(spec.data_manifests) and all(
        spec.data.val_split in m["manifest"]["splits"] for m in spec.data_manifests)
    eval_every = cfg.eval_every if has_val else 0
    if cfg.eval_every > 0 and not has_val and dist_info.is_main:
        print(f"[train] no {spec.data.val_split!r} split in every source: validation disabled", flush=True)
    reason = StopReason.finished
    window_tokens, window_start = 0, time.perf_counter()
    try:
        with StopSignal() as sig:
            while step < steps:
                engine.train()
                batch = loader.next_batch()
                n_targets = all_reduce_sum(target_count(batch["labels"]).to(dist_info.device, torch.float64))
                if n_targets.item() == 0:
                    raise ValueError(f"{spec.run_name}: step {step + 1} has no target tokens (all labels -100)")
                scale = geometry.grad_accum * dist_info.world_size
                loss_sum = torch.zeros((), dtype=torch.float64, device=dist_info.device)
                rows = geometry.micro_batch_rows
                for i in range(geometry.grad_accum):
                    micro = {k: v[i * rows:(i + 1) * rows].to(dist_info.device) for k, v in batch.items()}
                    with autocast_weight_cache(zero_stage != 3):
                        out = engine(input_ids=micro["input_ids"], labels=micro["labels"], doc_ids=micro["doc_ids"],
                                     num_items_in_batch=n_targets, use_cache=False)
                    loss_sum += out.loss.detach().double()
                    engine.backward(out.loss * scale)
                    if i < geometry.grad_accum - 1:
                        engine.step()
                # One all-reduce per step: the loss, the non-finite flag and the stop signal.
                stats = torch.tensor([loss_sum.item(), 0.0 if math.isfinite(loss_sum.item()) else 1.0,
                                      1.0 if sig.raised else 0.0], dtype=torch.float64, device=dist_info.device)
                all_reduce_sum(stats)
                loss, nonfinite, stop = stats[0].item(), stats[1].item() > 0, stats[2].item() > 0
                if nonfinite and not cfg.skip_nonfinite:
                    raise NonFiniteLossError(
                        f"{spec.run_name}: non-finite loss ({loss}) at step {step + 1}; stopping without an update. "
                        f"The last good checkpoint in {rd.checkpoints} is intact; set trainer.skip_nonfinite=true "
                        f"to skip such steps instead")
                log_now = (step + 1) % max(1, cfg.log_every) == 0 or step + 1 == steps
                grad_norm = _grad_norm_stage0(engine.module) if (log_now and zero_stage == 0 and not nonfinite) else None
                optimizer.skip = nonfinite  # ZeRO steps every parameter group separately: all must skip
                lr = optimizer.param_groups[-1]["lr"]  # the no_decay group: the global LR without muP++ multipliers
                engine.step()
                optimizer.skip = False
                step += 1
                step_tokens = geometry.global_batch_tokens
                tokens += step_tokens
                window_tokens += step_tokens
                logger.advance()
                if nonfinite and dist_info.is_main:
                    print(f"[train] step {step}: non-finite loss, update skipped (trainer.skip_nonfinite)", flush=True)
                if log_now:
                    if grad_norm is None and zero_stage > 0 and not nonfinite:
                        gn = engine.get_global_grad_norm()
                        grad_norm = float(gn) if gn is not None else float("nan")
                    elapsed = time.perf_counter() - window_start
                    tps = window_tokens / elapsed if elapsed > 0 else 0.0
                    logger.log({"step": step, "tokens": tokens, "loss": loss, "lr": lr,
                                "grad_norm": grad_norm if grad_norm is not None else float("nan"),
                                "tokens_per_s": tps, "mfu": mfu(tps, fl.train, peak, dist_info.world_size),
                                "epoch": loader.epoch, "skipped": bool(nonfinite)})
                    window_tokens, window_start = 0, time.perf_counter()
                if eval_every > 0 and step % eval_every == 0:
                    logger.log({"step": step, "tokens": tokens, **evaluate(engine, spec, geometry, dist_info, dtype)})
                    window_start = time.perf_counter()
                if stop:
                    checkpoint.emulated_slow_save()  # a test hook; no-op unless its variable is set
                    save(step)
                    reason = StopReason.preempted
                    if dist_info.is_main:
                        print(f"[train] stop signal: saved step {step} in {rd.checkpoints}; relaunch to resume",
                              flush=True)
                    break
                if cfg.save_every > 0 and step % cfg.save_every == 0 and step < steps:
                    save(step)
                    window_start = time.perf_counter()
            if reason is StopReason.finished:
                if checkpoint.latest_tag_or_none(rd.checkpoints) != checkpoint.tag_for(step):
                    save(step)
                final = {}
                if eval_every > 0 and step % eval_every != 0:
                    final = evaluate(engine, spec, geometry, dist_info, dtype)
                    logger.log({"step": step, "tokens": tokens, **final})
                if cfg.export:
                    from train.export import export_model

                    export_model(engine, spec.tokenizer_dir, rd.export, dist_info, zero_stage)
                if dist_info.is_main:
                    rd.mark_done({"step": step, "tokens": tokens, **final})
                    logger.summary({"final_step": step, **final})
                barrier()
    finally:
        logger.close()
    return reason


@torch.no_grad()
def evaluate(engine, spec: TrainSpec, geometry: BatchGeometry, dist_info: DistInfo,
             dtype: torch.dtype) -> dict[str, float]:
    """Mean token loss and perplexity over ``trainer.eval_batches`` global batches of the validation split.

    A fresh loader (same seed) each time, so every evaluation sees the same tokens.
    """
    loader = _loader(spec, geometry, spec.data.val_split, dist_info)
    engine.eval()
    total = torch.zeros(2, dtype=torch.float64, device=dist_info.device)
    rows = geometry.micro_batch_rows
    for _ in range(spec.trainer.eval_batches):
        batch = loader.next_batch()
        for i in range(0, batch["input_ids"].shape[0], rows):
            micro = {k: v[i:i + rows].to(dist_info.device) for k, v in batch.items()}
            with autocast_weight_cache(spec.deepspeed.zero_stage != 3):
                out = engine(input_ids=micro["input_ids"], labels=micro["labels"], doc_ids=micro["doc_ids"],
                             num_items_in_batch=torch.ones((), device=dist_info.device), use_cache=False)
            total[0] += out.loss.double()
            total[1] += target_count(micro["labels"])
    all_reduce_sum(total)
    engine.train()
    val_loss = (total[0] / total[1]).item()
    return {"val_loss": val_loss, "val_ppl": perplexity_from_loss(val_loss)}
