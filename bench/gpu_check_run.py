"""How bench/gpu_check.py runs a part's process: its environment (offline, caches in the work dir, torch.compile's
recompiles logged to a file of the part's own), a command under a time limit whose whole process group is killed
past it, and the failure that carries what was measured before. Stdlib only: the driver imports this before the
env part has said whether the stages' packages import here.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class StageFailed(RuntimeError):
    """An entry point exited non-zero or ran past its limit; the message carries its log's tail, ``figures`` what
    was measured before (bench/gpu_check.py reports them with the failure)."""

    def __init__(self, message: str, figures: dict | None = None):
        super().__init__(message)
        self.figures = figures or {}


def recompile_log(work: Path, name: str) -> Path:
    return work / f"recompiles_{name}.log"


def child_env(work: Path, name: str) -> dict:
    """Offline, no W&B (not in the GPU image), caches inside the work dir, torch.compile's recompiles (and the
    reasons) logged to :func:`recompile_log` of the part ``name``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HF_DATASETS_CACHE=str(work / "hf_cache"),
               TORCH_EXTENSIONS_DIR=str(work / "torch_extensions"), TORCH_LOGS="recompiles",
               TORCH_LOGS_OUT=str(recompile_log(work, name)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env.pop("TRITON_INTERPRET", None)  # the stages run the real kernels (or pure PyTorch on CPU)
    return env


def run_logged(cmd: list[str], log: Path, limit_s: float, work: Path) -> tuple[str, float, str | None]:
    """Run ``cmd`` from the repo root with its output in ``log`` (named after the part); returns (output, seconds,
    None) or, when it failed, (output, seconds, why). Past ``limit_s`` its whole process group is killed with
    SIGKILL: torchrun's worker holds the GPU's memory, and the trainer answers SIGTERM by saving a checkpoint."""
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(work, log.stem), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, limit_s))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    text, seconds = log.read_text(errors="replace"), time.perf_counter() - start
    if rc == 0:
        return text, seconds, None
    why = f"ran past its {limit_s:.0f} s limit" if rc is None else f"exited with {rc}"
    return text, seconds, f"{log.stem} {why}; the end of {log}:\n{text[-3000:]}"


def must_finish(result: tuple[str, float, str | None], figures: dict | None = None) -> tuple[str, float]:
    """(output, seconds) of a run that finished; else :class:`StageFailed` carrying ``figures``."""
    text, seconds, why = result
    if why:
        raise StageFailed(why, figures)
    return text, seconds


