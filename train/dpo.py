"""DPO of a SambaY model (an SFT export or a hub snapshot) with TRL's ``DPOTrainer``.

    torchrun --nproc_per_node=N -m train.dpo --config-name finetune dpo.init_from=OUT_SFT/export \
        dpo.train_data=PREFS run.dir=OUT_DPO       # your own pairs, any TRL preference format (docs/finetune.md)
    torchrun --nproc_per_node=N -m train.dpo [--config-name demo] dpo.init_from=runs/sft/math/export [overrides]

The pairs (``train.alignment.preference_data``): ``dpo.train_data`` (a JSONL/JSON/Parquet file, a list of them or a
``datasets`` save_to_disk directory; standard or conversational, explicit or implicit prompt) with ``dpo.eval_data``
or a held-out split, or the prepared data of ``dpo.data_dir``; the split sizes and any cap are printed.

Run directory (``run.dir``): ``config.yaml``, ``metrics.jsonl`` (step, loss, lr, grad_norm and TRL's
rewards/logps), ``checkpoints/checkpoint-N`` (HF Trainer / DeepSpeed, with ``COMPLETE`` once fully saved; a
relaunch resumes from the newest complete one, see ``train.runtime.hf_resume``; SIGTERM / SIGUSR1 save one and exit 0),
``on_policy_pairs.jsonl`` (when on-policy pairs are built; ``on_policy_parts/`` holds each rank's share, see
``train.alignment.on_policy``), ``dpo_heldout.json`` (held-out reward margin and preference accuracy, see
``train.alignment.preference_scoring``), ``export/`` (HF layout with tokenizer and generation config) and ``DONE`` last;
with ``peft.enabled=true`` (LoRA, TRL's ``peft_config``; the reference is the init model with the adapters
disabled) the export holds the merged weights and ``adapter/`` the adapter alone (``train.runtime.lora``).

The engine pieces are the pretraining / SFT trainer's: process group and device (``train.runtime.distributed``), precision
and ZeRO settings (the same DeepSpeed JSON), run directory and its one-writer lock, W&B run resume
(``train.runtime.metrics``) and the export (``train.runtime.export``). ``trainer.dry_run=true`` reads and checks every input,
builds the DeepSpeed config and TRL arguments the run would use, prints them and writes nothing.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, load_from_disk
from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from data.dir_lock import RunDirLockedError
from data.layout import PreparedData
from data.tokenizer import check_same_tokenizer, load_tokenizer
from recipes.entry import hydra_main
from sambay_model import Phi4FlashConfig
from sambay_model.length_buckets import pad_multiple
from sambay_model.lm_head_loss import precision_trl_head
from train.runtime.distributed import (DistInfo, autocast_weight_cache, barrier, bf16_comm_modules, hf_trainer_deepspeed_json,
                               init_distributed_if_needed, launch_world_size, resolve_precision, select_device)
from train.alignment.dpo_config import DPORunConfig, register_dpo_schema
from train.runtime.results_io import write_json
from train.alignment.preference_data import optimizer_steps, select_pairs
from train.alignment.preference_scoring import completion_logps, encode_pair_side, preference_metrics
from train.runtime import lora
from train.runtime.export import export_model, save_export
from train.runtime.hf_resume import MarkCompleteCheckpoints, StopOnSignal, resume_checkpoint, step_of
from train.runtime.metrics import MetricsLogger, resumable_logger, truncate_after
from train.runtime.model_build import load_export, meta_model, require_export
from train.alignment.on_policy import load_on_policy_problems, training_pairs
from train.runtime.run_dir import RunDir
from train.runtime.run_name import fill_run_name
from train.runtime.run_lock import hold_run_dir

HELDOUT_FILE = "dpo_heldout.json"  # in the run directory


@dataclass(frozen=True)
class DPOInputs:
    """What a run reads, checked before anything is written (:func:`load_inputs`)."""

    init_from: Path
    heldout: list[dict]
    offline: list[dict]  # empty when on-policy pairs replace them
    on_policy_problems: int  # problems on-policy pairs are sampled on (0: none)
    notes: list[str]  # how the pairs were chosen (split sizes, caps), printed by the run and the dry run


def load_inputs(cfg: DPORunConfig) -> DPOInputs:
    """Check and read every input: the init model, the tokenizer it shares with prepared data (``dpo.data_dir``),
    the preference pairs (``train.alignment.preference_data``) and the on-policy problems. A missing or malformed
    file is an error naming it and its config key; nothing is written."""
    init_from = require_export(cfg.dpo.init_from, key="dpo.init_from")
    if cfg.dpo.check_tokenizer and cfg.dpo.data_dir is not None:
        check_same_tokenizer(init_from, PreparedData(cfg.dpo.data_dir).tokenizer)
    on_policy = cfg.dpo.on_policy
    split = select_pairs(cfg, need_train=not (on_policy.enabled and on_policy.mix == "replace"))
    problems = len(load_on_policy_problems(cfg)) if on_policy.enabled else 0
    return DPOInputs(init_from, split.heldout, split.train, problems, split.notes)


def print_notes(inputs: DPOInputs) -> None:
    """The choices made about the pairs (held-out split, caps), so none is silent."""
    for note in inputs.notes:
        print(f"[dpo] {note}", flush=True)


def training_args(cfg: DPORunConfig, rd: RunDir, world_size: int, device: torch.device,
                  bf16_modules: list[str] | None, steps: int | None = None) -> DPOConfig:
    """TRL's arguments for ``steps`` optimizer steps (``preference_data.optimizer_steps``; default
    ``trainer.max_steps``) with the trainer's precision and DeepSpeed settings (``train.runtime.distributed``)."""
    steps = cfg.trainer.max_steps if steps is None else steps
    compute_dtype = resolve_precision(cfg.deepspeed, device)
    ds_json = hf_trainer_deepspeed_json(cfg.deepspeed, micro_batch_rows=cfg.dpo.per_device_batch_size,
                                        grad_accum=cfg.dpo.gradient_accumulation_steps, world_size=world_size,
                                        compute_dtype=compute_dtype, bf16_modules=bf16_modules)
    # HF's bf16 flag is accelerate's autocast over fp32 weights: the same rule, used only without DeepSpeed
    # (with it, HF's flag would switch on DeepSpeed's bf16 mode instead of torch_autocast, see deepspeed_json).
    hf_bf16 = compute_dtype == torch.bfloat16 and ds_json is None
    return DPOConfig(
        output_dir=str(rd.checkpoints), max_steps=steps, per_device_train_batch_size=cfg.dpo.per_device_batch_size,
        gradient_accumulation_steps=cfg.dpo.gradient_accumulation_steps, learning_rate=cfg.dpo.lr,
        lr_scheduler_type=cfg.dpo.lr_scheduler, warmup_steps=cfg.dpo.warmup_steps, weight_decay=cfg.dpo.weight_decay,
        max_grad_norm=cfg.deepspeed.grad_clip, beta=cfg.dpo.beta, loss_type=list(cfg.dpo.loss_type),
        loss_weights=list(cfg.dpo.loss_weights) if cfg.dpo.loss_weights else None,
        precompute_ref_log_probs=cfg.dpo.reference == "precomputed", max_length=cfg.dpo.max_length,
        truncation_mode=cfg.dpo.truncation_mode, logging_steps=cfg.trainer.log_every,
        save_strategy="steps" if cfg.trainer.save_every or cfg.trainer.final_checkpoint else "no",
        save_steps=cfg.trainer.save_every or steps, save_total_limit=cfg.trainer.keep_last, seed=cfg.trainer.seed,
        data_seed=cfg.trainer.seed, report_to="none", use_cpu=device.type != "cuda", bf16=hf_bf16,
        # TRL defaults to activation checkpointing on and bf16 on: both set explicitly from the recipe
        # (``activation_checkpointing``: transformers 5's name for ``gradient_checkpointing``).
        activation_checkpointing=cfg.dpo.gradient_checkpointing, disable_tqdm=not cfg.trainer.progress_bar,
        deepspeed=ds_json, dataloader_num_workers=0,
        # Batches padded to a length bucket on CUDA, so compiled attention sees few shapes (length_buckets).
        pad_to_multiple_of=pad_multiple(device),
    )


