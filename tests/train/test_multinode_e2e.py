"""Two nodes on one machine (issue 24): two torchrun agents with ``--nnodes=2``, one rank each, sharing one run
directory as a cluster's shared filesystem would. Each agent is its own process tree, exactly as on two hosts; only
the network is the loopback. Covered: both rendezvous styles (static ``--node_rank`` + ``--master_addr``, and the
c10d backend), pretraining, SFT and DPO, a node killed mid-run, and a stop signal that reaches one node only.

"Equal" means the per-step losses of a one-node run with the same total number of ranks (2), with the tolerance of
the rank-count tests (tests/train/test_resume_world_size_e2e.py); with two ranks in both runs the reductions add
the same two numbers, so in practice they are bit-equal.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from data.dir_lock import RunLock
from tests.train.builders import (REPO, TINY, alive, base_overrides, descendants, env, free_port, metrics,
                                  wait_gone)

pytestmark = pytest.mark.slow
# How long the surviving node may take to exit after the other node died (docs/clusters.md, "When a node dies"):
# on one machine the dead rank's sockets close at once and gloo fails the pending collective; the bound leaves room
# for a loaded 2-core CI machine.
DEAD_NODE_EXIT_S = 90
PRETRAIN = ["trainer.max_steps=8", "trainer.save_every=2", "trainer.log_every=1", "data.global_batch_tokens=128",
            "data.micro_batch_rows=1", "deepspeed.zero_stage=2", *TINY]


def _torchrun(nodes: int, node_rank: int, port: int, rdzv: str) -> list[str]:
    """The launcher part of a command: one node of two (static or c10d rendezvous), or one node with 2 ranks."""
    head = [sys.executable, "-m", "torch.distributed.run"]
    if nodes == 1:
        return head + ["--standalone", "--nproc_per_node=2"]
    if rdzv == "static":
        return head + ["--nnodes=2", "--nproc_per_node=1", f"--node_rank={node_rank}", "--master_addr=127.0.0.1",
                       f"--master_port={port}"]
    return head + ["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
                   f"--rdzv_id=sambay-{port}"]


class Node(subprocess.Popen):
    """One node's torchrun agent, its output in temporary files: a pipe nobody reads while the test waits for
    the agent to exit would fill up and block the agent's last writes (its failure report)."""

    def __init__(self, cmd: list[str]):
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        super().__init__(cmd, cwd=REPO, env=env(), text=True, stdout=self.out, stderr=self.err)

    def output(self) -> tuple[str, str]:
        self.out.seek(0)
        self.err.seek(0)
        return self.out.read(), self.err.read()


def launch(stage: list[str], nodes: int = 2, rdzv: str = "static") -> list[Node]:
    """Start ``nodes`` agents running ``stage`` (``-m train.X overrides...``); one agent per node."""
    port = free_port()
    return [Node(_torchrun(nodes, r, port, rdzv) + stage) for r in range(nodes)]


def finish(procs: list[Node], timeout: float = 500) -> list[tuple[int, str, str]]:
    out = []
    try:
        for p in procs:
            p.wait(timeout=timeout)
            out.append((p.returncode, *p.output()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def run_ok(stage: list[str], nodes: int = 2, rdzv: str = "static") -> list[tuple[int, str, str]]:
    results = finish(launch(stage, nodes, rdzv))
    for node, (code, out, err) in enumerate(results):
        assert code == 0, f"node {node} exited {code}\n{out[-2000:]}\n{err[-4000:]}"
    return results


def losses(run_dir: Path, key: str = "loss") -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in metrics(run_dir) if key in r]


def assert_same_losses(got, want):
    assert [s for s, _ in got] == [s for s, _ in want]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=2e-5, atol=1e-6)


def pretrain(run_dir: Path, shards: Path, *extra: str) -> list[str]:
    return ["-m", "train.pretrain", "run.name=nodes", f"run.dir={run_dir}",
            f"data.sources=[{{path:{shards},weight:1.0}}]", *PRETRAIN, *extra]


