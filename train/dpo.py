"""DPO of a SambaY SFT export with TRL's ``DPOTrainer``.

    torchrun --nproc_per_node=N -m train.dpo [--config-name demo] dpo.init_from=runs/sft/math/export [overrides]

Run directory (``run.dir``): ``config.yaml``, ``metrics.jsonl`` (step, loss, lr, grad_norm and TRL's
rewards/logps), ``checkpoints/checkpoint-N`` (HF Trainer / DeepSpeed, with ``COMPLETE`` once fully saved; a
relaunch resumes from the newest complete one, see ``train.hf_resume``; SIGTERM / SIGUSR1 save one and exit 0),
``on_policy_pairs.jsonl`` (when on-policy pairs are built; ``on_policy_parts/`` holds each rank's share), ``dpo_heldout.json`` (held-out reward margin and
preference accuracy, see ``train.eval_preference``), ``export/`` (HF layout with tokenizer and generation
config) and ``DONE`` last.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from train.distributed import (DistInfo, autocast_weight_cache, bf16_comm_modules, deepspeed_json, init_distributed,
                               prepare_deepspeed_env, resolve_precision, select_device)
from train.dpo_config import DPORunConfig, register_dpo_config
from train.run_lock import RunDirLockedError, hold_run_dir

ON_POLICY_POLL_S = 5.0  # how often a rank that finished its share of on-policy sampling looks for the others'


def setup_distributed(cfg: DPORunConfig) -> DistInfo:
    """The pretraining / SFT set-up (``train.distributed``): cuda:LOCAL_RANK set before the first collective.

    The process group is started here (accelerate reuses it) for several processes and for DeepSpeed (ZeRO >= 1,
    which needs one even for a single process). A single process without DeepSpeed gets none, as accelerate
    runs it, so an in-process caller (the tests) keeps no global process-group state.
    """
    world_size = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    if world_size > 1 or cfg.deepspeed.zero_stage > 0:
        return init_distributed(cfg.deepspeed)
    local_rank, device = select_device()
    return DistInfo(rank=0, world_size=1, local_rank=local_rank, device=device)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def trainer_deepspeed_json(cfg: DPORunConfig, world_size: int, compute_dtype: torch.dtype,
                           bf16_modules: list[str] | None = None) -> dict | None:
    """DeepSpeed config for ``DPOConfig(deepspeed=...)``; None at ZeRO stage 0 (plain DDP: nothing to shard).

    Same precision as the DeepSpeed trainer: fp32 parameters and master weights, bf16 through DeepSpeed's
    ``torch_autocast`` (see ``train.distributed.deepspeed_json``), never DeepSpeed's ``bf16`` mode. With
    optimizer offload the optimizer comes from an ``optimizer`` section (DeepSpeed then builds DeepSpeedCPUAdam;
    it refuses the HF Trainer's torch AdamW with offload) whose ``auto`` values the HF Trainer fills in.
    """
    if cfg.deepspeed.zero_stage == 0:
        return None
    ds = deepspeed_json(cfg.deepspeed, micro_batch_rows=cfg.dpo.per_device_batch_size,
                        grad_accum=cfg.dpo.gradient_accumulation_steps, world_size=world_size,
                        compute_dtype=compute_dtype, bf16_modules=bf16_modules)
    if cfg.deepspeed.offload_optimizer:
        ds["optimizer"] = {"type": "AdamW", "params": {k: "auto" for k in ("lr", "betas", "eps", "weight_decay")}}
    if cfg.deepspeed.zero_stage == 3:
        # trainer.save_model gathers the shards into one state dict only with this set; without it
        # it writes an empty state dict plus a sharded ZeRO checkpoint that needs zero_to_fp32.py.
        ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    return ds


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous block ``[lo, hi)`` of ``n`` items for ``rank``: blocks in rank order are the items in order."""
    return n * rank // world_size, n * (rank + 1) // world_size


def build_on_policy_pairs(model, tokenizer, cfg: DPORunConfig, data_dir: Path,
                          shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """Sample k completions per training problem from the init model, grade them, pair right with wrong.

    ``shard=(rank, world_size)``: only this rank's contiguous block of the problems (seeded per rank).
    """
    from data.preference import pairs_from_samples
    from train.eval_math import load_problems
    from train.generation import chat_prompt, generate
    from train.math_grader import grade

    op = cfg.dpo.on_policy
    problems = load_problems(op.problems or data_dir / "reasoning" / "train.jsonl", limit=op.num_problems or None)
    lo, hi = shard_bounds(len(problems), *shard)
    problems = problems[lo:hi]

    def generate_fn(user_prompts: list[str], k: int) -> list[list[str]]:
        sampling = copy.copy(op.sampling)
        sampling.num_samples = k
        return generate(model, tokenizer, [chat_prompt(tokenizer, p) for p in user_prompts], sampling, progress=True)

    return pairs_from_samples(problems, generate_fn, lambda c, a: grade(c, a).correct, k=op.sampling.num_samples,
                              seed=cfg.trainer.seed + shard[0])


def _wait_for_files(paths: list[Path], poll_s: float) -> None:
    """Poll until every path exists. Not a collective: no NCCL watchdog timeout while others still sample."""
    while not all(p.exists() for p in paths):
        time.sleep(poll_s)


def gather_on_policy_pairs(cfg: DPORunConfig, model, tokenizer, run_dir: Path, data_dir: Path, rank: int,
                           world_size: int, poll_s: float = ON_POLICY_POLL_S) -> Path:
    """``run_dir/on_policy_pairs.jsonl``, built once with every rank sampling its share of the problems.

    Each rank writes ``on_policy_parts/part-R-of-W.jsonl`` (atomically; a relaunch keeps finished parts),
    rank 0 concatenates the parts in rank order (= problem order) and a resumed run reuses the merged file.
    Ranks wait for each other by polling files: sampling takes hours at ``recipes/dpo/gpu.yaml`` sizes and
    ranks finish at different times, so a barrier (NCCL's watchdog aborts after 10 minutes) must not wait on it.
    """
    from data.jsonl import read_jsonl, write_jsonl

    final = run_dir / "on_policy_pairs.jsonl"
    if final.exists():
        return final
    parts = [run_dir / "on_policy_parts" / f"part-{r:05d}-of-{world_size:05d}.jsonl" for r in range(world_size)]
    if not parts[rank].exists():
        built = build_on_policy_pairs(model, tokenizer, cfg, data_dir, shard=(rank, world_size))
        write_jsonl(parts[rank], built)
        print(f"[dpo] rank {rank}: built {len(built)} on-policy pairs -> {parts[rank]}", flush=True)
    _wait_for_files(parts, poll_s)
    if rank == 0:
        # A rank whose problems gave no right/wrong pair wrote an empty part (read_jsonl rejects empty files).
        n = write_jsonl(final, [rec for part in parts if part.stat().st_size for rec in read_jsonl(part)])
        print(f"[dpo] {n} on-policy pairs from {world_size} rank(s) -> {final}", flush=True)
    _wait_for_files([final], poll_s)
    return final


def _add_on_policy_pairs(cfg: DPORunConfig, offline: list[dict], model, tokenizer, run_dir: Path, data_dir: Path,
                         dist_info: DistInfo) -> list[dict]:
    """Offline pairs plus (or replaced by) on-policy pairs (see :func:`gather_on_policy_pairs`)."""
    from data.preference import FIELDS
    from train.eval_preference import load_preference_pairs

    pairs = list(offline)
    if cfg.dpo.on_policy.enabled:
        if cfg.dpo.on_policy.mix == "replace":
            pairs = []
        path = gather_on_policy_pairs(cfg, model, tokenizer, run_dir, data_dir, dist_info.rank, dist_info.world_size)
        if path.stat().st_size:
            pairs += load_preference_pairs(path)
    if not pairs:
        raise ValueError("no DPO training pairs: on-policy sampling gave no right/wrong pair and mix=replace")
    return [{k: p[k] for k in FIELDS} for p in pairs]


def shared_train_dataset(pairs: list[dict], run_dir: Path, rank: int):
    """The training pairs as an Arrow dataset in ``run_dir/dpo_dataset`` that every rank opens.

    TRL caches precomputed reference log-probs next to the dataset's files and every rank reads rank 0's
    cache; an in-memory dataset would put that cache in a per-process temp dir the other ranks cannot see.
    """
    import shutil

    from datasets import Dataset, load_from_disk

    path = run_dir / "dpo_dataset"
    if rank == 0:
        tmp = run_dir / f"dpo_dataset.tmp-{os.getpid()}"
        Dataset.from_list(pairs).save_to_disk(str(tmp))
        if path.exists():
            shutil.rmtree(path)  # a relaunch rebuilds it (the pairs may have changed with the config)
        os.replace(tmp, path)
    _barrier()
    return load_from_disk(str(path))


def _write_export(trainer, init_from: Path, out_dir: Path, zero_stage: int, rank: int) -> None:
    import shutil

    from data.atomic import atomic_dir
    from train.export import generation_config_for, save_export

    if zero_stage == 3:
        # Collective: every rank joins the gather; rank 0 completes the layout, then renames atomically.
        tmp = out_dir.with_name(out_dir.name + ".zero3-tmp")
        trainer.save_model(str(tmp))
        if rank == 0:
            from data.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(init_from)
            with atomic_dir(out_dir, overwrite=True) as final:
                for f in tmp.iterdir():
                    if f.name != "training_args.bin":  # Trainer bookkeeping, not part of the HF export
                        os.replace(f, final / f.name)
                tokenizer.save_pretrained(str(final))
                generation_config_for(trainer.model.config, tokenizer).save_pretrained(str(final))
            shutil.rmtree(tmp)
    elif rank == 0:
        save_export(trainer.accelerator.unwrap_model(trainer.model), init_from, out_dir)
    _barrier()


def run(cfg: DPORunConfig, config_yaml: str) -> dict | None:
    """Train, score held-out pairs, export; returns the held-out metrics on rank 0 (None when already done).

    Raises :class:`train.run_lock.RunDirLockedError` on every rank when another live run holds the directory."""
    from train.eval_preference import load_preference_pairs
    from train.eval_tokenizer_check import check_same_tokenizer
    from train.run_dir import RunDir

    rd = RunDir(Path(cfg.run.dir))
    if rd.is_done():
        print(f"[dpo] {rd.done} exists: the run is complete; nothing to do", flush=True)
        return None
    init_from, data_dir = Path(cfg.dpo.init_from), Path(cfg.dpo.data_dir)
    if not (init_from / "config.json").is_file():
        raise FileNotFoundError(f"dpo.init_from={init_from}: not a model export (no config.json); expected an SFT "
                                f"stage's export/ directory")
    if cfg.dpo.check_tokenizer:
        check_same_tokenizer(init_from, data_dir / "tokenizer")
    # Validate every input before the run dir is touched: bad data leaves nothing half-written.
    heldout = load_preference_pairs(cfg.dpo.heldout_file or data_dir / "preference" / "heldout.jsonl",
                                    limit=cfg.dpo.heldout_limit or None)
    offline = [] if cfg.dpo.on_policy.enabled and cfg.dpo.on_policy.mix == "replace" else load_preference_pairs(
        cfg.dpo.train_file or data_dir / "preference" / "train.jsonl", limit=cfg.dpo.train_limit or None)
    dist_info = setup_distributed(cfg)  # before any collective and before the model moves to its device
    with hold_run_dir(rd.lock, dist_info):  # one writer per run directory, as in pretraining (train.run_lock)
        return _run_holding(cfg, config_yaml, rd, dist_info, _Inputs(init_from, data_dir, heldout, offline))


class _Inputs(NamedTuple):
    """What :func:`run` validated before touching the run directory."""

    init_from: Path
    data_dir: Path
    heldout: list[dict]
    offline: list[dict]


def _run_holding(cfg: DPORunConfig, config_yaml: str, rd, dist_info, inputs: _Inputs) -> dict | None:
    """:func:`run` once this job holds the run directory."""
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from data.atomic import atomic_write_text
    from data.tokenizer import load_tokenizer
    from sambay_model.lm_head_loss import fp32_trl_head
    from train.eval_io import write_json
    from train.eval_preference import completion_logps, preference_metrics
    from train.hf_resume import MarkCompleteCheckpoints, StopOnSignal, resume_checkpoint, step_of
    from train.metrics import MetricsLogger, truncate_after
    from train.model_build import load_export

    init_from, data_dir, heldout, offline = inputs
    rank, world_size = dist_info.rank, dist_info.world_size
    if rank == 0:
        rd.create()
        rd.write_config(config_yaml)
    _barrier()

    torch.manual_seed(cfg.trainer.seed)
    on_gpu = dist_info.device.type == "cuda"
    model = load_export(init_from).to(dist_info.device)
    tokenizer = load_tokenizer(init_from)
    train_pairs = _add_on_policy_pairs(cfg, offline, model, tokenizer, rd.root, data_dir, dist_info)
    # Held-out reference log-probs come from the init model, before any update (same for both reference modes).
    ref_c, ref_r = completion_logps(model, tokenizer, heldout, cfg.dpo.max_length, cfg.dpo.heldout_batch_size)

    compute_dtype = resolve_precision(cfg.deepspeed, dist_info.device)
    steps = cfg.trainer.max_steps
    ds_json = trainer_deepspeed_json(cfg, world_size, compute_dtype, bf16_comm_modules(model))
    if ds_json is not None:
        prepare_deepspeed_env(cfg.deepspeed, dist_info.device)  # accelerate starts DeepSpeed for one process
    # HF's bf16 flag is accelerate's autocast over fp32 weights: the same rule, used only without DeepSpeed
    # (with it, HF's flag would switch on DeepSpeed's bf16 mode instead of torch_autocast).
    hf_bf16 = compute_dtype == torch.bfloat16 and ds_json is None
    args = DPOConfig(
        output_dir=str(rd.checkpoints), max_steps=steps, per_device_train_batch_size=cfg.dpo.per_device_batch_size,
        gradient_accumulation_steps=cfg.dpo.gradient_accumulation_steps, learning_rate=cfg.dpo.lr,
        lr_scheduler_type=cfg.dpo.lr_scheduler, warmup_steps=cfg.dpo.warmup_steps, weight_decay=cfg.dpo.weight_decay,
        max_grad_norm=cfg.deepspeed.grad_clip, beta=cfg.dpo.beta, loss_type=list(cfg.dpo.loss_type),
        loss_weights=list(cfg.dpo.loss_weights) if cfg.dpo.loss_weights else None,
        precompute_ref_log_probs=cfg.dpo.reference == "precomputed", max_length=cfg.dpo.max_length,
        truncation_mode=cfg.dpo.truncation_mode, logging_steps=cfg.trainer.log_every, save_strategy="steps",
        save_steps=cfg.trainer.save_every or steps, save_total_limit=cfg.trainer.keep_last, seed=cfg.trainer.seed,
        data_seed=cfg.trainer.seed, report_to="none", use_cpu=not on_gpu, bf16=hf_bf16,
        # TRL defaults to gradient checkpointing on and bf16 on: both set explicitly from the recipe.
        gradient_checkpointing=cfg.dpo.gradient_checkpointing, disable_tqdm=not cfg.trainer.progress_bar,
        deepspeed=ds_json, dataloader_num_workers=0,
    )
    wandb_id = rd.wandb_id.read_text().strip() if rank == 0 and rd.wandb_id.exists() else None
    resume_from = resume_checkpoint(rd.checkpoints, rank == 0)  # complete checkpoints only (train.hf_resume)
    resume_step = step_of(resume_from)
    if rank == 0:  # also without a complete checkpoint: the run starts over, so do its metrics
        truncate_after(rd.metrics, resume_step or 0)
    logger = MetricsLogger(enabled=rank == 0 and not cfg.trainer.dry_run, path=rd.metrics, wandb_cfg=cfg.wandb,
                           run_name=cfg.run.name, run_dir=rd.root,
                           config=OmegaConf.to_container(OmegaConf.create(config_yaml)), wandb_id=wandb_id,
                           total_steps=steps, start_step=resume_step or 0, progress_bar=False)
    if rank == 0 and logger.wandb_id:
        atomic_write_text(rd.wandb_id, logger.wandb_id, overwrite=True)

    class LogToRunDir(TrainerCallback):
        """TRL's logged averages -> metrics.jsonl / W&B with the shared key names."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return  # the end-of-training summary (train_runtime, ...) is not a step record
            rename = {"learning_rate": "lr"}
            record = {"step": state.global_step, **{rename.get(k, k): v for k, v in logs.items()}}
            logger.log(record)

    ref_model = copy.deepcopy(model) if cfg.dpo.reference == "frozen_copy" else None
    stop = StopOnSignal(dist_info.device)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args,
                         train_dataset=shared_train_dataset(train_pairs, rd.root, rank), processing_class=tokenizer,
                         callbacks=[LogToRunDir(), MarkCompleteCheckpoints(rd.checkpoints, rank == 0), stop])
    # TRL's fused head already scores completions in bounded tiles; make it fp32 like our own loss (lm_head_loss).
    for scorer in (trainer.model, trainer.ref_model):
        if scorer is not None:
            fp32_trl_head(scorer)
    if cfg.trainer.dry_run:
        summary = {"dry_run": True, "train_pairs": len(train_pairs), "heldout_pairs": len(heldout),
                   "world_size": world_size, "max_steps": steps, "reference": cfg.dpo.reference,
                   "deepspeed": args.deepspeed is not None}
        print(json.dumps(summary), flush=True)
        return summary
    with autocast_weight_cache(cfg.deepspeed.zero_stage != 3):  # see train.distributed.autocast_weight_cache
        with stop:  # SIGTERM / SIGUSR1: every rank saves at the same step boundary, then the run ends cleanly
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
        logger.close()
        if stop.stopped:
            if rank == 0:
                print(f"[dpo] stop signal: saved checkpoint-{trainer.state.global_step} in {rd.checkpoints}; "
                      f"relaunch to resume", flush=True)
            return None
        # Every rank runs the held-out forward through the wrapped model (ZeRO-3 needs all ranks to gather).
        pol_c, pol_r = completion_logps(trainer.model_wrapped, tokenizer, heldout, cfg.dpo.max_length,
                                        cfg.dpo.heldout_batch_size)
    metrics = preference_metrics(pol_c, pol_r, ref_c, ref_r, cfg.dpo.beta)
    metrics.update(train_pairs=len(train_pairs), steps=trainer.state.global_step)
    _write_export(trainer, init_from, rd.export, cfg.deepspeed.zero_stage, rank)
    if rank == 0:
        write_json(rd.root / "dpo_heldout.json", metrics, overwrite=True)
        rd.mark_done({"step": trainer.state.global_step, **metrics})
        print(f"[dpo] done: export at {rd.export}", flush=True)
    _barrier()
    return metrics if rank == 0 else None


register_dpo_config()


@hydra.main(version_base=None, config_path="../recipes/dpo", config_name="demo")
def main(dcfg: DictConfig) -> None:
    cfg: DPORunConfig = OmegaConf.to_object(dcfg)  # also runs the dataclasses' validation
    try:
        metrics = run(cfg, OmegaConf.to_yaml(dcfg, resolve=True))
    except RunDirLockedError as e:  # the same exit status as pretraining's (train.launch)
        print(f"[dpo] {e}", file=sys.stderr, flush=True)
        sys.exit(RunDirLockedError.exit_code)
    if metrics is not None:
        print(json.dumps(metrics, sort_keys=True), flush=True)


if __name__ == "__main__":
    sys.exit(main())
