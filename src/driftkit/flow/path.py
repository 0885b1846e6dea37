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


def flow_matching_loss(
    velocity: Callable[[Tensor, Tensor], Tensor], x_0: Tensor, x_1: Tensor, t: Tensor, mask: Tensor | None
) -> Tensor:
    """Masked mean of ||v(x_t, t) - (x_1 - x_0)||^2. velocity(x_t [N, T, D], t [N]) -> [N, T, D]."""
    v_t = velocity(interpolate(x_0, x_1, t), t)
    return masked_mean((v_t - target_velocity(x_0, x_1)).square(), mask)
