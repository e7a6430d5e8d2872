"""`make test` runs two pytest-xdist workers with ``--dist loadgroup``; the Slurm tests (one local cluster per
session) and the README demo test (both write artifacts/data/demo) rely on ``xdist_group`` keeping them on one
worker, in order. That grouping can stop silently: pytest 9.2 ignores the node-id suffix xdist 3.8 groups by
(pytest-dev/pytest-xdist#1386), and then the demo data is prepared twice at once and one prepare is refused.
This runs a small suite marked the two ways the real tests are and checks where its tests ran."""
import json
import subprocess
import sys
from pathlib import Path

GROUPED_BY_DECORATOR = '''
import pytest
from record import record

@pytest.mark.xdist_group("shared")
def test_first():
    record("first")

@pytest.mark.xdist_group("shared")
def test_second():
    record("second")
'''

GROUPED_BY_MODULE_MARK = '''
import pytest
from record import record

pytestmark = [pytest.mark.xdist_group("shared")]

def test_third():
    record("third")

def test_fourth():
    record("fourth")
'''

RECORD = '''
import json, os, time
from pathlib import Path

def record(name):
    start = time.monotonic()
    time.sleep(0.3)  # long enough that two workers would overlap
    line = {"test": name, "worker": os.environ.get("PYTEST_XDIST_WORKER"), "start": start, "end": time.monotonic()}
    with open(Path(__file__).with_name("ran.jsonl"), "a") as f:
        f.write(json.dumps(line) + "\\n")
'''


def test_grouped_tests_share_one_worker_in_order(tmp_path):
    (tmp_path / "record.py").write_text(RECORD)
    (tmp_path / "test_a.py").write_text(GROUPED_BY_DECORATOR)
    (tmp_path / "test_b.py").write_text(GROUPED_BY_MODULE_MARK)
    # The same distribution options as make test: two workers, loadgroup (pyproject.toml's addopts).
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p",
                          "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ran = [json.loads(line) for line in (tmp_path / "ran.jsonl").read_text().splitlines()]
    assert sorted(r["test"] for r in ran) == ["first", "fourth", "second", "third"]
    workers = {r["worker"] for r in ran}
    assert len(workers) == 1 and workers != {None}, f"xdist_group split across workers: {ran}"
    ran.sort(key=lambda r: r["start"])
    assert [r["test"] for r in ran] == ["first", "second", "third", "fourth"]  # collection order
    assert all(a["end"] <= b["start"] for a, b in zip(ran, ran[1:]))  # one at a time
