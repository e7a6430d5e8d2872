"""Streaming pretraining shards: same bytes for 1 or N workers, ids equal the HF tokenizer's, bounded chunks in
flight, resume after a crash (simulated and a real SIGKILL) gives the uninterrupted run's files.

The slow end-to-end tests; the fast ones are in test_data_pretrain_shards.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from data.shards import PARTIAL_SUFFIX, PROGRESS
from tests.data.builders import REPO, files_of, random_corpus, write_shards


_KILLED_RUN = """
import sys
from data.documents import input_fingerprint, iter_documents
from data.pretrain_shards import write_pretrain_shards
files, tok, out = [sys.argv[1]], sys.argv[2], sys.argv[3]
write_pretrain_shards(lambda s: iter_documents(files, "text", s), tok, out, files, val_fraction=0.1, seed=3,
                      shard_tokens=3000, num_proc=int(sys.argv[4]), input_id=input_fingerprint(files, "text"),
                      chunk_chars=20_000)
"""


@pytest.mark.slow  # three processes that each import transformers: ~30 s on 2 cores
def test_sigkill_mid_run_then_rerun_resumes(tmp_path, bpe_dir):
    f = random_corpus(tmp_path / "big.jsonl", 2000)
    out = tmp_path / "out"
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    cmd = [sys.executable, "-c", _KILLED_RUN, str(f), str(bpe_dir), str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd + ["2"], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (partial / PROGRESS).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed; make the corpus bigger"
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: parent and tokenizer workers
    finally:
        proc.wait()
    progress = json.loads((partial / PROGRESS).read_text())
    assert progress["position"]["documents"] > 0 and not out.exists()
    subprocess.run(cmd + ["1"], env=env, check=True, timeout=300)
    ref = write_shards([f], bpe_dir, tmp_path / "ref", resumable=False, num_proc=2)
    assert files_of(out) == files_of(ref)
