"""Next-token loss accounting over target tokens: the engine's validation loss and the evaluation suite's
perplexity both sum token losses with these, so every token weighs the same across micro-batches and ranks."""
from __future__ import annotations

import math

import torch

from sambay_model.lm_head_loss import IGNORE_INDEX


def target_count(labels: torch.Tensor) -> torch.Tensor:
    """Positions that are predicted: labels are shifted inside the model, so column 0 is never a target."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


@torch.no_grad()
def summed_loss(model, batch: dict[str, torch.Tensor], rows: int, device: torch.device) -> torch.Tensor:
    """``[sum of token losses, number of targets]`` (float64) of ``batch``, forwarded ``rows`` rows at a time.

    ``model`` is a model or a DeepSpeed engine. The model's loss is the mean over a micro-batch's targets, so
    mean x count is that micro-batch's sum; summing sums keeps every token's weight equal across micro-batches.
    """
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i in range(0, batch["input_ids"].shape[0], rows):
        micro = {k: v[i:i + rows].to(device) for k, v in batch.items()}
        mean = model(input_ids=micro["input_ids"], labels=micro["labels"], doc_ids=micro["doc_ids"],
                     use_cache=False).loss
        n = target_count(micro["labels"])
        total += torch.stack([mean.double() * n, n.double()])
    return total


def mean_loss(total: torch.Tensor, where: str) -> float:
    """Loss per target token from :func:`summed_loss` totals; ``where`` names the data in the error."""
    if total[1].item() == 0:
        raise ValueError(f"{where} gave no target tokens")
    return (total[0] / total[1]).item()


def perplexity_from_loss(loss: float) -> float:
    """exp(loss), inf where that overflows a float (a diverged model) and nan for a nan loss, so that a
    perplexity gate fails on it instead of the evaluation crashing in ``math.exp``."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
