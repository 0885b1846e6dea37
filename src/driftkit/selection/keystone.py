"""KeyStone (Dai et al. 2026) and simpler selectors over K candidate chunks per observation.

KeyStone: global medoid if the K samples look unimodal, else the medoid of the largest k-means cluster.
Distances are L2 over the executed steps and real dims of each chunk, flattened, in the units the samples
come in: Policy.predict hands the selectors the decoder's normalised samples, where every dimension has its
own scale (Drift-VLA selects on normalised model outputs), and returns the chosen sample in action units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from driftkit.errors import check_positive, check_shape


@dataclass
class Selection:
    chunk: Tensor
    """[B, T, D] the selected chunk per observation."""
    index: Tensor
    """[B] long, which of the K samples was selected."""


def _flatten(samples: Tensor, exec_steps: int | None, dims: int | None) -> Tensor:
    check_shape("samples", samples, (None, None, None, None), " ([B, K, T, D])")
    return samples[:, :, :exec_steps, :dims].flatten(2).float()  # [B, K, S]


def _gather(samples: Tensor, index: Tensor) -> Selection:
    return Selection(samples[torch.arange(samples.shape[0], device=samples.device), index], index)


def medoid(samples: Tensor, exec_steps: int | None = None, dims: int | None = None) -> Selection:
    """samples [B, K, T, D] -> the sample with the least summed L2 distance to the others."""
    flat = _flatten(samples, exec_steps, dims)
    return _gather(samples, torch.cdist(flat, flat).sum(-1).argmin(-1))


def best_of_k(samples: Tensor, target: Tensor) -> Selection:
    """Oracle selection (for evaluation only): the sample closest to target [B, T, D] in L2."""
    err = (samples - target.unsqueeze(1)).flatten(2).square().sum(-1)  # [B, K]
    return _gather(samples, err.argmin(-1))


def _kmeans_labels(x: Tensor, clusters: int, iters: int = 10) -> Tensor:
    """x [K, S] -> labels [K] from the nearest centroid after `iters` Lloyd updates (init = first C points, an
    empty cluster keeps its centroid). The labels are read after the last update, so they describe the
    centroids k-means ends with, not the ones of the step before."""
    centroids = x[:clusters].clone()
    for _ in range(iters):
        labels = torch.cdist(x, centroids).argmin(-1)
        for c in range(clusters):
            members = labels == c
            if members.any():
                centroids[c] = x[members].mean(0)
    return torch.cdist(x, centroids).argmin(-1)


def _keystone_one(flat: Tensor, clusters: int, guard: float) -> int:
    """flat [K, S] -> selected index."""
    k = flat.shape[0]
    dm = torch.cdist(flat, flat)  # [K, K]
    m = int(dm.sum(-1).argmin())
    if k < 2:
        return m
    off_diag = dm[~torch.eye(k, dtype=torch.bool, device=flat.device)]
    spread = (flat.mean(0) - flat[m]).norm() / (off_diag.median() + 1e-8)
    if spread <= guard:
        return m
    labels = _kmeans_labels(flat, min(clusters, k))
    dominant = int(torch.bincount(labels).argmax())  # lowest id on ties
    members = (labels == dominant).nonzero().squeeze(-1)
    inside = dm[members][:, members].sum(-1)
    return int(members[inside.argmin()])


def keystone(
    samples: Tensor, clusters: int = 2, exec_steps: int | None = None, dims: int | None = None, guard: float = 0.3
) -> Selection:
    """samples [B, K, T, D] -> Selection. clusters: C of k-means (SmolVLA used K=8, C=4; pi0.5 C=2).

    exec_steps / dims restrict the distance to the executed steps and the real (unpadded) dims.
    guard: the unimodality threshold on ||mean - medoid|| / median pairwise distance.
    """
    check_positive("clusters", clusters)
    flat = _flatten(samples, exec_steps, dims)
    index = torch.tensor([_keystone_one(f, clusters, guard) for f in flat], device=samples.device)
    return _gather(samples, index)


def select_normalized(samples: Tensor, normalize, how: str = "keystone", clusters: int = 2) -> Selection:
    """samples [B, K, T, D] in action units; normalize maps them to the decoder's normalised units, where the
    selector (keystone or medoid) measures its distances -> the chosen samples, in action units."""
    if how not in ("keystone", "medoid"):
        raise ValueError(f"got how={how!r}, must be 'keystone' or 'medoid'")
    normed = normalize(samples)
    index = (keystone(normed, clusters=clusters) if how == "keystone" else medoid(normed)).index
    return _gather(samples, index)
