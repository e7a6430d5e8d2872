"""DPO of a SambaY SFT export with TRL's ``DPOTrainer``.

    torchrun --nproc_per_node=N -m train.dpo [--config-name demo] dpo.init_from=runs/sft/math/export [overrides]

Run directory (``run.dir``): ``config.yaml``, ``metrics.jsonl`` (step, loss, lr, grad_norm and TRL's
rewards/logps), ``checkpoints/checkpoint-N`` (HF Trainer / DeepSpeed; a relaunch resumes from the last one),
``on_policy_pairs.jsonl`` (when on-policy pairs are built), ``dpo_heldout.json`` (held-out reward margin and
preference accuracy, see ``train.eval_preference``), ``export/`` (HF layout with tokenizer and generation
config) and ``DONE`` last.
"""
from __future__ import annotations

import copy
import json
import os
import re
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from train.dpo_config import DPORunConfig, register_dpo_config


def _dist_env() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _init_process_group(world_size: int) -> None:
    """Start torch.distributed early (accelerate reuses it) so ranks can wait for rank 0's data building."""
    import torch.distributed as dist

    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def last_checkpoint_step(ckpt_dir: Path) -> int | None:
    """Global step of the newest complete ``checkpoint-N`` under ``ckpt_dir`` (None when there is none)."""
    from transformers.trainer_utils import get_last_checkpoint

    if not ckpt_dir.is_dir():
        return None
    last = get_last_checkpoint(str(ckpt_dir))
    return int(re.search(r"checkpoint-(\d+)$", last).group(1)) if last else None


def trainer_deepspeed_json(cfg: DPORunConfig, world_size: int, bf16: bool) -> dict | None:
    """DeepSpeed config for ``DPOConfig(deepspeed=...)``; None at ZeRO stage 0 (plain DDP: nothing to shard)."""
    from train.distributed import deepspeed_json

    if cfg.deepspeed.zero_stage == 0:
        return None
    ds = deepspeed_json(cfg.deepspeed, micro_batch_rows=cfg.dpo.per_device_batch_size,
                        grad_accum=cfg.dpo.gradient_accumulation_steps, world_size=world_size)
    ds["bf16"] = {"enabled": bf16}
    if cfg.deepspeed.zero_stage == 3:
        # trainer.save_model gathers the shards into one state dict (deps_feasibility.md section 3, gotcha 8).
        ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    return ds


def build_on_policy_pairs(model, tokenizer, cfg: DPORunConfig, data_dir: Path) -> list[dict]:
    """Sample k completions per training problem from the init model, grade them, pair right with wrong."""
    from data.preference import pairs_from_samples
    from train.eval_math import load_problems
    from train.generation import chat_prompt, generate
    from train.math_grader import grade

    op = cfg.dpo.on_policy
    problems = load_problems(op.problems or data_dir / "reasoning" / "train.jsonl", limit=op.num_problems or None)

    def generate_fn(user_prompts: list[str], k: int) -> list[list[str]]:
        sampling = copy.copy(op.sampling)
        sampling.num_samples = k
        return generate(model, tokenizer, [chat_prompt(tokenizer, p) for p in user_prompts], sampling, progress=True)

    return pairs_from_samples(problems, generate_fn, lambda c, a: grade(c, a).correct, k=op.sampling.num_samples,
                              seed=cfg.trainer.seed)


