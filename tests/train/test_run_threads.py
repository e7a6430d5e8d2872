"""CPU thread count of a rank (train.runtime.distributed.set_cpu_threads): without OMP_NUM_THREADS, the cores this
process may use (affinity, cgroup quota) shared among the node's ranks; an explicit OMP_NUM_THREADS is left alone."""
import pytest
import torch

from train.runtime import distributed
from train.runtime.distributed import cgroup_cpu_limit, rank_cpu_threads, set_cpu_threads

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """8 CPUs in the affinity mask, no cgroup quota, OMP_NUM_THREADS and LOCAL_WORLD_SIZE unset; torch's thread
    setting recorded instead of changed (it is process-wide)."""
    threads = {"n": 3}
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: threads.update(n=n))
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads["n"])
    return tmp_path


def test_one_rank_uses_every_core_of_its_affinity(machine, capsys):
    assert rank_cpu_threads(machine) == 8
    assert set_cpu_threads(CPU, local_rank=0, cgroup_root=machine) == 8
    assert "8 CPU thread(s) per rank" in capsys.readouterr().out


def test_cores_are_shared_among_the_nodes_ranks(machine, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert rank_cpu_threads(machine) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert rank_cpu_threads(machine) == 1


def test_explicit_omp_num_threads_is_left_alone(machine, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert set_cpu_threads(CPU, local_rank=0) == 3  # torch's own count, untouched
    assert "OMP_NUM_THREADS=1" in capsys.readouterr().out
    set_cpu_threads(CPU, local_rank=1)
    assert capsys.readouterr().out == ""  # logged once per node


def test_gpu_ranks_keep_torchs_default(machine):
    assert set_cpu_threads(GPU, local_rank=0) == 3


def test_cgroup_v2_quota_caps_the_affinity(machine):
    (machine / "cpu.max").write_text("250000 100000\n")  # 2.5 cores
    assert cgroup_cpu_limit(machine) == 2.5
    assert rank_cpu_threads(machine) == 2
    (machine / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(machine) is None and rank_cpu_threads(machine) == 8


def test_cgroup_v1_quota(machine):
    (machine / "cpu").mkdir()
    (machine / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (machine / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(machine) is None
    (machine / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")  # half a core: still one thread
    assert cgroup_cpu_limit(machine) == 0.5 and rank_cpu_threads(machine) == 1


def test_set_cpu_threads_applies_the_quota(machine):
    (machine / "cpu.max").write_text("400000 100000\n")
    assert set_cpu_threads(CPU, local_rank=0, cgroup_root=machine) == 4
