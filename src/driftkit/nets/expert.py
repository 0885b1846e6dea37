"""Action expert: a small transformer over the chunk's T steps that cross-attends to VLM prefix states.

Each step is one token: a learned step embedding, plus the embedded chunk input x[:, t] when in_dim > 0,
plus the embedded flow time when use_time. Blocks are pre-norm self-attention over the steps, cross-
attention to the condition, and an MLP. The condition is [B, L, C] prefix states, or [B, C] treated as one
prefix token. Padding travels as cond_mask [B, L] (True = real; VLMFeatures.prefix_mask plus the query
tokens): it is the cross-attention's key padding mask, so a padded row's values never reach the output. The
values of cond say nothing about padding: a real row that happens to be zero is attended like any other.

Shared prefix: `project` maps cond through cond_in and every block's cross-attention key/value weights once
per observation ([B, heads, L, W / heads] each). The S samples of an observation then cross-attend as one
query sequence of S * T tokens against those keys and values. Cross-attention treats each query on its own,
so this is exactly per-sample cross-attention without S copies of the prefix; self-attention still runs
over each sample's own T steps.

With in_dim = 0 and no time (regression, tokens) the step embeddings alone are the queries, so every
decoder runs on this net unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from driftkit.nets.attention import StepTokenExpert, folded_cross_attention, split_heads
from driftkit.nets.base import register_net


class ExpertBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_ff = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        # Its parameters are used directly (keys_values, cross) so keys and values are projected once.
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def keys_values(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """context [B, L, W] -> keys, values [B, heads, L, W / heads] of the cross-attention."""
        w = context.shape[-1]
        weight, bias = self.cross_attn.in_proj_weight, self.cross_attn.in_proj_bias
        k = F.linear(context, weight[w : 2 * w], bias[w : 2 * w])
        v = F.linear(context, weight[2 * w :], bias[2 * w :])
        heads = self.cross_attn.num_heads
        return split_heads(k, heads), split_heads(v, heads)

    def cross(self, x: Tensor, keys: Tensor, values: Tensor, keep: Tensor | None, samples: int) -> Tensor:
        """x [B * S, T, W] normed queries; keys, values [B, heads, L, W / heads]; keep [B, 1, 1, L] bool
        (True = attend) or None -> [B * S, T, W]. The S samples of an observation form one query sequence."""
        w = x.shape[-1]
        weight, bias = self.cross_attn.in_proj_weight, self.cross_attn.in_proj_bias
        q = F.linear(x, weight[:w], bias[:w])
        return self.cross_attn.out_proj(folded_cross_attention(q, keys, values, keep, samples))

    def forward(self, h: Tensor, keys: Tensor, values: Tensor, keep: Tensor | None, samples: int) -> Tensor:
        """h [B * S, T, W]; keys, values [B, heads, L, W / heads]; keep [B, 1, 1, L] bool or None."""
        x = self.norm_self(h)
        h = h + self.self_attn(x, x, x, need_weights=False)[0]
        h = h + self.cross(self.norm_cross(h), keys, values, keep, samples)
        return h + self.ff(self.norm_ff(h))


@register_net("expert")
class ExpertNet(StepTokenExpert):
    """Transformer over T step tokens with cross-attention to cond [B, L, C] (or [B, C])."""

    name = "expert"

    def build_blocks(self, width: int, heads: int) -> nn.ModuleList:
        self.cond_in = nn.Sequential(nn.LayerNorm(self.spec.cond_dim), nn.Linear(self.spec.cond_dim, width))
        return nn.ModuleList([ExpertBlock(width, heads) for _ in range(self.spec.depth)])

    def project(self, cond: Tensor, cond_mask: Tensor | None) -> tuple:
        """cond [B, C] or [B, L, C], cond_mask [B, L] bool or None -> (keep [B, 1, 1, L] bool or None,
        then keys and values [B, heads, L, W / heads] for each block). Rows with no real position are the
        caller's to refuse (the decoders do); here they would attend to nothing (NaN)."""
        spec = self.spec
        if cond_mask is not None and cond.dim() != 3:
            raise ValueError(f"net 'expert' got cond_mask with cond of shape {list(cond.shape)}: cond_mask "
                             "marks rows of [N, L, C] prefix states")
        if cond.dim() == 2:
            cond = cond[:, None]  # [B, 1, C]: a single prefix token
        if cond.dim() != 3 or cond.shape[-1] != spec.cond_dim:
            raise ValueError(f"net 'expert' takes cond [N, C] or [N, L, C] with C={spec.cond_dim}, "
                             f"got shape {list(cond.shape)}")
        if cond_mask is not None and (cond_mask.shape != cond.shape[:2] or cond_mask.dtype != torch.bool):
            raise ValueError(f"net 'expert' takes cond_mask [N, L] = {list(cond.shape[:2])} bool, got shape "
                             f"{list(cond_mask.shape)} dtype {cond_mask.dtype} (cond has shape {list(cond.shape)})")
        context = self.cond_in(cond)  # [B, L, W]
        keep = None if cond_mask is None else cond_mask[:, None, None, :]
        return (keep, *(kv for block in self.blocks for kv in block.keys_values(context)))