def dry_run(cfg: DPORunConfig, inputs: DPOInputs) -> dict:
    """Build what the run would use and print it: the tokenizer on every held-out pair (its chat template must
    separate prompt and completion), the model's shapes (meta device, no weights read), the DeepSpeed config and
    TRL's arguments. Starts no process group and writes nothing."""
    print_notes(inputs)
    tokenizer = load_tokenizer(inputs.init_from)
    longest = max((len(encode_pair_side(tokenizer, p["prompt"], p[side], cfg.dpo.max_length)[0])
                   for p in inputs.heldout for side in ("chosen", "rejected")), default=0)
    model = meta_model(Phi4FlashConfig.from_pretrained(str(inputs.init_from)))
    peft_config(cfg, model)  # LoRA targets checked on the model's modules
    _, device = select_device()
    world_size = launch_world_size()
    steps, steps_note = optimizer_steps(cfg, len(inputs.offline), world_size)
    print(f"[dpo] {steps_note}" + (" (before on-policy pairs)" if inputs.on_policy_problems else ""), flush=True)
    args = training_args(cfg, RunDir(Path(cfg.run.dir)), world_size, device, bf16_comm_modules(model), steps)
    summary = {"dry_run": True, "run_dir": cfg.run.dir, "offline_pairs": len(inputs.offline),
               "on_policy_problems": inputs.on_policy_problems, "heldout_pairs": len(inputs.heldout),
               "heldout_longest_tokens": longest, "params": sum(p.numel() for p in model.parameters()),
               "world_size": world_size, "max_steps": steps, "notes": inputs.notes + [steps_note],
               "reference": cfg.dpo.reference, "precision": str(resolve_precision(cfg.deepspeed, device)),
               "hf_bf16": args.bf16, "deepspeed": args.deepspeed, "lora": cfg.peft.enabled}
    print(json.dumps(summary), flush=True)
    return summary


