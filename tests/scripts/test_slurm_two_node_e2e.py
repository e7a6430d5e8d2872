"""slurm/stage.sbatch on a real two-node Slurm cluster on this machine (issue 24, item 4).

`slurm/local_cluster.sh start DIR --nodes 2` runs one slurmd per node, each in its own network namespace (its own
address on a bridge), UTS namespace (hostname = node name) and /etc/hosts; slurmctld stays on the host. So the two
nodes share the filesystem, as a cluster's shared filesystem, and nothing else that the launch relies on: srun
starts one task per node, torchrun's c10d rendezvous crosses the bridge to the first node, and a rank that looked
for its peers at 127.0.0.1 or at this machine's own hostname would not find them.

1. A pretraining stage with one rank per node (`sbatch --nodes=2`) completes: ranks 0 and 1 on different nodes,
   world size 2, one metrics file with each step once, one checkpoint set, one export, one run-lock holder.
2. The same stage signalled mid-run with USR1 (Slurm's warning before the time limit): both nodes' ranks stop at the
   same step, one checkpoint is written, the job is requeued under its id, comes back on two nodes, resumes from
   that checkpoint and ends with the losses of the uninterrupted run of 1. (same tolerance as the torchrun
   two-node tests, tests/train/test_multinode_e2e.py).

Skips where the machine cannot make the namespaces (not root, no `ip`/`nsenter`/`unshare`); the cluster is torn down
(jobs, daemons, namespaces, bridge) however a test ends.
"""
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.scripts.slurm_cluster import (ensure_slurm_and_demo_data, finished, job_field, local_cluster,
                                         release_requeued, sh, submit, wait_for)
from tests.train.builders import metrics

# One local cluster at a time, and the demo data the README demo test writes too: one xdist worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo_data")]

NODES = 2
# Long enough that the signal, sent once step 2 is logged, lands well before the end (~0.5 s a step here).
MAX_STEPS, SAVE_EVERY = 40, 10
# Test-only hook on the job's PYTHONPATH: each rank prints its rank, world size and host name.
NODE_REPORT = f",PYTHONPATH={Path(__file__).resolve().parent / 'node_report'}"
REPORT = re.compile(r"\[node-report\] rank=(\d+) world=(\d+) host=(\S+)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = [tool for tool in ("ip", "nsenter", "unshare") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        pytest.skip(f"two local Slurm nodes need root and ip/nsenter/unshare (uid {os.geteuid()}, "
                    f"missing: {missing or 'none'})")
    ensure_slurm_and_demo_data()
    state = tmp_path_factory.mktemp("slurm2")
    with local_cluster(state, nodes=NODES) as env:
        yield env, state


def run_job(env, state: Path, name: str, run_dir: Path) -> tuple[str, Path]:
    return submit(env, state, name, run_dir, max_steps=MAX_STEPS, save_every=SAVE_EVERY, nodes=NODES,
                  nproc_per_node=1, extra_env=NODE_REPORT)


@pytest.fixture(scope="module")
def uninterrupted(cluster, tmp_path_factory):
    env, state = cluster
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    job, log = run_job(env, state, "two_nodes", run_dir)
    final = wait_for(lambda: finished(env, job), 600, f"job {job} to finish", interval=2)
    return job, final, log.read_text(), run_dir


def ranks_by_host(text: str) -> dict[str, set[tuple[int, int]]]:
    """Host name -> the (rank, world size) pairs reported there."""
    hosts: dict[str, set[tuple[int, int]]] = {}
    for rank, world, host in REPORT.findall(text):
        hosts.setdefault(host, set()).add((int(rank), int(world)))
    return hosts


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in metrics(run_dir) if "loss" in r]


def test_two_node_pretraining_job_runs_one_rank_on_each_node(cluster, uninterrupted):
    env, _ = cluster
    job, final, text, run_dir = uninterrupted
    assert final == "COMPLETED", text[-4000:]
    assert job_field(env, job, "ExitCode") == "0:0"
    assert job_field(env, job, "NodeList") == "node[0-1]"
    assert f"{NODES} node(s) x 1, rendezvous node0:" in text
    assert ranks_by_host(text) == {"node0": {(0, 2)}, "node1": {(1, 2)}} or \
        ranks_by_host(text) == {"node0": {(1, 2)}, "node1": {(0, 2)}}, text[-4000:]
    assert '"world_size": 2' in text
    steps = [r["step"] for r in metrics(run_dir)]
    assert steps == list(range(1, MAX_STEPS + 1)), "each step logged once, by one rank"
    assert sorted(p.name for p in run_dir.glob("metrics*")) == ["metrics.jsonl"]
    saved = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name != "latest")
    assert saved and all(int(n.removeprefix("step")) % SAVE_EVERY == 0 for n in saved), saved
    assert (run_dir / "DONE").exists() and (run_dir / "export" / "config.json").is_file()
    assert not [p for p in run_dir.iterdir() if p.name.startswith("export") and p.name != "export"]
    assert len((run_dir / "run.lock").read_text().splitlines()) == 1


def test_signalled_two_node_job_saves_once_requeues_and_resumes_with_the_same_losses(cluster, uninterrupted,
                                                                                      tmp_path):
    env, state = cluster
    run_dir = tmp_path / "run"
    job, log = run_job(env, state, "two_nodes_requeue", run_dir)
    # Signal once training is underway, as Slurm would before the time limit.
    wait_for(lambda: logged_steps(run_dir) >= 2, 600, "step 2", interval=0.5)
    sh("scancel", "--signal=USR1", "--batch", job, env=env)
    wait_for(lambda: job_field(env, job, "Restarts") == "1", 300, f"job {job} to be requeued", interval=1)
    latest_at_stop = (run_dir / "checkpoints" / "latest").read_text().strip()
    release_requeued(env, job)
    final = wait_for(lambda: finished(env, job), 600, f"job {job} to finish after the requeue", interval=2)
    text = log.read_text()
    assert final == "COMPLETED", text[-6000:]
    assert "got USR1" in text and "requeueing" in text
    assert f"restart 1: {NODES} node(s) x 1" in text
    before, after = text.split("restart 1:", 1)
    for part in (before, after):  # both launches ran one rank on each node
        assert set(ranks_by_host(part)) == {"node0", "node1"}, part[-4000:]
    # Both nodes' ranks agreed on the stop step and saved it once: a rank left behind would hang in the save's
    # collectives and no complete checkpoint would be named by `latest`. (The step's exit status is not 0: each
    # torchrun agent exits 1 after its SIGTERM, once its rank has exited.)
    stops = re.findall(r"\[train\] stop signal: saved step (\d+)", text)
    assert len(stops) == 1, text[-6000:]
    stop = int(stops[0])
    assert 2 <= stop < MAX_STEPS, "the run finished before the signal landed; raise MAX_STEPS"
    assert latest_at_stop == f"step{stop:08d}"
    resumed = re.search(r"\[train\] resumed \S+ at step (\d+)", after)
    assert resumed and int(resumed.group(1)) == stop, after[-6000:]
    assert (run_dir / "DONE").exists()
    got, want = losses(run_dir), losses(uninterrupted[3])
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, MAX_STEPS + 1))
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=2e-5, atol=1e-6)
