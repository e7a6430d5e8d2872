"""Test-only: report where each training rank runs (tests/scripts/test_slurm_two_node_e2e.py).

Put this folder on PYTHONPATH: Python imports ``sitecustomize`` at start-up, and in a process that torchrun started
as a rank (RANK and WORLD_SIZE set) this prints one line naming the rank, the world size and the host name, so the
test can tell from the job's output which node each rank ran on. Other processes (torchrun's agent, srun's tasks
before torchrun) print nothing.
"""
import os
import socket


def _report() -> None:
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is not None and world is not None:
        print(f"[node-report] rank={rank} world={world} host={socket.gethostname()}", flush=True)


_report()