class LogToRunDir(TrainerCallback):
    """TRL's logged averages -> metrics.jsonl / W&B with the shared key names."""

    RENAME = {"learning_rate": "lr"}

    def __init__(self, logger: MetricsLogger):
        self.logger = logger

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return  # the end-of-training summary (train_runtime, ...) is not a step record
        self.logger.log({"step": state.global_step, **{self.RENAME.get(k, k): v for k, v in logs.items()}})


def shared_train_dataset(pairs: list[dict], run_dir: Path, rank: int) -> Dataset:
    """The training pairs as an Arrow dataset in ``run_dir/dpo_dataset`` that every rank opens.

    TRL caches precomputed reference log-probs next to the dataset's files and every rank reads rank 0's
    cache; an in-memory dataset would put that cache in a per-process temp dir the other ranks cannot see.
    """
    path = run_dir / "dpo_dataset"
    if rank == 0:
        tmp = run_dir / f"dpo_dataset.tmp-{os.getpid()}"
        Dataset.from_list(pairs).save_to_disk(str(tmp))
        if path.exists():
            shutil.rmtree(path)  # a relaunch rebuilds it (the pairs may have changed with the config)
        os.replace(tmp, path)
    barrier()
    return load_from_disk(str(path))


@dataclass
class _Training:
    """The built trainer and what its run needs around ``trainer.train()``."""

    trainer: DPOTrainer
    stop: StopOnSignal
    logger: MetricsLogger
    resume_from: Path | None