def assert_one_run_directory(run_dir: Path, export: bool = True) -> None:
    """What two nodes wrote in the shared directory: one metrics file with each step once, one checkpoint set, one
    export, and one lock holder: global rank 0 alone takes ``run.lock`` (a second holder would have been refused
    and its node would have exited non-zero), and the lock is free once the run ends."""
    steps = [r["step"] for r in metrics(run_dir)]
    assert steps == sorted(set(steps)), f"steps logged more than once: {steps}"
    assert sorted(p.name for p in run_dir.glob("metrics*")) == ["metrics.jsonl"]
    assert (run_dir / "DONE").exists()
    assert len((run_dir / "run.lock").read_text().splitlines()) == 1
    with RunLock(run_dir / "run.lock"):
        pass
    if export:
        assert (run_dir / "export" / "config.json").is_file()
        assert not [p for p in run_dir.iterdir() if p.name.startswith("export") and p.name != "export"]


@pytest.fixture(scope="module")
def one_node(pretrain_shards, tmp_path_factory):
    """The reference: one node, two ranks, never interrupted."""
    run_dir = tmp_path_factory.mktemp("one_node") / "run"
    run_ok(pretrain(run_dir, pretrain_shards), nodes=1)
    return run_dir


def test_pretrain_on_two_nodes_static_rendezvous_equals_one_node(one_node, pretrain_shards, tmp_path):
    run_dir = tmp_path / "run"
    run_ok(pretrain(run_dir, pretrain_shards), rdzv="static")
    assert_same_losses(losses(run_dir), losses(one_node))
    assert_one_run_directory(run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == \
        sorted(p.name for p in (one_node / "checkpoints").iterdir())


def test_sft_on_two_nodes_c10d_rendezvous_equals_one_node(sft_setup, tmp_path):
    runs = {}
    for nodes in (1, 2):
        run_dir = tmp_path / f"nodes{nodes}"
        # Two ranks: a global batch divisible by both stages' rows (32 and 48 tokens, 2 rows per rank).
        overrides = [o for o in base_overrides(sft_setup, run_dir) if not o.startswith("data.global_batch_tokens")]
        run_ok(["-m", "train.sft", *overrides, "data.global_batch_tokens=384", "deepspeed.zero_stage=2"],
               nodes=nodes, rdzv="c10d")
        runs[nodes] = run_dir
    for stage in ("one", "two"):
        assert_same_losses(losses(runs[2] / stage), losses(runs[1] / stage))
        assert_one_run_directory(runs[2] / stage)


def test_dpo_on_two_nodes_equals_one_node(dpo_tiny, tmp_path):
    data, export = dpo_tiny
    runs = {}
    for nodes in (1, 2):
        run_dir = tmp_path / f"nodes{nodes}"
        run_ok(["-m", "train.dpo", f"dpo.init_from={export}", f"dpo.data_dir={data}", f"run.dir={run_dir}",
                "deepspeed=zero2", "trainer.max_steps=4", "trainer.save_every=2", "trainer.log_every=1",
                "trainer.progress_bar=false", "dpo.train_limit=8", "dpo.heldout_limit=4",
                "dpo.per_device_batch_size=1", "dpo.max_length=512", "wandb.mode=disabled",
                "dpo.on_policy.enabled=false"], nodes=nodes)
        runs[nodes] = run_dir
    assert_same_losses(losses(runs[2]), losses(runs[1]))
    assert_one_run_directory(runs[2])
    complete = sorted(p.name for p in (runs[2] / "checkpoints").glob("checkpoint-*"))
    assert complete == sorted(p.name for p in (runs[1] / "checkpoints").glob("checkpoint-*"))


def _wait_for_checkpoint(run_dir: Path, procs: list[subprocess.Popen], step: int) -> None:
    deadline = time.time() + 400
    while not any(json.loads(x)["step"] >= step for x in _lines(run_dir / "metrics.jsonl")):
        assert all(p.poll() is None for p in procs) and time.time() < deadline, "run ended before the kill point"
        time.sleep(0.05)
    while not (run_dir / "checkpoints" / "latest").exists():
        assert all(p.poll() is None for p in procs) and time.time() < deadline, "no checkpoint before the kill"
        time.sleep(0.05)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_dead_node_ends_the_job_and_a_relaunch_on_two_or_one_node_resumes(one_node, pretrain_shards, tmp_path):
    """SIGKILL of node 1's agent and rank mid-run (after a checkpoint): node 0 exits non-zero within
    DEAD_NODE_EXIT_S, and relaunches on two nodes and on one node resume from the last complete checkpoint with
    the losses of the run that never stopped."""
    run_dir = tmp_path / "run"
    procs = launch(pretrain(run_dir, pretrain_shards))
    try:
        _wait_for_checkpoint(run_dir, procs, step=3)
        node1 = [procs[1].pid, *descendants(procs[1].pid)]
        for pid in node1:
            os.kill(pid, signal.SIGKILL)
        start = time.time()
        survivors = [procs[0].pid, *descendants(procs[0].pid)]
        assert wait_gone(survivors, DEAD_NODE_EXIT_S), f"node 0 still running {DEAD_NODE_EXIT_S} s after node 1 died"
        waited = time.time() - start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert procs[0].returncode != 0 and not (run_dir / "DONE").exists()
    print(f"node 0 exited {waited:.1f} s after node 1 was killed")
    again_on_one = tmp_path / "again_on_one"
    shutil.copytree(run_dir, again_on_one)
    for where, nodes in ((run_dir, 2), (again_on_one, 1)):
        run_ok(pretrain(where, pretrain_shards), nodes=nodes)
        assert_same_losses(losses(where), losses(one_node))


def test_a_stop_signal_on_one_node_saves_one_agreed_checkpoint(pretrain_shards, tmp_path):
    """SIGTERM to node 1's rank only (as when Slurm signals one node first): both ranks agree at the next step
    boundary, one checkpoint is written, and both agents exit 0 without DONE."""
    run_dir = tmp_path / "run"
    procs = launch(pretrain(run_dir, pretrain_shards, "trainer.max_steps=40", "trainer.save_every=0"))
    try:
        deadline = time.time() + 400
        while not _lines(run_dir / "metrics.jsonl"):
            assert all(p.poll() is None for p in procs) and time.time() < deadline, "run ended before the signal"
            time.sleep(0.05)
        for pid in descendants(procs[1].pid):
            os.kill(pid, signal.SIGTERM)
        results = finish(procs, timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for node, (code, out, err) in enumerate(results):
        assert code == 0, f"node {node} exited {code}\n{out[-2000:]}\n{err[-4000:]}"
    assert not (run_dir / "DONE").exists()
    saved = [p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir()]
    assert len(saved) == 1, saved
    steps = [r["step"] for r in metrics(run_dir)]
    assert steps and max(steps) < 40
    assert not any(alive(p) for p in (procs[0].pid, procs[1].pid))


def test_a_silent_node_ends_the_job_after_the_collective_timeout(pretrain_shards, tmp_path):
    """A node that stops answering without closing its sockets (a host that vanished; here node 1's rank frozen
    with SIGSTOP): node 0 fails its collective after ``deepspeed.collective_timeout_s`` and exits, instead of
    waiting torch's default 30 minutes."""
    timeout_s = 20
    run_dir = tmp_path / "run"
    procs = launch(pretrain(run_dir, pretrain_shards, "trainer.max_steps=200", "trainer.save_every=0",
                            f"deepspeed.collective_timeout_s={timeout_s}"))
    frozen = []
    try:
        deadline = time.time() + 400
        while not _lines(run_dir / "metrics.jsonl"):
            assert all(p.poll() is None for p in procs) and time.time() < deadline, "run ended before the freeze"
            time.sleep(0.05)
        frozen = descendants(procs[1].pid)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        start = time.time()
        assert wait_gone([procs[0].pid, *descendants(procs[0].pid)], timeout_s + DEAD_NODE_EXIT_S), \
            f"node 0 still running {timeout_s + DEAD_NODE_EXIT_S} s after node 1 went silent"
        waited = time.time() - start
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGKILL)
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert procs[0].returncode != 0 and not (run_dir / "DONE").exists()
    assert waited >= timeout_s * 0.5, f"node 0 exited after {waited:.1f} s: not by the collective timeout"
    print(f"node 0 exited {waited:.1f} s after node 1 went silent (timeout {timeout_s} s)")
