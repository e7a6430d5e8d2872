"""Shared by the local-Slurm tests (tests/scripts/test_slurm_*_e2e.py): start and stop a cluster with
slurm/local_cluster.sh, submit a small demo pretraining stage through slurm/stage.sbatch, and watch jobs."""
import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "artifacts" / "data" / "demo"
VENV = Path(sys.executable).parents[1]
# A few fast steps of the demo model: 4 rows of 64 tokens per step over 2 ranks.
SMALL = ["data.seq_len=64", "data.global_batch_tokens=256", "data.micro_batch_rows=2",
         "trainer.log_every=1", "trainer.eval_every=0", "trainer.progress_bar=false"]
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def sh(*cmd, env=None, timeout=120, check=True) -> str:
    out = subprocess.run(list(cmd), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout


def ensure_slurm_and_demo_data() -> None:
    """Install Slurm if it is missing (skip where that is impossible) and prepare the demo data (idempotent)."""
    if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("Slurm is not installed and cannot be installed here (needs root and apt-get)")
        sh("bash", "slurm/local_cluster.sh", "install", timeout=600)
    if not (DATA / "DONE").exists():  # a few minutes the first time
        sh(sys.executable, "-m", "data.prepare", "--config-name=demo", timeout=1200)


@contextlib.contextmanager
def local_cluster(state: Path, nodes: int = 1):
    """A running cluster of ``nodes`` nodes with its state under ``state``; yields the clients' environment.
    Stopped (jobs, daemons, namespaces) however the body ends, and after a failed start too."""
    env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf"),
           "SLURM_LOCAL_PORT": str(random.randrange(20000, 30000, 2))}
    try:
        sh("bash", "slurm/local_cluster.sh", "start", str(state), "--nodes", str(nodes), env=env, timeout=120)
        yield env
    finally:
        subprocess.run(["bash", "slurm/local_cluster.sh", "stop", str(state)], cwd=REPO, env=env, timeout=120)


def job_field(env, job: str, key: str) -> str:
    out = sh("scontrol", "show", "job", job, env=env, check=False)
    m = re.search(rf"\b{key}=(\S+)", out)
    return m.group(1) if m else ""


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def finished(env, job: str) -> str:
    state = job_field(env, job, "JobState")
    return state if state in ENDED else ""


def node_cpus(env) -> int:
    """A node's CPUs as Slurm sees them; the template's default --cpus-per-task is more than this."""
    return int(sh("sinfo", "-h", "-N", "-o", "%c", env=env).split()[0])


def submit(env, state: Path, name: str, run_dir: Path, max_steps: int, save_every: int, nodes: int = 1,
           nproc_per_node: int = 2, extra_env: str = "") -> tuple[str, Path]:
    """sbatch a demo pretraining stage through slurm/stage.sbatch; returns the job id and its output file."""
    args = state / f"{name}.args"
    args.write_text("\n".join(["train.pretrain", "--config-name=demo", f"run.dir={run_dir}", f"run.name={name}",
                               f"trainer.max_steps={max_steps}", f"trainer.save_every={save_every}", *SMALL]) + "\n")
    log = state / f"{name}.out"
    job = sh("sbatch", "--parsable", f"--nodes={nodes}", f"--output={log}", f"--job-name={name}",
             f"--cpus-per-task={node_cpus(env)}",
             f"--export=ALL,NPROC_PER_NODE={nproc_per_node},SAMBAY_VENV={VENV},"
             f"RDZV_PORT={random.randrange(30000, 40000)},WANDB_MODE=disabled{extra_env}",
             "slurm/stage.sbatch", str(args), env=env).strip().split(";")[0]
    return job, log


def release_requeued(env, job: str) -> None:
    """Wait until ``job`` has been requeued once, then let it start again within seconds."""
    wait_for(lambda: job_field(env, job, "Restarts") == "1", 300, f"job {job} to be requeued", interval=1)
    # Slurm holds a requeued job back for ~2 minutes (BeginTime); release it sooner, but not within the second
    # of the requeue: slurmd refuses a launch whose credential is not newer (in whole seconds) than the one the
    # requeue revoked ("Job credential revoked"), and the job then ends FAILED without running.
    wait_for(lambda: job_field(env, job, "JobState") in ("PENDING", "RUNNING", "COMPLETED"), 120, "requeued state")
    if job_field(env, job, "JobState") == "PENDING":
        sh("scontrol", "update", f"JobId={job}", "StartTime=now+5", env=env)
