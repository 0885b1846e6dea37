"""The drifting loss (Deng et al. 2026) with Drift-VLA's groupings of action chunks.

One matching problem: G live samples x_i [S] and P positives (demonstrations) y_j [S] of one observation.
The drift field V_i pulls sample i toward the positives and pushes it away from its siblings; the loss
regresses the live samples onto the detached target x/s + V, so d loss / d x_i = -(2 / (G S s)) V_i.
See ../shared/notes/drifting-and-keystone.md. Every statistic is computed without gradient, in float32 with
autocast off by default (Drift-VLA's fp32 guard; `fp32_target=False` computes them in the generator's dtype
instead, for the guard's ablation).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from driftkit.errors import check_choice

GROUPINGS = ("action_dim", "timestep", "chunk")
TEMPERATURES = (0.02, 0.05, 0.2)
_SELF_PENALTY = 100.0


@dataclass
class DriftField:
    """Result of one batch of matching problems [P groups, N observations]."""

    V: Tensor
    """[P, N, G, S] drift direction per sample (zero for invalid observations)."""
    s: Tensor
    """[P] per-group scale, mean pairwise distance / sqrt(S), floored at 1e-3."""


def group_chunks(chunks: Tensor, mask: Tensor, grouping: str) -> tuple[Tensor, Tensor]:
    """Arrange chunks [B, G, T, D] (mask [B, T, D]) into matching problems.

    -> (features [P, B, G, S], valid [P, B]) with padded entries zeroed:
    action_dim: P = D, S = T (each dim's trajectory); timestep: P = T, S = D; chunk: P = 1, S = T * D.
    """
    check_choice("grouping", grouping, GROUPINGS)
    x = chunks * mask.unsqueeze(1).to(chunks.dtype)
    if grouping == "action_dim":
        return x.permute(3, 0, 1, 2), mask.any(dim=1).T
    if grouping == "timestep":
        return x.permute(2, 0, 1, 3), mask.any(dim=2).T
    return x.flatten(2).unsqueeze(0), mask.flatten(1).any(dim=1).unsqueeze(0)


@torch.no_grad()
def drift_field(x: Tensor, pos: Tensor, valid: Tensor, temperatures=TEMPERATURES, fp32: bool = True) -> DriftField:
    """x [P, N, G, S] live samples (detached), pos [P, N, Q, S] positives, valid [P, N] bool.
    fp32: compute in float32 (default); False keeps x's dtype (pos is cast to it)."""
    x = x.float() if fp32 else x
    pos = pos.to(x.dtype)
    G, S = x.shape[2], x.shape[3]
    w_obs = valid.to(x.dtype)[..., None, None]  # [P, N, 1, 1]
    n_valid = w_obs.sum(dim=1).clamp_min(1.0)  # [P, 1, 1]
    y = torch.cat([x, pos], dim=2)  # [P, N, G + Q, S], siblings first
    d = (x.unsqueeze(3) - y.unsqueeze(2)).square().sum(-1).clamp_min(1e-8).sqrt()  # [P, N, G, G + Q]
    scale = (d * w_obs).sum(dim=(1, 2, 3)) / (n_valid.view(-1) * d.shape[2] * d.shape[3])  # [P]
    s = (scale / S**0.5).clamp_min(1e-3)
    dn = d / scale.clamp_min(1e-3).view(-1, 1, 1, 1)
    dn[..., :G] += _SELF_PENALTY * torch.eye(G, device=x.device, dtype=x.dtype)
    V = torch.zeros_like(x)
    for r in temperatures:
        logits = -dn / r
        # sqrt(clamp(softmax_j * softmax_i, 1e-6)) computed in log space: the same numbers, but no denormal
        # intermediates (tiny temperatures underflow the softmaxes, and denormals are very slow on CPUs).
        log_a = 0.5 * (logits.log_softmax(dim=-1) + logits.log_softmax(dim=-2))
        a = log_a.clamp_min(0.5 * math.log(1e-6)).exp()
        a_neg, a_pos = a[..., :G], a[..., G:]
        w = torch.cat([-a_neg * a_pos.sum(-1, keepdim=True), a_pos * a_neg.sum(-1, keepdim=True)], dim=-1)
        # Rows of w sum to zero, so sum_j w_ij (y_j - x_i) / s = (w @ y)_i / s.
        force = (w @ y) / s.view(-1, 1, 1, 1) * w_obs
        rms = ((force.square().sum(dim=(1, 2, 3)) / (n_valid.view(-1) * G * S)).clamp_min(1e-8)).sqrt()
        V += force / rms.view(-1, 1, 1, 1)
    return DriftField(V, s)


def drifting_loss(
    gen: Tensor,
    target: Tensor,
    mask: Tensor,
    grouping: str = "action_dim",
    temperatures=TEMPERATURES,
    scale_weighting: bool = False,
    fp32_target: bool = True,
) -> Tensor:
    """gen [B, G, T, D] live samples (with gradient); target [B, T, D] demonstrations; mask [B, T, D].

    scale_weighting multiplies each group's loss by its detached scale s, making the gradient's size
    independent of s. A deviation from the reference code: this function's argument defaults to False (the
    reference loss), but DriftOptions.scale_weighting, which the drift and residual_drift decoders pass in,
    defaults to True (measured in docs/decoders.md).
    fp32_target: the drift field, the target and the regression onto it in float32 with autocast off, the
    demonstrations kept at full precision (Drift-VLA's guard); False computes them in the generator's dtype
    under the caller's autocast (the guard's ablation).
    """
    dtype = torch.float32 if fp32_target else gen.dtype
    x, valid = group_chunks(gen, mask, grouping)  # [P, B, G, S]
    pos, _ = group_chunks(target.unsqueeze(1).to(dtype), mask, grouping)  # [P, B, 1, S]
    guard = torch.autocast(device_type=gen.device.type, enabled=False) if fp32_target else contextlib.nullcontext()
    with guard:
        field = drift_field(x.detach().to(dtype), pos.detach(), valid, temperatures, fp32=fp32_target)
        s = field.s.view(-1, 1, 1, 1)
        x_live = x.to(dtype)
        goal = x.detach().to(dtype) / s + field.V
        per_obs = (x_live / s - goal).square().mean(dim=(2, 3))  # [P, B]
    if scale_weighting:
        per_obs = per_obs * field.s.view(-1, 1)
    valid_f = valid.to(per_obs.dtype)
    return (per_obs * valid_f).sum() / valid_f.sum().clamp_min(1.0)
