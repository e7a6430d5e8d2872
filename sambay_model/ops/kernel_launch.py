"""A Triton kernel launch as data: the grid and arguments a launcher runs, also read by ``bench.kernel_report``.

Each Triton module in this package builds its launches through functions that return ``KernelLaunch`` and then
``run()`` them, and exposes ``kernel_launches(shape)`` that builds the same launches on ``meta`` tensors at a given
shape. So the static report compiles for sm_90 exactly the grid, argument dtypes, strides and constexprs the
training step launches: one source of truth for a kernel's geometry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class KernelShape:
    """The problem a report compiles the kernels at. Defaults: Phi-4-mini-flash's Mamba layer at micro-batch 1."""

    batch: int = 1
    seqlen: int = 8192
    d_inner: int = 5120
    d_state: int = 16
    d_conv: int = 4
    dtype: torch.dtype = torch.bfloat16


@dataclass(frozen=True)
class KernelLaunch:
    """One launch of ``kernel`` (a ``triton.JITFunction``).

    ``args`` are the kernel's parameters in order, constexprs included (by value), ``options`` the launch options
    (``num_warps``, ``num_stages``). ``serial_steps`` is the longest loop over the time axis one program runs at this
    launch's shape (1 for a kernel with no time loop): the latency a GPU cannot hide by running programs side by side.
    ``phase`` names what it is part of (e.g. ``"scan forward"``).
    """

    name: str
    phase: str
    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    serial_steps: int
    options: dict = field(default_factory=dict)

    @property
    def programs(self) -> int:
        n = 1
        for g in self.grid:
            n *= g
        return n

    def run(self) -> None:
        self.kernel[self.grid](*self.args, **self.options)
