"""Process-group setup for torchrun / Slurm / plain ``python -m``, the DeepSpeed JSON config, small collectives."""
from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import deepspeed
import torch
import torch.distributed as dist

from train.config import DeepSpeedConfig
from train.runtime.launcher_death import exit_with_launcher


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env_from_slurm() -> None:
    """``srun -n N python -m train.X`` (no torchrun): take ranks from Slurm's variables."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or "SLURM_NTASKS" not in os.environ:
        return
    if int(os.environ["SLURM_NTASKS"]) <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ.setdefault("MASTER_PORT", "29500")
    if "MASTER_ADDR" not in os.environ:
        raise RuntimeError("srun without torchrun: export MASTER_ADDR (the first node's hostname) in the sbatch script")


def select_device() -> tuple[int, torch.device]:
    """This process's device: ``cuda:LOCAL_RANK`` made the current CUDA device, else the CPU.

    Must run before the first collective and before any ``.cuda()``: NCCL and ``.cuda()`` use the current
    device, which is cuda:0 on every rank until it is set.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.cuda.is_available():
        return local_rank, torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return local_rank, torch.device("cuda", local_rank)


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this container in cores (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``); None without one. Read because a quota does not show in the CPU affinity: a container
    limited to 2 cores on a 64-core host sees 64 CPUs, and 64 threads fighting over 2 cores run many times slower."""
    v2 = root / "cpu.max"
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu"
        quota = int((v1 / "cpu.cfs_quota_us").read_text())
        return None if quota <= 0 else quota / int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None


def rank_cpu_threads(root: Path = CGROUP_ROOT) -> int:
    """CPU threads for this rank: the cores this process may run on (its CPU affinity, capped by a cgroup quota)
    shared evenly among the node's ranks (torchrun's ``LOCAL_WORLD_SIZE``), at least 1."""
    cores = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def set_cpu_threads(device: torch.device, local_rank: int, cgroup_root: Path = CGROUP_ROOT) -> int:
    """On a CPU device without ``OMP_NUM_THREADS``, set torch's thread count to :func:`rank_cpu_threads` (an explicit
    ``OMP_NUM_THREADS`` is left alone: torchrun sets it to 1 for nproc > 1, a user may set any value); returns the
    thread count in force. Logged by local rank 0.

    Why: torch's own default counts the host's cores, not the ones this process may use (affinity, cgroup quota),
    and a rank whose threads outnumber its cores runs many times slower than one with the right count.
    """
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(rank_cpu_threads(cgroup_root))
        how = "from the CPU affinity, cgroup quota and LOCAL_WORLD_SIZE (OMP_NUM_THREADS unset)"
    else:
        how = (f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}" if "OMP_NUM_THREADS" in os.environ
               else "torch's default")
    threads = torch.get_num_threads()
    if local_rank == 0:
        print(f"[distributed] {threads} CPU thread(s) per rank, {how}", flush=True)
    return threads


def prepare_deepspeed_env(cfg: DeepSpeedConfig, device: torch.device) -> None:
    """Where DeepSpeed caches its JIT-built ops, and the CPU shared-memory op skip (see below)."""
    # Cache any op DeepSpeed JIT-builds (cpu_adam for offload) in the checkout instead of ~/.cache.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.abspath(os.path.join(".cache", "torch_extensions")))
    if device.type == "cpu" and cfg.skip_shm_build:
        _skip_cpu_shm_build()


def init_distributed(cfg: DeepSpeedConfig) -> DistInfo:
    """Initialise torch.distributed through DeepSpeed (NCCL on GPU, gloo on CPU), also for world size 1."""
    exit_with_launcher()  # a rank whose torchrun agent died must not train on (see train/runtime/launcher_death.py)
    _env_from_slurm()
    if "RANK" not in os.environ:  # plain `python -m train.X`: a one-process group
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    local_rank, device = select_device()
    set_cpu_threads(device, local_rank)
    prepare_deepspeed_env(cfg, device)
    if not dist.is_initialized():
        timeout = timedelta(seconds=cfg.collective_timeout_s)
        _default_group_timeout(timeout)
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", auto_mpi_discovery=False,
                                   timeout=timeout)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)


def _default_group_timeout(timeout: timedelta) -> None:
    """Make ``timeout`` torch's default for every process group created from now on in this process.

    Why: the world group gets ``timeout`` from ``init_distributed``, but DeepSpeed (its clone of the world group
    that ZeRO reduces over) and accelerate create further groups with ``torch.distributed.new_group(ranks)`` and
    no timeout, which falls back to torch's 30-minute default: a node that went silent would then hold the others
    for 30 minutes in a ZeRO reduction (tests/train/test_multinode_e2e.py freezes one node to check). Neither
    library takes a timeout for its groups, so torch's default, read at group creation, is the one knob; it is
    set once, before any group exists.
    """
    dist.distributed_c10d.default_pg_timeout = timeout
    if dist.distributed_c10d.default_pg_nccl_timeout is not None:
        dist.distributed_c10d.default_pg_nccl_timeout = timeout


def _skip_cpu_shm_build() -> None:
    """Skip DeepSpeed's JIT build of its CPU shared-memory all-reduce op.

    Why: on CPU ``deepspeed.init_distributed`` compiles ``deepspeed_shm_comm`` (30-45 s on 2 cores) at every
    cold start; without it DeepSpeed falls back to plain gloo collectives, which is what tests and the CPU
    demo need. This replaces a private function (DeepSpeed 0.19), so it is guarded: if the module layout
    changes we leave DeepSpeed alone (the op is then built once and cached in TORCH_EXTENSIONS_DIR).
    ``sys.modules`` is used because ``deepspeed.comm.torch`` as an attribute is the torch package (importing
    ``deepspeed`` has loaded the module).
    """
    module = sys.modules.get("deepspeed.comm.torch")
    if module is not None and callable(getattr(module, "build_shm_op", None)):
        module.build_shm_op = lambda: None


def resolve_precision(cfg: DeepSpeedConfig, device: torch.device) -> torch.dtype:
    """Compute dtype: bf16 on GPU and fp32 on CPU for ``auto``."""
    if cfg.precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if cfg.precision == "bf16":
        return torch.bfloat16
    if cfg.precision == "fp32":
        return torch.float32
    raise ValueError(f"deepspeed.precision={cfg.precision!r}: expected auto, bf16 or fp32 (fp16 is not supported)")


def bf16_comm_modules(model: torch.nn.Module) -> list[str]:
    """Import paths of the model's ``nn.Linear`` / ``nn.Conv1d`` classes, subclasses included.

    For ``torch_autocast.lower_precision_safe_modules``: DeepSpeed matches module classes exactly, so its
    default list would leave e.g. ``OutProj`` (an ``nn.Linear``) communicating its gradients in fp32.
    """
    classes = {type(m) for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d))}
    return sorted(f"{c.__module__}.{c.__name__}" for c in classes)


def deepspeed_json(cfg: DeepSpeedConfig, *, micro_batch_rows: int, grad_accum: int, world_size: int,
                   compute_dtype: torch.dtype, bf16_modules: list[str] | None = None) -> dict:
    """The DeepSpeed config dict; ``compute_dtype`` comes from :func:`resolve_precision`, ``bf16_modules`` from
    :func:`bf16_comm_modules` (None: DeepSpeed's default classes).

    bf16 uses DeepSpeed's ``torch_autocast`` mode, not its ``bf16`` mode. Why: ``bf16`` mode casts the whole
    module to bf16; the model's ``_apply`` override then turns A_log / D / the lambdas back to fp32 and ZeRO's
    flattening promotes the mixed group to fp32, so everything would run (and be stored) in fp32, and the SSM
    parameters must not be bf16 anyway. ``torch_autocast`` keeps every parameter and the optimizer's master
    weights in fp32, runs the forward under ``torch.autocast(bf16)`` inside the engine (so the SSM scan and
    the parameters it reads stay fp32; only autocast's matmul-class ops run in bf16), and marks the weights
    of ``nn.Linear`` / ``nn.Conv1d`` with ``comm_dtype=bf16``: ZeRO 1-3 reduce (and ZeRO-3 all-gathers)
    those in bf16 and the vector-like fp32 parameters in fp32. The trainer must not open its own autocast
    around the engine: DeepSpeed would then disable autocast inside unless this section is present.
    """
    if cfg.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"deepspeed.zero_stage={cfg.zero_stage}: expected 0, 1, 2 or 3")
    if cfg.offload_optimizer and cfg.zero_stage == 0:
        raise ValueError("deepspeed.offload_optimizer=true needs deepspeed.zero_stage >= 1")
    if cfg.offload_param and cfg.zero_stage != 3:
        raise ValueError("deepspeed.offload_param=true needs deepspeed.zero_stage=3")
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.zero_stage > 0:
        zero.update(overlap_comm=cfg.overlap_comm, contiguous_gradients=cfg.contiguous_gradients,
                    reduce_bucket_size=cfg.reduce_bucket_size)
    if cfg.zero_stage in (1, 2):
        zero["allgather_bucket_size"] = cfg.allgather_bucket_size
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if cfg.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    out = {
        "train_batch_size": micro_batch_rows * grad_accum * world_size,
        "train_micro_batch_size_per_gpu": micro_batch_rows,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "steps_per_print": 10**12,  # the trainer logs; silence DeepSpeed's own step prints
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if compute_dtype == torch.bfloat16:
        out["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
        if bf16_modules is not None:
            out["torch_autocast"]["lower_precision_safe_modules"] = list(bf16_modules)
    elif compute_dtype != torch.float32:
        raise ValueError(f"compute dtype {compute_dtype}: expected torch.bfloat16 or torch.float32")
    out.update(dict(cfg.extra))
    return out


@contextlib.contextmanager
def autocast_weight_cache(enabled: bool) -> Iterator[None]:
    """Turn autocast's cache of low-precision weight copies on or off for the block (restored after).

    Why off under ZeRO-3: autocast keeps the bf16 copy of every fp32 leaf weight it casts until the outermost
    autocast region ends, i.e. the whole forward. ZeRO-3 gathers a layer's weights, runs it and frees them,
    but the cache would keep a bf16 copy of every gathered weight alive: the full model per GPU. DeepSpeed's
    own ``torch.autocast`` inside the engine takes the cache setting in force when it is entered.
    """
    previous = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(enabled)
    try:
        yield
    finally:
        torch.set_autocast_cache_enabled(previous)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is set on at least one rank (every rank gets the same answer)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag  # nothing to agree with: no tensor, no device touched
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(t).item() > 0)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def init_distributed_if_needed(cfg: DeepSpeedConfig) -> DistInfo:
    """:func:`init_distributed` for several processes or for DeepSpeed (ZeRO >= 1 needs a process group even for
    one process); a single process without DeepSpeed gets only its device (:func:`select_device`) and no group.

    For runs driven by the HF / TRL Trainer (DPO): accelerate reuses a group started here and, like it, leaves a
    single plain process without one, so an in-process caller (the tests) keeps no global process-group state.
    """
    if launch_world_size() > 1 or cfg.zero_stage > 0:
        return init_distributed(cfg)
    exit_with_launcher()  # as in init_distributed: a one-rank torchrun job must not outlive its agent either
    local_rank, device = select_device()
    set_cpu_threads(device, local_rank)
    return DistInfo(rank=0, world_size=1, local_rank=local_rank, device=device)


def hf_trainer_deepspeed_json(cfg: DeepSpeedConfig, *, micro_batch_rows: int, grad_accum: int, world_size: int,
                              compute_dtype: torch.dtype, bf16_modules: list[str] | None = None) -> dict | None:
    """:func:`deepspeed_json` for ``TrainingArguments(deepspeed=...)`` (the HF / TRL Trainer); None at ZeRO stage 0
    (plain DDP: nothing to shard).

    The same precision and ZeRO settings as the DeepSpeed trainer, plus what the HF Trainer needs: with optimizer
    offload an ``optimizer`` section (DeepSpeed then builds DeepSpeedCPUAdam; it refuses the Trainer's torch
    AdamW with offload) whose ``auto`` values the Trainer fills in; under ZeRO-3 the gathered weights in each
    ``checkpoint-N`` (without the flag the Trainer writes an empty state dict there and warns at every save).
    """
    if cfg.zero_stage == 0:
        return None
    ds = deepspeed_json(cfg, micro_batch_rows=micro_batch_rows, grad_accum=grad_accum, world_size=world_size,
                        compute_dtype=compute_dtype, bf16_modules=bf16_modules)
    if cfg.offload_optimizer:
        ds["optimizer"] = {"type": "AdamW", "params": {k: "auto" for k in ("lr", "betas", "eps", "weight_decay")}}
    if cfg.zero_stage == 3:
        ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    return ds


def launch_world_size() -> int:
    """The number of processes this job was launched with (torchrun's ``WORLD_SIZE``, else Slurm's tasks), read
    from the environment without starting anything."""
    return int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
