"""Action expert: a small transformer over the chunk's T steps that cross-attends to VLM prefix states.

Each step is one token: a learned step embedding, plus the embedded chunk input x[:, t] when in_dim > 0,
plus the embedded flow time when use_time. Blocks are pre-norm self-attention over the steps, cross-
attention to the condition, and an MLP. The condition is [N, L, C] prefix states, or [N, C] treated as one
prefix token. Padding travels as cond_mask [N, L] (True = real; VLMFeatures.prefix_mask plus the query
tokens): it is the cross-attention's key padding mask, so a padded row's values never reach the output. The
values of cond say nothing about padding: a real row that happens to be zero is attended like any other.

With in_dim = 0 and no time (regression, tokens) the step embeddings alone are the queries, so every
decoder runs on this net unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from driftkit.nets.base import ChunkNet, NetSpec, register_net
from driftkit.nets.mlp import sinusoidal_embedding


class ExpertBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_ff = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h: Tensor, context: Tensor, pad: Tensor | None) -> Tensor:
        """h [N, T, W]; context [N, L, W]; pad [N, L] bool True = ignore."""
        x = self.norm_self(h)
        h = h + self.self_attn(x, x, x, need_weights=False)[0]
        x = self.norm_cross(h)
        h = h + self.cross_attn(x, context, context, key_padding_mask=pad, need_weights=False)[0]
        return h + self.ff(self.norm_ff(h))


@register_net("expert")
class ExpertNet(ChunkNet):
    """Transformer over T step tokens with cross-attention to cond [N, L, C] (or [N, C])."""

    time_dim = 64

    def __init__(self, spec: NetSpec):
        super().__init__(spec)
        width = spec.hidden_dim
        heads = next(h for h in (8, 4, 2, 1) if width % h == 0 and width // h >= 16 or h == 1)
        self.steps = nn.Parameter(torch.randn(spec.horizon, width) * 0.02)  # learned per-step queries
        self.x_in = nn.Linear(spec.in_dim, width) if spec.in_dim else None
        self.t_in = None
        if spec.use_time:
            self.t_in = nn.Sequential(nn.Linear(self.time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_in = nn.Sequential(nn.LayerNorm(spec.cond_dim), nn.Linear(spec.cond_dim, width))
        self.blocks = nn.ModuleList([ExpertBlock(width, heads) for _ in range(spec.depth)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, spec.out_dim))

    def forward(
        self, cond: Tensor, x: Tensor | None = None, t: Tensor | None = None, cond_mask: Tensor | None = None
    ) -> Tensor:
        """cond_mask [N, L] bool, True = real row of a [N, L, C] cond (None = all real). Rows with no real
        position are the caller's to refuse (the decoders do); here they would attend to nothing (NaN)."""
        spec = self.spec
        if cond_mask is not None and cond.dim() != 3:
            raise ValueError(f"net 'expert' got cond_mask with cond of shape {list(cond.shape)}: cond_mask "
                             "marks rows of [N, L, C] prefix states")
        if cond.dim() == 2:
            cond = cond[:, None]  # [N, 1, C]: a single prefix token
        if cond.dim() != 3 or cond.shape[-1] != spec.cond_dim:
            raise ValueError(f"net 'expert' takes cond [N, C] or [N, L, C] with C={spec.cond_dim}, "
                             f"got shape {list(cond.shape)}")
        if cond_mask is not None and (cond_mask.shape != cond.shape[:2] or cond_mask.dtype != torch.bool):
            raise ValueError(f"net 'expert' takes cond_mask [N, L] = {list(cond.shape[:2])} bool, got shape "
                             f"{list(cond_mask.shape)} dtype {cond_mask.dtype} (cond has shape {list(cond.shape)})")
        n = cond.shape[0]
        h = self.steps[None].expand(n, -1, -1)  # [N, T, W]
        if self.x_in is not None:
            h = h + self.x_in(x)
        if self.t_in is not None:
            h = h + self.t_in(sinusoidal_embedding(t, self.time_dim))[:, None]
        pad = None if cond_mask is None else ~cond_mask  # [N, L] True = ignore
        context = self.cond_in(cond)
        for block in self.blocks:
            h = block(h, context, pad)
        return self.out(h)  # [N, T, out_dim]
