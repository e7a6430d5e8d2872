"""Process-group setup for torchrun / Slurm / plain ``python -m``, the DeepSpeed JSON config, small collectives."""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from train.config import DeepSpeedConfig


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


def init_distributed(cfg: DeepSpeedConfig) -> DistInfo:
    """Initialise torch.distributed through DeepSpeed (NCCL on GPU, gloo on CPU), also for world size 1."""
    import deepspeed

    _env_from_slurm()
    if "RANK" not in os.environ:  # plain `python -m train.X`: a one-process group
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    # Cache any op DeepSpeed JIT-builds in the checkout instead of ~/.cache.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.abspath(os.path.join(".cache", "torch_extensions")))
    if not use_cuda and cfg.skip_shm_build:
        _skip_cpu_shm_build()
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo", auto_mpi_discovery=False)
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)


def _skip_cpu_shm_build() -> None:
    """Skip DeepSpeed's JIT build of its CPU shared-memory all-reduce op.

    Why: on CPU ``deepspeed.init_distributed`` compiles ``deepspeed_shm_comm`` (30-45 s on 2 cores) at every
    cold start; without it DeepSpeed falls back to plain gloo collectives, which is what tests and the CPU
    demo need. This replaces a private function (DeepSpeed 0.19), so it is guarded: if the module layout
    changes we leave DeepSpeed alone (the op is then built once and cached in TORCH_EXTENSIONS_DIR).
    ``sys.modules`` is used because ``deepspeed.comm.torch`` as an attribute is the torch package.
    """
    import deepspeed.comm.torch  # noqa: F401  (registers the module in sys.modules)

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


def deepspeed_json(cfg: DeepSpeedConfig, *, micro_batch_rows: int, grad_accum: int, world_size: int) -> dict:
    """The DeepSpeed config dict.

    Parameters, gradients and optimizer states stay fp32 in DeepSpeed; bf16 is applied as autocast in the
    trainer's forward. This keeps the SSM parameters (A_log, D) in fp32 under bf16, which DeepSpeed's bf16
    mode (it casts the whole module) would not, at the cost of fp32 gradient communication.
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
    out.update(dict(cfg.extra))
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is set on at least one rank (every rank gets the same answer)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(t).item() > 0)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
