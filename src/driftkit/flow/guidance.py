"""Inference-time real-time chunking: Euler integration of a flow guided toward a prefix (Black, Galliker,
Levine 2025, arXiv 2506.07339), written once for every iterative decoder (flow, residual_flow).

Time convention: driftkit's t (0 = noise, 1 = data; driftkit.flow) is the paper's tau as is, so its formulas
hold unchanged here. pi0 / SmolVLA / LeRobot write the noise level 1 - t; their code reads with t -> 1 - t.

One Euler step from t to t + h, state x [N, T, D], target Y [N, T, D], soft mask W [T] (over the chunk index,
broadcast over D), clip beta:
    x1_hat = x + (1 - t) v(x, t)                          the clean chunk the field predicts from x
    e      = W * (Y - x1_hat)
    g      = (d x1_hat / d x)^T e                          one vector-Jacobian product (one backward pass)
    r2     = (1 - t)^2 / (t^2 + (1 - t)^2)
    lam    = min(beta, (1 - t) / (t r2))                   = beta at t = 0, where the ratio is infinite
    x     <- x + h (v + lam g)
g is computed under torch.enable_grad() inside the caller's no_grad; torch.inference_mode() forbids autograd
altogether, so these functions raise there (Decoder.sample leaves inference mode for them itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from driftkit.errors import check_positive, check_shape


@dataclass
class PrefixGuide:
    """What to guide toward, in the integrator's own coordinates."""

    target: Tensor
    """[N, T, D] Y, one row per integrated sample (the prefix repeated over K like cond)."""
    weights: Tensor
    """[T] soft mask W over the chunk index."""
    beta: float
    """Clip of the guidance weight."""

    def mask_like(self, x: Tensor) -> Tensor:
        """W shaped to broadcast against x [N, T, ...]."""
        return self.weights.to(x).view(1, -1, *([1] * (x.dim() - 2)))


def guidance_weight(t: float, beta: float) -> float:
    """min(beta, (1 - t) / (t r2)), r2 = (1 - t)^2 / (t^2 + (1 - t)^2); beta where the ratio is infinite
    (t = 0 and t = 1). (1 - t) / (t r2) simplifies to (t^2 + (1 - t)^2) / (t (1 - t))."""
    if t <= 0.0 or t >= 1.0:
        return float(beta)
    return min(float(beta), (t * t + (1 - t) * (1 - t)) / (t * (1 - t)))


def _require_autograd() -> None:
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "RTC guidance needs one vector-Jacobian product per step, which torch.inference_mode() forbids; "
            "run it under torch.no_grad() (Decoder.sample leaves inference mode for it by itself)"
        )


def guided_velocity(velocity: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: float, guide: PrefixGuide) -> Tensor:
    """v(x, t) + lam(t) (d x1_hat / d x)^T (W * (Y - x1_hat)) for x [N, T, D] at scalar time t."""
    _require_autograd()
    with torch.enable_grad():
        x_in = x.detach().clone().requires_grad_(True)  # clone: x may be an inference tensor of the caller
        t_vec = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
        v = velocity(x_in, t_vec)
        x1_hat = x_in + (1.0 - t) * v
        err = (guide.mask_like(x) * (guide.target.to(x) - x1_hat)).detach()
        (g,) = torch.autograd.grad(x1_hat, x_in, grad_outputs=err)
    return v.detach() + guidance_weight(t, guide.beta) * g


def guided_euler(
    velocity: Callable[[Tensor, Tensor], Tensor], x_0: Tensor, steps: int, guide: PrefixGuide,
    t_0: float = 0.0, t_1: float = 1.0,
) -> Tensor:
    """Integrate dx/dt = guided_velocity from t_0 to t_1 in `steps` equal Euler steps (the same time grid as
    driftkit.flow.euler). Costs `steps` evaluations of `velocity` and `steps` backward passes through it."""
    check_positive("steps", steps)
    check_shape("guide target", guide.target, tuple(x_0.shape), " (same as x_0)")
    check_shape("guide weights", guide.weights, (x_0.shape[1],), " ([T] of x_0 [N, T, D])")
    x, h = x_0, (t_1 - t_0) / steps
    for i in range(steps):
        x = x + h * guided_velocity(velocity, x, t_0 + i * h, guide)
    return x
