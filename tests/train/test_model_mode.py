"""``eval_mode``: eval mode inside the block, the caller's mode back after it, also after an error."""
from __future__ import annotations

import pytest
import torch

from train.runtime.model_mode import eval_mode


def _modes(model: torch.nn.Module) -> set[bool]:
    return {m.training for m in model.modules()}


@pytest.mark.parametrize("training", [True, False])
def test_eval_inside_and_the_mode_before_restored(training):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train(training)
    with eval_mode(model) as inside:
        assert inside is model and _modes(model) == {False}
    assert _modes(model) == {training}


def test_the_mode_is_restored_when_the_block_raises():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train()
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert _modes(model) == {True}
