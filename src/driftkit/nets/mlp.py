"""A residual MLP over the flattened chunk, the condition and a time embedding."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from driftkit.nets.base import ChunkNet, NetSpec, register_net


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 1000.0) -> Tensor:
    """t [N] in [0, 1] -> [N, dim] sin/cos features with geometric frequencies from 1 to max_period."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0, math.log(max_period), half, device=t.device, dtype=torch.float32))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(t.dtype)


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.ff(self.norm(h))


@register_net("mlp")
class MLPNet(ChunkNet):
    """Needs cond [N, C] (pooled features); the time embedding is concatenated at the input. It does not pool
    over prefix states: a [N, L, C] cond is refused, so cond_mask (which only marks rows of a 3-D cond) is
    accepted for the common signature and has nothing to act on."""

    time_dim = 64

    def __init__(self, spec: NetSpec):
        super().__init__(spec)
        width = spec.hidden_dim
        in_features = spec.cond_dim + spec.horizon * spec.in_dim + (self.time_dim if spec.use_time else 0)
        self.inp = nn.Linear(in_features, width)
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(spec.depth)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, spec.horizon * spec.out_dim))

    def forward(
        self, cond: Tensor, x: Tensor | None = None, t: Tensor | None = None, cond_mask: Tensor | None = None
    ) -> Tensor:
        spec = self.spec
        if cond.dim() != 2:
            raise ValueError(f"net 'mlp' takes pooled features cond [N, C], got shape {list(cond.shape)}")
        parts = [cond]
        if spec.in_dim:
            parts.append(x.reshape(x.shape[0], -1))
        if spec.use_time:
            parts.append(sinusoidal_embedding(t, self.time_dim))
        h = self.blocks(self.inp(torch.cat(parts, dim=-1)))
        return self.out(h).view(cond.shape[0], spec.horizon, spec.out_dim)
