"""Feature statistics as LeRobot's meta/stats.json stores them, and the bridge to driftkit.NormStats.

Numeric feature [N, D] -> {"mean": [D], "std": [D], "min": [D], "max": [D], "count": [N],
"q01": [D], "q10": [D], "q50": [D], "q90": [D], "q99": [D]}. Video features are described per channel on
the [0, 1] scale with shape [3, 1, 1], as LeRobot does for cameras.
"""

from __future__ import annotations

import numpy as np

from driftkit.data.format import STAT_QUANTILES


def _quantile_key(q: float) -> str:
    return f"q{round(q * 100):02d}"


def feature_stats(values: np.ndarray) -> dict[str, list]:
    """values [N, D] (numeric) -> stats dict of lists (float64 maths, so the lists are exact to print)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[0] == 0:
        raise ValueError("cannot compute statistics of a feature with no frames")
    out = {
        "mean": x.mean(axis=0).tolist(),
        "std": x.std(axis=0).tolist(),
        "min": x.min(axis=0).tolist(),
        "max": x.max(axis=0).tolist(),
        "count": [int(x.shape[0])],
    }
    for q in STAT_QUANTILES:
        out[_quantile_key(q)] = np.quantile(x, q, axis=0).tolist()
    return out


def image_stats(frames: np.ndarray, max_frames: int = 2000) -> dict[str, list]:
    """frames [N, H, W, 3] uint8 -> per-channel stats on [0, 1], each a [3, 1, 1] nested list.
    At most `max_frames` evenly spaced frames are used (cameras are large; statistics barely move)."""
    frames = np.asarray(frames)
    idx = np.linspace(0, len(frames) - 1, num=min(len(frames), max_frames)).round().astype(int)
    pixels = frames[idx].reshape(-1, frames.shape[-1]).astype(np.float64) / 255.0
    flat = feature_stats(pixels)
    return {k: (v if k == "count" else [[[c]] for c in v]) for k, v in flat.items()} | {"count": [len(frames)]}