def build_trainer(cfg: DPORunConfig, config_yaml: str, rd: RunDir, dist_info: DistInfo, model, tokenizer,
                  pairs: list[dict]) -> _Training:
    """The DPOTrainer over ``pairs``, resuming from the newest complete checkpoint, logging to the run directory."""
    is_main = dist_info.is_main
    steps, steps_note = optimizer_steps(cfg, len(pairs), dist_info.world_size)
    if is_main:
        print(f"[dpo] {steps_note}", flush=True)
    args = training_args(cfg, rd, dist_info.world_size, dist_info.device, bf16_comm_modules(model), steps)
    resume_from = resume_checkpoint(rd.checkpoints, is_main)  # complete checkpoints only (train.runtime.hf_resume)
    start = step_of(resume_from) or 0
    if is_main:  # also without a complete checkpoint: the run starts over, so do its metrics
        truncate_after(rd.metrics, start)
    logger = resumable_logger(rd, enabled=is_main, wandb_cfg=cfg.wandb, run_name=cfg.run.name,
                              config=OmegaConf.to_container(OmegaConf.create(config_yaml)),
                              total_steps=steps, start_step=start, progress_bar=False)
    stop = StopOnSignal(dist_info.device)
    ref_model = copy.deepcopy(model) if cfg.dpo.reference == "frozen_copy" else None
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args,
                         train_dataset=shared_train_dataset(pairs, rd.root, dist_info.rank), processing_class=tokenizer,
                         callbacks=[LogToRunDir(logger), MarkCompleteCheckpoints(rd.checkpoints, is_main), stop],
                         peft_config=peft_config(cfg, model))
    # TRL's fused head already scores completions in bounded tiles; run it at the model's lm_head_precision (fp32
    # log-sum-exp) like our own loss (lm_head_loss) instead of in whatever dtype autocast gives. With LoRA the head
    # goes on the base model inside the adapters, where TRL puts its own (policy and adapter-disabled reference).
    for scorer in (trainer.model, trainer.ref_model):
        if scorer is not None:
            precision_trl_head(lora.base_model(scorer))
    return _Training(trainer, stop, logger, resume_from)


def peft_config(cfg: DPORunConfig, model):
    """The LoRA config TRL wraps the policy with (``peft.enabled``), its targets checked on ``model``; else None.

    TRL then keeps no reference model: it scores the reference with the adapters disabled (the init model)."""
    if not cfg.peft.enabled:
        return None
    lora.check_targets(model, list(cfg.peft.target_modules))
    return lora.lora_config(cfg.peft)


def scoring_model(trainer: DPOTrainer):
    """The trained policy as held-out scoring reads it (``preference_scoring`` calls the module's backbone): a LoRA
    policy through the base model its adapters sit in, active; otherwise the wrapped model."""
    wrapped = trainer.model_wrapped
    core = getattr(wrapped, "module", wrapped)
    return lora.base_model(core) if lora.is_peft(core) else wrapped


def train_to_end(t: _Training, rd: RunDir, dist_info: DistInfo) -> bool:
    """``trainer.train()`` until ``max_steps`` (True) or a stop signal (False: an agreed checkpoint was saved).

    Call inside ``with t.stop:`` (SIGTERM / SIGUSR1: every rank saves at the same step boundary, then the run ends
    cleanly)."""
    t.trainer.train(resume_from_checkpoint=str(t.resume_from) if t.resume_from is not None else None)
    t.logger.close()
    if t.stop.stopped and dist_info.is_main:
        print(f"[dpo] stop signal: saved checkpoint-{t.trainer.state.global_step} in {rd.checkpoints}; relaunch to "
              f"resume", flush=True)
    return not t.stop.stopped


