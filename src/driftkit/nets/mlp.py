"""A residual MLP over the flattened chunk, the condition and a time embedding."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from driftkit.nets.base import ChunkNet, NetSpec, Prefix, register_net


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
    """Needs cond [B, C] (pooled features); the time embedding is concatenated at the input. It does not pool
    over prefix states: a [B, L, C] cond is refused, so cond_mask (which only marks rows of a 3-D cond) is
    accepted for the common signature and has nothing to act on."""

    name = "mlp"
    time_dim = 64

    def __init__(self, spec: NetSpec):
        super().__init__(spec)
        width = spec.hidden_dim
        in_features = spec.cond_dim + spec.horizon * spec.in_dim + (self.time_dim if spec.use_time else 0)
        self.inp = nn.Linear(in_features, width)
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(spec.depth)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, spec.horizon * spec.out_dim))

    def project(self, cond: Tensor, cond_mask: Tensor | None) -> tuple:
        """cond [B, C] -> (cond,): nothing is projected ahead (see evaluate)."""
        if cond.dim() != 2 or cond.shape[-1] != self.spec.cond_dim:
            raise ValueError(f"net 'mlp' takes pooled features cond [N, C] with C={self.spec.cond_dim}, got shape "
                             f"{list(cond.shape)}")
        return (cond,)

    def evaluate(self, prefix: Prefix, x: Tensor | None, t: Tensor | None, samples: int) -> Tensor:
        # The cond rows are repeated into the input layer's concatenation rather than projected once and
        # broadcast: that layer is a small share of the net's cost (the blocks run per sample either way), and
        # the concatenated form keeps the arithmetic, hence trained weights and samples, bit-identical to a
        # net handed repeated cond.
        spec, (cond,) = self.spec, prefix.memory
        n = prefix.rows * samples
        parts = [cond.repeat_interleave(samples, dim=0) if samples > 1 else cond]
        if spec.in_dim:
            parts.append(x.reshape(n, -1))
        if spec.use_time:
            parts.append(sinusoidal_embedding(t, self.time_dim))
        h = self.blocks(self.inp(torch.cat(parts, dim=-1)))
        return self.out(h).view(n, spec.horizon, spec.out_dim)
