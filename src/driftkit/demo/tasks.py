"""Synthetic conditional tasks whose answer is known exactly, so decoders can be scored against it.

- bimodal: an action chunk whose first dim ramps up or down with equal probability given the condition
  (two modes), and whose second dim is a nearly deterministic function of the condition.
- precision: an interval-like target [start, end] that is a deterministic but sharp function of the condition
  (a staircase in one feature plus smooth terms): coarse predictors miss it, refinement should not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TaskBatch:
    cond: Tensor
    """[B, C] condition features."""
    target: Tensor
    """[B, T, D] one draw of the target."""
    modes: Tensor
    """[B, M, T, D] every mode of the target distribution (M = 1 for deterministic tasks)."""
    mode_index: Tensor
    """[B] which mode `target` was drawn from."""


class Task:
    name: str = ""
    cond_dim: int = 8
    target_shape: tuple[int, int] = (1, 1)
    noise_std: float = 0.0

    def modes(self, cond: Tensor) -> Tensor:
        """cond [B, C] -> [B, M, T, D]."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> TaskBatch:
        cond = torch.rand(n, self.cond_dim, generator=generator) * 2 - 1
        modes = self.modes(cond)
        idx = torch.randint(0, modes.shape[1], (n,), generator=generator)
        target = modes[torch.arange(n), idx]
        target = target + self.noise_std * torch.randn(target.shape, generator=generator)
        return TaskBatch(cond, target, modes, idx)


class BimodalChunk(Task):
    name = "bimodal"
    noise_std = 0.02
    slope = 1.0

    def __init__(self, horizon: int = 8, steady_dim: bool = True, cond_dim: int = 8):
        self.target_shape = (horizon, 2 if steady_dim else 1)
        self.cond_dim = cond_dim

    def modes(self, cond: Tensor) -> Tensor:
        horizon = self.target_shape[0]
        ramp = torch.linspace(1.0 / horizon, 1.0, horizon)  # [T]
        offset = 0.5 * torch.sin(math.pi * cond[:, 0:1])  # [B, 1]
        up, down = offset + self.slope * ramp, offset - self.slope * ramp  # [B, T]
        if self.target_shape[1] == 2:  # a nearly deterministic second dim, as real chunks have
            steady = 0.3 * cond[:, 1:2] + 0.2 * cond[:, 2:3] * ramp
            up, down = torch.stack([up, steady], dim=-1), torch.stack([down, steady], dim=-1)
        else:
            up, down = up.unsqueeze(-1), down.unsqueeze(-1)
        return torch.stack([up, down], dim=1)  # [B, 2, T, D]


class PrecisionInterval(Task):
    name = "precision"
    target_shape = (1, 2)
    steps = 6

    def modes(self, cond: Tensor) -> Tensor:
        stair = torch.floor((cond[:, 0] + 1) / 2 * self.steps).clamp(max=self.steps - 1) / self.steps
        start = 0.6 * stair + 0.1 * torch.sin(2 * math.pi * cond[:, 1])
        length = 0.15 + 0.1 * (cond[:, 2] + 1) + 0.05 * cond[:, 3] * cond[:, 4]
        return torch.stack([start, start + length], dim=-1).view(-1, 1, 1, 2)


TASKS: dict[str, type[Task]] = {t.name: t for t in (BimodalChunk, PrecisionInterval)}


def make_task(name: str, **options) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {sorted(TASKS)}")
    return TASKS[name](**options)