def _add_on_policy_pairs(cfg: DPORunConfig, offline: list[dict], model, tokenizer, run_dir: Path, data_dir: Path,
                         rank: int) -> list[dict]:
    """Offline pairs plus (or replaced by) on-policy pairs, which rank 0 builds once and saves in the run dir."""
    from data.jsonl import write_jsonl
    from data.preference import FIELDS
    from train.eval_preference import load_preference_pairs

    pairs = list(offline)
    if cfg.dpo.on_policy.enabled:
        if cfg.dpo.on_policy.mix == "replace":
            pairs = []
        path = run_dir / "on_policy_pairs.jsonl"
        if rank == 0 and not path.exists():  # a resumed run reuses the pairs it trained on
            built = build_on_policy_pairs(model, tokenizer, cfg, data_dir)
            write_jsonl(path, built)
            print(f"[dpo] built {len(built)} on-policy pairs -> {path}", flush=True)
        _barrier()
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
    """Train, score held-out pairs, export; returns the held-out metrics on rank 0 (None when already done)."""
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from data.atomic import atomic_write_text
    from data.tokenizer import load_tokenizer
    from train.eval_io import write_json
    from train.eval_preference import completion_logps, load_preference_pairs, preference_metrics
    from train.eval_tokenizer_check import check_same_tokenizer
    from train.metrics import MetricsLogger, truncate_after
    from train.model_build import load_export
    from train.run_dir import RunDir

    rank, world_size = _dist_env()
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
    _init_process_group(world_size)
    if rank == 0:
        rd.create()
        rd.write_config(config_yaml)
    _barrier()

    torch.manual_seed(cfg.trainer.seed)
    on_gpu = torch.cuda.is_available()
    model = load_export(init_from)
    tokenizer = load_tokenizer(init_from)
    if on_gpu:
        model = model.cuda()
    train_pairs = _add_on_policy_pairs(cfg, offline, model, tokenizer, rd.root, data_dir, rank)
    # Held-out reference log-probs come from the init model, before any update (same for both reference modes).
    ref_c, ref_r = completion_logps(model, tokenizer, heldout, cfg.dpo.max_length, cfg.dpo.heldout_batch_size)

    precision = cfg.deepspeed.precision
    bf16 = precision == "bf16" or (precision == "auto" and on_gpu)
    steps = cfg.trainer.max_steps
    ds_json = trainer_deepspeed_json(cfg, world_size, bf16)
    if ds_json is not None and not on_gpu and cfg.deepspeed.skip_shm_build:
        from train.distributed import _skip_cpu_shm_build

        # Same CPU cold-start saving as the DeepSpeed trainer (see train.distributed): plain gloo collectives.
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.abspath(os.path.join(".cache", "torch_extensions")))
        _skip_cpu_shm_build()
    args = DPOConfig(
        output_dir=str(rd.checkpoints), max_steps=steps, per_device_train_batch_size=cfg.dpo.per_device_batch_size,
        gradient_accumulation_steps=cfg.dpo.gradient_accumulation_steps, learning_rate=cfg.dpo.lr,
        lr_scheduler_type=cfg.dpo.lr_scheduler, warmup_steps=cfg.dpo.warmup_steps, weight_decay=cfg.dpo.weight_decay,
        max_grad_norm=cfg.deepspeed.grad_clip, beta=cfg.dpo.beta, loss_type=list(cfg.dpo.loss_type),
        loss_weights=list(cfg.dpo.loss_weights) if cfg.dpo.loss_weights else None,
        precompute_ref_log_probs=cfg.dpo.reference == "precomputed", max_length=cfg.dpo.max_length,
        truncation_mode=cfg.dpo.truncation_mode, logging_steps=cfg.trainer.log_every, save_strategy="steps",
        save_steps=cfg.trainer.save_every or steps, save_total_limit=cfg.trainer.keep_last, seed=cfg.trainer.seed,
        data_seed=cfg.trainer.seed, report_to="none", use_cpu=not on_gpu, bf16=bf16,
        # TRL defaults to gradient checkpointing on and bf16 on: both set explicitly (deps_feasibility.md s.3).
        gradient_checkpointing=cfg.dpo.gradient_checkpointing, disable_tqdm=not cfg.trainer.progress_bar,
        deepspeed=ds_json, dataloader_num_workers=0,
    )
    wandb_id = rd.wandb_id.read_text().strip() if rank == 0 and rd.wandb_id.exists() else None
    resume_step = last_checkpoint_step(rd.checkpoints)
    if rank == 0 and resume_step is not None:
        truncate_after(rd.metrics, resume_step)
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
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args,
                         train_dataset=shared_train_dataset(train_pairs, rd.root, rank), processing_class=tokenizer,
                         callbacks=[LogToRunDir()])
    if cfg.trainer.dry_run:
        summary = {"dry_run": True, "train_pairs": len(train_pairs), "heldout_pairs": len(heldout),
                   "world_size": world_size, "max_steps": steps, "reference": cfg.dpo.reference,
                   "deepspeed": args.deepspeed is not None}
        print(json.dumps(summary), flush=True)
        return summary
    trainer.train(resume_from_checkpoint=resume_step is not None)
    logger.close()

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
    metrics = run(cfg, OmegaConf.to_yaml(dcfg, resolve=True))
    if metrics is not None:
        print(json.dumps(metrics, sort_keys=True), flush=True)


if __name__ == "__main__":
    sys.exit(main())
