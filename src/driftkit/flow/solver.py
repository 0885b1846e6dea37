"""Fixed-step ODE integration of a velocity field."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from driftkit.errors import check_positive


def euler(
    velocity: Callable[[Tensor, Tensor], Tensor], x_0: Tensor, steps: int, t_0: float = 0.0, t_1: float = 1.0
) -> Tensor:
    """Integrate dx/dt = velocity(x [N, ...], t [N]) from t_0 to t_1 in `steps` equal Euler steps.

    Costs exactly `steps` evaluations of `velocity`. Exact for fields constant in x and t.
    """
    check_positive("steps", steps)
    x, h = x_0, (t_1 - t_0) / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), t_0 + i * h, device=x.device, dtype=x.dtype)
        x = x + h * velocity(x, t)
    return x
