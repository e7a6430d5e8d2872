"""Shared fixtures for the model tests."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sambay_model.lm_head_loss import IGNORE_INDEX

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls are dominated by thread hand-offs on a shared 2-core machine: run them on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_interpreted():
    """Run a file of Triton cases in a child pytest under Triton's interpreter and fail with its report.
    TRITON_INTERPRET=1 must be set before Python imports triton, and importing sambay_model (through transformers
    and torch._dynamo) already imports it, so such cases cannot run in the test's own process."""

    def run(cases: Path, timeout: int) -> str:
        env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        report = proc.stdout[-12000:] + proc.stderr[-4000:]
        assert proc.returncode == 0, report
        assert " passed" in proc.stdout and "skipped" not in proc.stdout and "deselected" not in proc.stdout, report
        return proc.stdout

    return run


def _full_logits_loss(logits: torch.Tensor, labels: torch.Tensor,
                      num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    targets = labels[:, 1:].to(logits.device)
    flat = logits[:, :-1].reshape(-1, logits.shape[-1])
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32))
    total = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    if num_items_in_batch is None:
        denom = (targets != IGNORE_INDEX).sum().clamp(min=1)
    else:
        denom = torch.as_tensor(num_items_in_batch, device=total.device)
    return total / denom.to(total.dtype)


@pytest.fixture
def causal_lm_loss():
    """``loss(logits, labels, num_items_in_batch=None)``: the next-token cross-entropy on full logits, in fp32 (or
    wider), summed over targets and divided by ``num_items_in_batch`` when given, else averaged over non-ignored
    targets. The direct form of what the model computes from hidden states in vocabulary tiles
    (``lm_head_loss.chunked_causal_lm_loss``): the reference the model's loss is checked against."""
    return _full_logits_loss
