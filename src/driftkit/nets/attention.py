"""What both action experts share: the head count, the head split, cross-attention with the S samples of an
observation folded into one query sequence against that observation's keys and values, and the step-token
network around their blocks (StepTokenExpert)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from driftkit.nets.base import ChunkNet, NetSpec, Prefix
from driftkit.nets.mlp import sinusoidal_embedding


def attention_heads(width: int) -> int:
    """The most heads (8, 4, 2 or 1) that leave at least 16 channels per head."""
    return next(h for h in (8, 4, 2, 1) if width % h == 0 and width // h >= 16 or h == 1)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, M, W] -> [B, heads, M, W / heads]."""
    b, m, w = x.shape
    return x.view(b, m, heads, w // heads).transpose(1, 2)


def folded_cross_attention(q: Tensor, keys: Tensor, values: Tensor, keep: Tensor | None, samples: int) -> Tensor:
    """q [B * S, T, W] projected queries; keys, values [B, heads, L, W / heads]; keep [B, 1, 1, L] bool (True =
    attend) or None -> [B * S, T, W] before the output projection. Cross-attention treats each query on its own,
    so attending with the S * T queries of an observation at once equals per-sample attention without S copies of
    the keys and values."""
    n, t, w = q.shape
    heads = keys.shape[1]
    q = split_heads(q.reshape(n // samples, samples * t, w), heads)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=keep)  # [B, heads, S * T, W / heads]
    return out.transpose(1, 2).reshape(n, t, w)


class StepTokenExpert(ChunkNet):
    """What both action experts share: one token per chunk step (a learned step embedding, plus the embedded chunk
    input x[:, t] when in_dim > 0, plus the embedded flow time when use_time), a stack of blocks that each read
    one (keys, values) pair of the Prefix, and a normed linear read-out. Subclasses build their blocks in
    `build_blocks` (and any condition layers before them, which keeps the parameters' creation order, so a seed
    gives the same initial weights as before the two experts shared this class) and write `project`, whose
    memory is (keep [B, 1, 1, L] bool or None, keys_0, values_0, keys_1, values_1, ...)."""

    time_dim = 64

    def __init__(self, spec: NetSpec):
        super().__init__(spec)
        width = spec.hidden_dim
        self.steps = nn.Parameter(torch.randn(spec.horizon, width) * 0.02)  # learned per-step queries
        self.x_in = nn.Linear(spec.in_dim, width) if spec.in_dim else None
        self.t_in = None
        if spec.use_time:
            self.t_in = nn.Sequential(nn.Linear(self.time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = self.build_blocks(width, attention_heads(width))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, spec.out_dim))

    def build_blocks(self, width: int, heads: int) -> nn.ModuleList:
        """The blocks, each called as block(h, keys, values, keep, samples) -> h."""
        raise NotImplementedError

    def evaluate(self, prefix: Prefix, x: Tensor | None, t: Tensor | None, samples: int) -> Tensor:
        keep, *kv = prefix.memory
        h = self.steps[None].expand(prefix.rows * samples, -1, -1)  # [B * S, T, W]
        if self.x_in is not None:
            h = h + self.x_in(x)
        if self.t_in is not None:
            h = h + self.t_in(sinusoidal_embedding(t, self.time_dim))[:, None]
        for i, block in enumerate(self.blocks):
            h = block(h, kv[2 * i], kv[2 * i + 1], keep, samples)
        return self.out(h)  # [B * S, T, out_dim]
