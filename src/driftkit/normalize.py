"""Per-dimension normalisation of targets, written once for every decoder.

kinds:
- "none": identity.
- "mean_std": (a - mean) / std. Unfitted statistics are the identity (mean 0, std 1).
- "quantile": OpenVLA/FAST style, q01 -> -1 and q99 -> +1, clipped to [-1, 1]. Needs fitted statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from driftkit.errors import check_choice, check_finite

KINDS = ("none", "mean_std", "quantile")
_EPS = 1e-8


@dataclass
class NormStats:
    """Per-dimension statistics, each a [D] tensor (as in LeRobot's meta/stats.json)."""

    mean: Tensor
    std: Tensor
    q01: Tensor
    q99: Tensor

    @classmethod
    def from_data(cls, target: Tensor, mask: Tensor | None = None) -> "NormStats":
        """target [..., D]; mask like target (True = real). Padded entries are ignored."""
        d = target.shape[-1]
        flat = target.reshape(-1, d).double()
        real = None if mask is None else mask.reshape(-1, d)
        cols = [flat[:, i] if real is None else flat[real[:, i], i] for i in range(d)]
        for i, c in enumerate(cols):
            if c.numel() == 0:
                raise ValueError(f"target dimension {i} has no real (unmasked) values to fit statistics on")
        stat = lambda f: torch.stack([f(c) for c in cols]).float()  # noqa: E731
        return cls(
            mean=stat(torch.mean),
            std=stat(lambda c: c.std(unbiased=False)),
            q01=stat(lambda c: torch.quantile(c, 0.01)),
            q99=stat(lambda c: torch.quantile(c, 0.99)),
        )


class Normalizer(nn.Module):
    """Maps targets [..., D] into the decoder's working space and back. Statistics live in buffers,
    so they are saved and loaded with the decoder's state_dict."""

    def __init__(self, dim: int, kind: str = "mean_std"):
        super().__init__()
        check_choice("normalization", kind, KINDS)
        self.kind = kind
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("q01", -torch.ones(dim))
        self.register_buffer("q99", torch.ones(dim))
        self.register_buffer("fitted", torch.tensor(False))

    def set_stats(self, stats: NormStats) -> None:
        for name in ("mean", "std", "q01", "q99"):
            value = torch.as_tensor(getattr(stats, name), dtype=torch.float32).reshape(-1)
            if value.shape != self.mean.shape:
                raise ValueError(f"stats.{name} has shape {list(value.shape)}, expected [{self.mean.numel()}]")
            check_finite(f"stats.{name}", value)
            getattr(self, name).copy_(value)
        self.fitted.fill_(True)

    def _require_fit(self) -> None:
        if self.kind == "quantile" and not bool(self.fitted):
            raise RuntimeError(
                "quantile normalisation needs dataset statistics: call decoder.fit_normalizer(targets) "
                "or decoder.set_stats(NormStats(...)) before training or sampling"
            )

    def normalize(self, a: Tensor) -> Tensor:
        self._require_fit()
        if self.kind == "mean_std":
            return (a - self.mean) / self.std.clamp_min(_EPS)
        if self.kind == "quantile":
            return (2 * (a - self.q01) / (self.q99 - self.q01 + _EPS) - 1).clamp(-1, 1)
        return a

    def unnormalize(self, x: Tensor) -> Tensor:
        self._require_fit()
        if self.kind == "mean_std":
            return x * self.std.clamp_min(_EPS) + self.mean
        if self.kind == "quantile":
            return (x + 1) / 2 * (self.q99 - self.q01 + _EPS) + self.q01
        return x
