"""Training-time samplers for t in [0, 1] (t = 0 noise, t = 1 data)."""

from __future__ import annotations

import torch
from torch import Tensor

from driftkit.errors import check_choice

TIME_SAMPLERS = ("uniform", "beta")


def sample_time(kind: str, n: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """-> [n] times.

    uniform: t ~ U(0, 1).
    beta: pi0/SmolVLA's Beta(1.5, 1) over the noise level tau, tau = 0.001 + 0.999 * Beta(1.5, 1),
    mirrored to this module's convention: t = 1 - tau, so most samples sit near the noise end.
    Beta(1.5, 1) has CDF x^1.5, so it is drawn by inverse CDF (which also honours `generator`).
    """
    check_choice("time_sampler", kind, TIME_SAMPLERS)
    u = torch.rand(n, generator=generator, device=like.device, dtype=torch.float32)
    if kind == "uniform":
        return u.to(like.dtype)
    tau = 0.001 + 0.999 * u.pow(1.0 / 1.5)
    return (1.0 - tau).to(like.dtype)
