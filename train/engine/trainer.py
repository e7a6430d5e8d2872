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
(Slurm's pre-emption warning) / SIGINT (Ctrl-C; a second one aborts, see :mod:`train.runtime.stop_signal`) make all
ranks save a checkpoint at the next step boundary and return normally (process exit code 0, no ``DONE``:
relaunching resumes); a non-finite loss raises :class:`NonFiniteLossError` (exit code 3) before the update,
leaving the last checkpoint intact, unless ``trainer.skip_nonfinite`` is set, in which case that step's update is
skipped.
"""
from __future__ import annotations

import enum
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import deepspeed
import torch

from data.loader import PackedLoader
from sambay_model.lm_head_loss import IGNORE_INDEX
from train.engine import checkpoint
from train.config import DataConfig, DeepSpeedConfig, ModelConfig, OptimConfig, PeftConfig, TrainerConfig, WandbConfig
from train.runtime.distributed import (DistInfo, all_reduce_sum, autocast_weight_cache, barrier, bf16_comm_modules,
                               deepspeed_json, resolve_precision)
from train.runtime.token_loss import mean_loss, perplexity_from_loss, summed_loss, target_count
from train.runtime import lora
from train.runtime.export import export_model
from train.engine.flops import device_peak_flops, flops_per_token, mfu
from train.runtime.metrics import MetricsLogger, resumable_logger, truncate_after
from train.engine.optim import build_optimizer, global_lr, group_summary, mup_reinit_hidden
from train.runtime.run_dir import RunDir
from train.runtime.run_lock import hold_run_dir
from train.engine.schedule import build_scheduler
from train.runtime.stop_signal import StopSignal


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

    @classmethod
    def of(cls, data: DataConfig, world_size: int) -> "BatchGeometry":
        """The geometry of ``data`` on ``world_size`` ranks, validated."""
        geometry = cls(data.seq_len, data.global_batch_tokens, data.micro_batch_rows, world_size)
        geometry.validate()
        return geometry

    def describe(self) -> dict[str, int]:
        return {"seq_len": self.seq_len, "global_batch_tokens": self.global_batch_tokens,
                "global_batch_rows": self.global_rows, "micro_batch_rows": self.micro_batch_rows,
                "world_size": self.world_size, "grad_accum": self.grad_accum}



@dataclass
class TrainSpec:
    """Everything one training run (a pretraining run or one SFT stage) needs.

    ``trainer.max_steps`` / ``trainer.epochs`` are this run's length (an SFT stage gets its own copy of the
    trainer section with the stage's length), read only by :func:`total_steps`. ``peft``: LoRA adapters on a frozen
    base when enabled (``train.runtime.lora``; default None: every weight trains).
    """

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
    data_manifests: list[dict] = field(default_factory=list)
    peft: PeftConfig | None = None


def adapted(model: torch.nn.Module, peft: PeftConfig | None) -> torch.nn.Module:
    """``model`` wrapped in LoRA adapters (base frozen) when ``peft`` is enabled, else ``model``."""
    return lora.wrap(model, peft) if peft is not None and peft.enabled else model


def total_steps(trainer: TrainerConfig, global_batch_tokens: int, padded_tokens_per_epoch: int,
                run_name: str) -> int:
    """Whichever ends first of ``max_steps`` (> 0) and ``epochs`` (> 0) passes over the data, in steps.

    An epoch is counted in batch tokens with padding, since a step's rows include it.
    """
    bounds = [trainer.max_steps] if trainer.max_steps > 0 else []
    if trainer.epochs > 0:
        bounds.append(max(1, math.ceil(trainer.epochs * padded_tokens_per_epoch / global_batch_tokens)))
    if not bounds:
        raise ValueError(f"{run_name}: set trainer.max_steps > 0 or a number of epochs")
    return min(bounds)


def _grad_norm_stage0(model: torch.nn.Module) -> float:
    sq = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        if p.grad is not None:
            sq += p.grad.detach().double().pow(2).sum().cpu()
    return float(sq.sqrt())


def dry_run_summary(spec: TrainSpec, world_size: int) -> dict[str, Any]:
    """Build model (meta device for large ones), optimizer groups and the FLOPs estimate; run nothing."""
    geometry = BatchGeometry.of(spec.data, world_size)
    model = adapted(spec.build_model("meta"), spec.peft)
    optimizer = build_optimizer(model, spec.model_cfg, spec.optim, spec.data.global_batch_tokens)
    groups = group_summary(model)
    fl = flops_per_token(model.config, geometry.seq_len)
    return {
        "run_name": spec.run_name, "run_dir": str(spec.run_dir), "batch": geometry.describe(),
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "param_groups": {k: len(v) for k, v in groups.items()},
        "lr_per_group": {g["name"]: g["lr"] for g in optimizer.param_groups},
        "train_flops_per_token": fl.train, "data_manifests": len(spec.data_manifests),
    }


@dataclass
class StepResult:
    """What one optimizer step reports, agreed by all ranks."""

    loss: float  # mean token loss over the global batch
    nonfinite: bool
    stop: bool  # a stop signal reached some rank
    lr: float
    log: bool  # a step that is logged (every ``trainer.log_every``-th and the last)
    grad_norm: float  # nan when not measured (a skipped step, or a step that is not logged)


class Trainer:
    """Train (or resume) one :class:`TrainSpec` on this rank; collective over all ranks.

    :meth:`run` calls the named steps in order: :meth:`set_up`, :meth:`resume`, then :meth:`optimizer_step`
    (with :meth:`log`, :meth:`evaluate`, :meth:`save` at their intervals) until the last step or a stop signal,
    then :meth:`finish`.
    """

    def __init__(self, spec: TrainSpec, dist_info: DistInfo):
        self.spec, self.dist, self.cfg = spec, dist_info, spec.trainer
        self.rd = RunDir(spec.run_dir)
        self.geometry = BatchGeometry.of(spec.data, dist_info.world_size)
        self.dtype = resolve_precision(spec.deepspeed, dist_info.device)
        self.zero_stage = spec.deepspeed.zero_stage
        self.step, self.tokens = 0, 0
        self._window_tokens, self._window_start = 0, 0.0  # throughput since the last metrics line

    def run(self) -> StopReason:
        """Raises :class:`data.dir_lock.RunDirLockedError` on every rank when another live run holds the directory,
        :class:`train.runtime.run_dir.ConfigChangedError` when the directory's run has another config."""
        self.rd.check_relaunch(self.spec.config_yaml, say=self.dist.is_main)  # also for a finished run
        if self.rd.is_done():
            self._say(f"{self.rd.root} is complete (DONE exists); nothing to do")
            return StopReason.already_done
        with hold_run_dir(self.rd.lock, self.dist):
            self.set_up()
            self.logger = self._open_logger(self.resume())
            try:
                return self._loop()
            finally:
                self.logger.close()

    # -- set-up and resume -------------------------------------------------------------------------------------

    def set_up(self) -> None:
        """Loader, step count, model, optimizer, schedule and DeepSpeed engine; the run directory's files."""
        if self.cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        self.loader = self._loader("train")
        self.steps = total_steps(self.cfg, self.spec.data.global_batch_tokens, self.loader.padded_tokens_per_epoch,
                                 self.spec.run_name)
        model = self._build_model()
        self.flops = flops_per_token(model.config, self.geometry.seq_len)
        self.peak_flops = device_peak_flops(self.dist.device, self.cfg.peak_flops_per_device)
        self.engine = self._build_engine(model)
        if self.dist.is_main:
            self.rd.create()
            self.rd.write_config(self.spec.config_yaml)
            self.rd.write_data_manifest(self.spec.data_manifests)
        barrier()
        self.eval_every = self._eval_interval()

    def _build_model(self) -> torch.nn.Module:
        spec = self.spec
        model = spec.build_model(self.dist.device)
        if spec.optim.mup.enabled and spec.optim.mup.reinit_hidden_uniform and not spec.model_cfg.init_from:
            mup_reinit_hidden(model, torch.Generator(device=self.dist.device).manual_seed(self.cfg.seed))
        if spec.model_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # Wrapped before deepspeed.initialize, so the optimizer and ZeRO's partitions see the adapters as the only
        # trainable parameters (non-reentrant checkpointing needs no input gradients for a frozen embedding).
        return adapted(model, spec.peft)

    def _build_engine(self, model: torch.nn.Module):
        spec, g = self.spec, self.geometry
        self.optimizer = build_optimizer(model, spec.model_cfg, spec.optim, spec.data.global_batch_tokens,
                                         offload=spec.deepspeed.offload_optimizer)
        self.scheduler = build_scheduler(self.optimizer, spec.optim.schedule, self.steps)
        self.peak_lr = global_lr(spec.model_cfg, spec.optim, spec.data.global_batch_tokens)
        # bf16 runs as DeepSpeed's torch_autocast inside engine(...): no autocast of our own (distributed.py).
        ds_cfg = deepspeed_json(spec.deepspeed, micro_batch_rows=g.micro_batch_rows, grad_accum=g.grad_accum,
                                world_size=self.dist.world_size, compute_dtype=self.dtype,
                                bf16_modules=bf16_comm_modules(model))
        ds_cfg = checkpoint.with_resume_config(ds_cfg, self.rd.checkpoints, self.dist.world_size)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=self.optimizer, lr_scheduler=self.scheduler,
                                               config=ds_cfg)
        return engine

    def _eval_interval(self) -> int:
        """``trainer.eval_every``, or 0 when some source has no validation split."""
        split = self.spec.data.val_split
        has_val = bool(self.spec.data_manifests) and all(split in m["manifest"]["splits"]
                                                         for m in self.spec.data_manifests)
        if self.cfg.eval_every > 0 and not has_val:
            self._say(f"no {split!r} split in every source: validation disabled")
        return self.cfg.eval_every if has_val else 0

    def resume(self) -> str | None:
        """Restore the newest checkpoint (engine, RNGs, step, tokens, loader), else seed this rank; returns the
        W&B run id kept in the checkpoint (``train.runtime.metrics.resumable_logger`` falls back to the run directory's)."""
        state = checkpoint.load(self.engine, self.rd.checkpoints, self.dist)
        wandb_id = None
        if state is not None:
            self.step, self.tokens, wandb_id = state["step"], state["tokens"], state.get("wandb_id")
            self.loader.load_state_dict(state["loader"])
            if self.dist.is_main:
                truncate_after(self.rd.metrics, self.step)
            self._say(f"resumed {self.rd.root} at step {self.step}")
        else:
            torch.manual_seed(self.cfg.seed + self.dist.rank)
        return wandb_id

    def _open_logger(self, wandb_id: str | None) -> MetricsLogger:
        spec = self.spec
        logger = resumable_logger(self.rd, enabled=self.dist.is_main, wandb_cfg=spec.wandb, run_name=spec.run_name,
                                  config=spec.config_dict, total_steps=self.steps, start_step=self.step,
                                  progress_bar=self.cfg.progress_bar, wandb_id=wandb_id)
        self._say(f"{spec.run_name}: {self.steps} steps, batch {json.dumps(self.geometry.describe())}, "
                  f"{self.flops.train:.3e} train FLOPs/token, precision {self.dtype}")
        return logger

    # -- the loop ----------------------------------------------------------------------------------------------

    def _loop(self) -> StopReason:
        self._window_start = time.perf_counter()
        with StopSignal() as sig:
            while self.step < self.steps:
                result = self.optimizer_step(sig)
                self.logger.advance()
                if result.nonfinite:
                    self._say(f"step {self.step}: non-finite loss, update skipped (trainer.skip_nonfinite)")
                if result.log:
                    self.log(result)
                if self.eval_every > 0 and self.step % self.eval_every == 0:
                    self.logger.log({"step": self.step, "tokens": self.tokens, **self.evaluate()})
                    self._window_start = time.perf_counter()
                if result.stop:
                    self._save_on_signal()
                    return StopReason.preempted
                if self.cfg.save_every > 0 and self.step % self.cfg.save_every == 0 and self.step < self.steps:
                    self.save()
                    self._window_start = time.perf_counter()
            self.finish()
        return StopReason.finished

    def _log_due(self, step: int) -> bool:
        """Whether step ``step`` (1-based) is logged."""
        return step % max(1, self.cfg.log_every) == 0 or step == self.steps

    def optimizer_step(self, sig: StopSignal) -> StepResult:
        """One global batch: ``grad_accum`` micro-batches forward/backward, then the update (or a skip)."""
        batch = self.loader.next_batch()
        n_targets = all_reduce_sum(target_count(batch["labels"]).to(self.dist.device, torch.float64))
        if n_targets.item() == 0:
            raise ValueError(f"{self.spec.run_name}: step {self.step + 1} has no target tokens "
                             f"(all labels {IGNORE_INDEX})")
        loss_sum = self._forward_backward(batch, n_targets)
        # One all-reduce per step: the loss, the non-finite flag and the stop signal.
        stats = torch.tensor([loss_sum, 0.0 if math.isfinite(loss_sum) else 1.0, 1.0 if sig.raised else 0.0],
                             dtype=torch.float64, device=self.dist.device)
        all_reduce_sum(stats)
        loss, nonfinite, stop = stats[0].item(), stats[1].item() > 0, stats[2].item() > 0
        if nonfinite and not self.cfg.skip_nonfinite:
            raise NonFiniteLossError(
                f"{self.spec.run_name}: non-finite loss ({loss}) at step {self.step + 1}; stopping without an "
                f"update. The last good checkpoint in {self.rd.checkpoints} is intact; set "
                f"trainer.skip_nonfinite=true to skip such steps instead")
        log_now = self._log_due(self.step + 1)
        # Read before the update: DeepSpeed zeroes the gradients in engine.step().
        grad_norm = (_grad_norm_stage0(self.engine.module)
                     if log_now and self.zero_stage == 0 and not nonfinite else None)
        lr = self.peak_lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)  # this update's LR
        self.optimizer.skip = nonfinite  # ZeRO steps every parameter group separately: all must skip
        self.engine.step()
        self.optimizer.skip = False
        if log_now and grad_norm is None and self.zero_stage > 0 and not nonfinite:
            gn = self.engine.get_global_grad_norm()
            grad_norm = float(gn) if gn is not None else float("nan")
        self.step += 1
        self.tokens += self.geometry.global_batch_tokens
        self._window_tokens += self.geometry.global_batch_tokens
        return StepResult(loss=loss, nonfinite=nonfinite, stop=stop, lr=lr, log=log_now,
                          grad_norm=grad_norm if grad_norm is not None else float("nan"))

    def _forward_backward(self, batch: dict[str, torch.Tensor], n_targets: torch.Tensor) -> float:
        """This rank's share of the step's summed loss / ``n_targets``; gradients scaled for DeepSpeed (module
        docstring). ``num_items_in_batch=n_targets``: the model divides its token-loss sum by the global count."""
        g, device = self.geometry, self.dist.device
        scale = g.grad_accum * self.dist.world_size
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        rows = g.micro_batch_rows
        self.engine.train()
        for i in range(g.grad_accum):
            micro = {k: v[i * rows:(i + 1) * rows].to(device) for k, v in batch.items()}
            with autocast_weight_cache(self.zero_stage != 3):
                out = self.engine(input_ids=micro["input_ids"], labels=micro["labels"], doc_ids=micro["doc_ids"],
                                  num_items_in_batch=n_targets, use_cache=False)
            loss_sum += out.loss.detach().double()
            self.engine.backward(out.loss * scale)
            if i < g.grad_accum - 1:
                self.engine.step()  # a micro-step: DeepSpeed only accumulates
        return loss_sum.item()

    # -- log, evaluate, save, finish ---------------------------------------------------------------------------

    def log(self, result: StepResult) -> None:
        """One ``metrics.jsonl`` line (and W&B point); throughput over the steps since the last line."""
        elapsed = time.perf_counter() - self._window_start
        tps = self._window_tokens / elapsed if elapsed > 0 else 0.0
        self.logger.log({"step": self.step, "tokens": self.tokens, "loss": result.loss, "lr": result.lr,
                         "grad_norm": result.grad_norm, "tokens_per_s": tps,
                         "mfu": mfu(tps, self.flops.train, self.peak_flops, self.dist.world_size),
                         "epoch": self.loader.epoch, "skipped": result.nonfinite})
        self._window_tokens, self._window_start = 0, time.perf_counter()

    def evaluate(self) -> dict[str, float]:
        """Mean token loss and perplexity over ``trainer.eval_batches`` global batches of the validation split.

        A fresh loader (same seed) each time, so every evaluation sees the same tokens.
        """
        loader = self._loader(self.spec.data.val_split)
        self.engine.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.dist.device)
        with autocast_weight_cache(self.zero_stage != 3):
            for _ in range(self.cfg.eval_batches):
                total += summed_loss(self.engine, loader.next_batch(), self.geometry.micro_batch_rows,
                                     self.dist.device)
        all_reduce_sum(total)
        self.engine.train()
        val_loss = mean_loss(total, f"{self.spec.run_name}: validation split {self.spec.data.val_split!r}")
        return {"val_loss": val_loss, "val_ppl": perplexity_from_loss(val_loss)}

    def save(self) -> None:
        """Collective: checkpoint the current step (engine, RNGs, step, tokens, loader position, W&B run id)."""
        state = {"step": self.step, "tokens": self.tokens, "loader": self.loader.state_dict(),
                 "wandb_id": self.logger.wandb_id}
        checkpoint.save(self.engine, self.rd.checkpoints, self.step, state, self.dist, self.cfg.keep_last)

    def _save_on_signal(self) -> None:
        self.save()
        self._say(f"stop signal: saved step {self.step} in {self.rd.checkpoints}; relaunch to resume")

    def finish(self) -> None:
        """The last checkpoint, a final evaluation (unless the last step had one), ``export/``, then ``DONE``."""
        if self.cfg.final_checkpoint and checkpoint.latest_tag_or_none(self.rd.checkpoints) != checkpoint.tag_for(
                self.step):
            self.save()
        final = {}
        if self.eval_every > 0 and self.step % self.eval_every != 0:
            final = self.evaluate()
            self.logger.log({"step": self.step, "tokens": self.tokens, **final})
        if self.cfg.export:
            export_model(self.engine, self.spec.tokenizer_dir, self.rd.export, self.dist, self.zero_stage,
                         self.cfg.export_max_shard_size)
        if self.dist.is_main:
            self.rd.mark_done({"step": self.step, "tokens": self.tokens, **final})
            self.logger.summary({"final_step": self.step, **final})
        barrier()

    # -- helpers -----------------------------------------------------------------------------------------------

    def _loader(self, split: str) -> PackedLoader:
        spec, g = self.spec, self.geometry
        return PackedLoader(sources=[(s.path, s.weight) for s in spec.data.sources], split=split,
                            seq_len=g.seq_len, global_batch_rows=g.global_rows, rank=self.dist.rank,
                            world_size=self.dist.world_size, seed=self.cfg.seed,
                            split_documents=spec.split_documents)

    def _say(self, message: str) -> None:
        if self.dist.is_main:
            print(f"[train] {message}", flush=True)


def train(spec: TrainSpec, dist_info: DistInfo) -> StopReason:
    """Train (or resume) ``spec`` to completion or until a stop signal; collective over all ranks."""
    return Trainer(spec, dist_info).run()