def heldout_logps(model, tokenizer, pairs: list[dict], cfg: DPORunConfig,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed held-out completion log-probs under the training precision; the reference and the policy both come
    through here, so their margin compares log-probs computed alike (``train.alignment.preference_scoring``)."""
    return completion_logps(model, tokenizer, pairs, cfg.dpo.max_length, cfg.dpo.heldout_batch_size,
                            compute_dtype=resolve_precision(cfg.deepspeed, device))


def export_policy(trainer: DPOTrainer, init_from: Path, out_dir: Path, dist_info: DistInfo, zero_stage: int,
                  max_shard_size: str) -> None:
    """Collective: the trained policy in the HF layout with the init export's tokenizer (``train.runtime.export``).

    Under ZeRO >= 1 ``trainer.model_wrapped`` is the DeepSpeed engine, exported like pretraining's (ZeRO-3 shards
    gathered); without DeepSpeed rank 0 writes the unwrapped model."""
    if zero_stage > 0:
        export_model(trainer.model_wrapped, init_from, out_dir, dist_info, zero_stage, max_shard_size)
        return
    if dist_info.is_main:
        save_export(trainer.accelerator.unwrap_model(trainer.model), init_from, out_dir, max_shard_size)
    barrier()


def finish(rd: RunDir, metrics: dict, step: int, dist_info: DistInfo) -> None:
    """Rank 0 writes the held-out metrics, then ``DONE`` (last: the run is complete)."""
    if dist_info.is_main:
        write_json(rd.root / HELDOUT_FILE, metrics, overwrite=True)
        rd.mark_done({"step": step, **metrics})
        print(f"[dpo] done: export at {rd.export}", flush=True)
    barrier()


def _run_holding(cfg: DPORunConfig, config_yaml: str, rd: RunDir, dist_info: DistInfo,
                 inputs: DPOInputs) -> dict | None:
    """:func:`run` once this job holds the run directory: the named steps in order."""
    if dist_info.is_main:
        rd.create()
        rd.write_config(config_yaml)
        print_notes(inputs)
    barrier()
    torch.manual_seed(cfg.trainer.seed)
    model = load_export(inputs.init_from).to(dist_info.device)
    tokenizer = load_tokenizer(inputs.init_from)
    pairs = training_pairs(cfg, inputs.offline, model, tokenizer, rd.root, dist_info.rank, dist_info.world_size)
    # Held-out reference log-probs come from the init model, before any update (same for both reference modes).
    ref_chosen, ref_rejected = heldout_logps(model, tokenizer, inputs.heldout, cfg, dist_info.device)
    training = build_trainer(cfg, config_yaml, rd, dist_info, model, tokenizer, pairs)
    # The stop handlers stay installed to the end, as in the engine (train.engine.trainer): a signal that comes
    # after the last step is recorded, and the run finishes its held-out scoring, export and DONE instead of dying
    # half-way through them (a rank killed there would leave the others in a collective).
    with training.stop, autocast_weight_cache(cfg.deepspeed.zero_stage != 3):  # see train.runtime.distributed
        if not train_to_end(training, rd, dist_info):
            return None
        # Every rank runs the held-out forward through the wrapped model (ZeRO-3 needs all ranks to gather).
        pol_chosen, pol_rejected = heldout_logps(scoring_model(training.trainer), tokenizer, inputs.heldout, cfg,
                                                 dist_info.device)
        step = training.trainer.state.global_step
        metrics = {**preference_metrics(pol_chosen, pol_rejected, ref_chosen, ref_rejected, cfg.dpo.beta),
                   "train_pairs": len(pairs), "steps": step}
        export_policy(training.trainer, inputs.init_from, rd.export, dist_info, cfg.deepspeed.zero_stage,
                      cfg.trainer.export_max_shard_size)
        finish(rd, metrics, step, dist_info)
    return metrics if dist_info.is_main else None


def run(cfg: DPORunConfig, config_yaml: str) -> dict | None:
    """Train, score held-out pairs, export; returns the held-out metrics on rank 0 (None when already done or
    stopped by a signal), or the dry-run summary.

    Every input is checked before the run directory is touched: bad data leaves nothing half-written. Raises
    :class:`data.dir_lock.RunDirLockedError` on every rank when another live run holds the directory."""
    if cfg.trainer.dry_run:
        return dry_run(cfg, load_inputs(cfg))
    rd = RunDir(Path(cfg.run.dir))
    rd.check_relaunch(config_yaml)  # a changed config is refused, also for a finished run (run.allow_config_change)
    if rd.is_done():
        print(f"[dpo] {rd.done} exists: the run is complete; nothing to do", flush=True)
        return None
    inputs = load_inputs(cfg)
    dist_info = init_distributed_if_needed(cfg.deepspeed)  # device per local rank before any collective
    with hold_run_dir(rd.lock, dist_info):  # one writer per run directory, as in pretraining (train.runtime.run_lock)
        return _run_holding(cfg, config_yaml, rd, dist_info, inputs)


def run_recipe(dcfg: DictConfig) -> int:
    """Run a composed DPO recipe; returns the process exit status."""
    fill_run_name(dcfg, "dpo", "dpo.init_from")
    cfg: DPORunConfig = OmegaConf.to_object(dcfg)  # also runs the dataclasses' validation
    try:
        metrics = run(cfg, OmegaConf.to_yaml(dcfg, resolve=True))
    except RunDirLockedError as e:  # the same exit status as pretraining's (train.engine.launch)
        print(f"[dpo] {e}", file=sys.stderr, flush=True)
        return RunDirLockedError.exit_code
    if metrics is not None and not cfg.trainer.dry_run:
        print(json.dumps(metrics, sort_keys=True), flush=True)
    return 0


main = hydra_main("dpo", register_dpo_schema, run_recipe)


if __name__ == "__main__":
    main()
