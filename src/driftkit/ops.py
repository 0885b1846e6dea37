"""Small tensor helpers used by several decoders: masked reductions and sample repetition."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of x over the entries where mask is True (mask broadcasts to x). 0 if nothing is real."""
    if mask is None:
        return x.mean()
    mask = mask.expand_as(x).to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def repeat_samples(x: Tensor | None, k: int) -> Tensor | None:
    """[B, ...] -> [B * k, ...], each row repeated k times in a row (sample-major within a batch item): the row
    layout of x and t for a net called with samples=k (driftkit.nets.base). Decoders repeat only per-sample
    inputs with it (a residual base, an RTC prefix); the condition itself stays unrepeated, shared by the k
    samples through the net's Prefix. None stays None."""
    return None if x is None else x.repeat_interleave(k, dim=0)


def randn(shape, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian noise on like's device, float32 or like's float dtype, reproducible with a generator."""
    dtype = like.dtype if torch.is_floating_point(like) else torch.float32
    return torch.randn(shape, generator=generator, device=like.device, dtype=dtype)


def rand(shape, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    dtype = like.dtype if torch.is_floating_point(like) else torch.float32
    return torch.rand(shape, generator=generator, device=like.device, dtype=dtype)
