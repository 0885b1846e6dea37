"""The linear (rectified / conditional OT) probability path and its flow-matching loss."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from driftkit.ops import masked_mean


def interpolate(x_0: Tensor, x_1: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x_0 + t x_1. x_0, x_1 [N, T, D]; t [N]."""
    t = t.view(-1, *([1] * (x_0.dim() - 1)))
    return (1 - t) * x_0 + t * x_1


def target_velocity(x_0: Tensor, x_1: Tensor) -> Tensor:
    """u_t = d x_t / dt = x_1 - x_0 (independent of t on this path)."""
    return x_1 - x_0


PREDICTIONS = ("velocity", "data")


def as_velocity(out: Tensor, x_t: Tensor, t: Tensor, prediction: str) -> Tensor:
    """A network output -> velocity. "data" outputs are x_1 estimates: v = (x_1_hat - x_t) / (1 - t)."""
    if prediction == "velocity":
        return out
    return (out - x_t) / (1 - t).clamp_min(1e-3).view(-1, *([1] * (x_t.dim() - 1)))


def flow_matching_loss(
    model: Callable[[Tensor, Tensor], Tensor],
    x_0: Tensor,
    x_1: Tensor,
    t: Tensor,
    mask: Tensor | None,
    prediction: str = "velocity",
) -> Tensor:
    """model(x_t [N, T, D], t [N]) -> [N, T, D], regressed onto u_t = x_1 - x_0 ("velocity", pi0) or onto
    x_1 itself ("data"; the loss stays bounded as t -> 1 where the velocity's scale blows up)."""
    out = model(interpolate(x_0, x_1, t), t)
    target = target_velocity(x_0, x_1) if prediction == "velocity" else x_1
    return masked_mean((out - target).square(), mask)
