"""slurm/stage.sbatch on a real one-node Slurm cluster on localhost (slurm/local_cluster.sh).

1. A 2-rank CPU pretraining job submitted through the template completes (DONE, export).
2. A job signalled mid-run with USR1 (as Slurm does before the time limit) checkpoints, is requeued under the
   same job id, and resumes from its checkpoint to the end. Its pre-emption save is made slower than torchrun's
   default 30 s shutdown timeout (slow_preempt_save/sitecustomize.py, on the job's PYTHONPATH, sleeps first,
   emulating a multi-GB ZeRO save): it still completes, because the template gives torchrun the signal lead as its shutdown timeout.

Installs Slurm from the Debian packages when it is missing (needs root); the daemons are stopped by PID.
"""
import re
from pathlib import Path

import pytest

from tests.scripts.slurm_cluster import (VENV, ensure_slurm_and_demo_data, finished, job_field, local_cluster,
                                         node_cpus, release_requeued, sh, submit, wait_for)

# One local cluster per test session, and the demo data the README demo test writes too: one xdist worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo_data")]

SLOW_SAVE_S = 40  # > torchrun's default 30 s shutdown timeout
# The slow pre-emption save is injected from outside the product: this folder's sitecustomize.py, on PYTHONPATH.
SLOW_SAVE_HOOK = Path(__file__).resolve().parent / "slow_preempt_save"
SLOW_SAVE_ENV = "SAMBAY_TEST_SLOW_PREEMPT_SAVE_S"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ensure_slurm_and_demo_data()
    state = tmp_path_factory.mktemp("slurm")
    with local_cluster(state) as env:
        yield env, state


def test_two_rank_pretraining_job_completes(cluster, tmp_path):
    env, state = cluster
    run_dir = tmp_path / "run"
    job, log = submit(env, state, "slurm_pretrain", run_dir, max_steps=3, save_every=0)
    final = wait_for(lambda: finished(env, job), 600, f"job {job} to finish", interval=2)
    text = log.read_text()
    assert final == "COMPLETED", text[-4000:]
    assert job_field(env, job, "ExitCode") == "0:0"
    assert (run_dir / "DONE").exists() and (run_dir / "export" / "config.json").exists()
    assert "2 node(s)" not in text and "1 node(s) x 2" in text
    assert f"{node_cpus(env)} CPUs per task" in text


def test_signalled_job_checkpoints_requeues_and_resumes(cluster, tmp_path):
    env, state = cluster
    run_dir = tmp_path / "run"
    max_steps = 12
    job, log = submit(env, state, "slurm_requeue", run_dir, max_steps=max_steps, save_every=3,
                      extra_env=f",{SLOW_SAVE_ENV}={SLOW_SAVE_S},PYTHONPATH={SLOW_SAVE_HOOK}")
    # Signal once the run is underway (its first periodic checkpoint exists), as Slurm would before the limit.
    wait_for(lambda: (run_dir / "checkpoints" / "latest").exists(), 600, "the first checkpoint", interval=1)
    assert not (run_dir / "DONE").exists(), "the run finished before it could be signalled; raise max_steps"
    sh("scancel", "--signal=USR1", "--batch", job, env=env)
    release_requeued(env, job)
    final = wait_for(lambda: finished(env, job), 900, f"job {job} to finish after the requeue", interval=2)
    text = log.read_text()
    assert final == "COMPLETED", text[-6000:]
    assert "got USR1" in text and "requeueing" in text
    assert f"{SLOW_SAVE_ENV}={SLOW_SAVE_S}: emulating a slow save" in text
    assert f"{node_cpus(env)} CPUs per task, save grace 270 s" in text
    stopped = re.search(r"\[train\] stop signal: saved step (\d+)", text)
    assert stopped, text[-6000:]
    resumed = re.search(r"\[train\] resumed \S+ at step (\d+)", text)
    assert resumed, text[-6000:]
    assert int(resumed.group(1)) == int(stopped.group(1)) < max_steps
    assert text.index(stopped.group(0)) < text.index(resumed.group(0))
    assert (run_dir / "DONE").exists()
    steps = [int(m) for m in re.findall(r'"step": (\d+)', (run_dir / "metrics.jsonl").read_text())]
    assert max(steps) == max_steps


def test_submit_chains_one_job_per_stage_then_the_report(cluster, tmp_path):
    env, state = cluster
    env = {**env, "WANDB_MODE": "disabled", "SAMBAY_VENV": str(VENV)}
    run_dir = tmp_path / "pipe"
    out = sh("bash", "slurm/submit.sh", f"--cpus-per-task={node_cpus(env)}", "--",
             "--config-name=smoke", f"run_dir={run_dir}", "nproc_per_node=2",
             "only=[pretrain,eval_pretrain]", env=env, timeout=300)
    jobs = dict(re.findall(r"submitted (\S+) as job (\d+)", out))
    assert list(jobs) == ["pretrain", "eval_pretrain"], out
    report_job = re.search(r"submitted the report as job (\d+)", out).group(1)
    # Checked at once: the first stage takes far longer than this to start up.
    assert job_field(env, jobs["eval_pretrain"], "Dependency").startswith(f"afterok:{jobs['pretrain']}")
    assert job_field(env, report_job, "Dependency").startswith(f"afterok:{jobs['eval_pretrain']}")
    for name, job in [*jobs.items(), ("report", report_job)]:
        final = wait_for(lambda: finished(env, job), 900, f"{name} job {job}", interval=2)
        logs = "\n".join(p.read_text() for p in (run_dir / "slurm").glob("*.out"))
        assert final == "COMPLETED", logs[-6000:]
    assert (run_dir / "pretrain" / "DONE").exists() and (run_dir / "pretrain" / "eval" / "eval.json").exists()
    assert (run_dir / "report.md").is_file() and "pretrain" in (run_dir / "report.md").read_text()
