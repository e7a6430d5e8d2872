"""Evaluate a model in the middle of anything: eval mode for a block, the caller's mode back after it.

Generation, perplexity, held-out preference scoring and retrieval all run on a model that may be training
(DPO scores and samples mid-run), so each switches dropout and friends off only for its own block.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode inside the block; its train/eval mode before the block is restored, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
