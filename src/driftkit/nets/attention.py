"""Attention pieces both action experts share: the head count, the head split, and cross-attention with the S
samples of an observation folded into one query sequence against that observation's keys and values."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


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
