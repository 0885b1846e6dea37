"""Prefix-distance selection: keep the candidate chunks that agree best with the previous chunk.

The backward-coherence score of bidirectional decoding (Liu et al., ICLR 2025) with RTC's soft mask as the
weights: for a candidate x [T, D], the previous chunk's prefix y [T, D] and W [T] (driftkit.rtc.soft_mask),
    score(x) = sum_i W_i ||x_i - y_i||^2,
the objective whose gradient RTC's guidance follows (its error term W * (Y - x) is minus the gradient of
score / 2). One-step decoders use it for real-time chunking: K' samples cost one batched pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from driftkit.errors import check_positive, check_shape
from driftkit.selection.keystone import Selection, _gather


def prefix_distance(samples: Tensor, prefix: Tensor, weights: Tensor | None = None) -> Tensor:
    """samples [B, K, T, D], prefix [B, T, D], weights [T] (None = all ones) -> [B, K] the W-weighted squared
    distance of every sample to its row's prefix."""
    check_shape("samples", samples, (None, None, None, None), " ([B, K, T, D])")
    b, _, t, d = samples.shape
    check_shape("prefix", prefix, (b, t, d), " ([B, T, D] of samples [B, K, T, D])")
    sq = (samples - prefix.unsqueeze(1).to(samples)).square().sum(-1)  # [B, K, T]
    if weights is None:
        return sq.sum(-1)
    check_shape("weights", weights, (t,), " ([T] of samples [B, K, T, D])")
    return (sq * weights.to(sq)).sum(-1)


def rank_by_prefix(samples: Tensor, prefix: Tensor, weights: Tensor | None = None,
                   keep: int | None = None) -> tuple[Tensor, Tensor]:
    """-> (chunks [B, keep, T, D], index [B, keep] long): the `keep` samples (default all K) of each row with
    the smallest prefix_distance, closest first (ties keep the lower index)."""
    score = prefix_distance(samples, prefix, weights)
    keep = samples.shape[1] if keep is None else keep
    check_positive("keep", keep)
    if keep > samples.shape[1]:
        raise ValueError(f"got keep={keep}, but samples hold only K={samples.shape[1]} per row")
    index = torch.sort(score, dim=1, stable=True).indices[:, :keep]
    rows = torch.arange(samples.shape[0], device=samples.device)[:, None]
    return samples[rows, index], index


def closest_to_prefix(samples: Tensor, prefix: Tensor, weights: Tensor | None = None) -> Selection:
    """samples [B, K, T, D] -> Selection of the sample closest to prefix [B, T, D] under weights [T]."""
    index = prefix_distance(samples, prefix, weights).argmin(-1)
    return _gather(samples, index)
