"""Feature statistics as LeRobot's meta/stats.json and its per-episode `stats/<feature>/<stat>` columns store
them, and how per-episode statistics combine into dataset statistics.

Numeric feature [N, *S] -> {"mean": [S[-1]], "std", "min", "max", "count": [N], "q01", "q10", "q50", "q90",
"q99"}: like LeRobot, frames and all leading axes are reduced, so a (2, 3) feature has (3,) statistics (and a
(D,) feature (D,) ones). Video features are described per channel on the [0, 1] scale with shape [3, 1, 1],
as LeRobot does for cameras.
"""

from __future__ import annotations

import numpy as np

from driftkit.data.format import STAT_QUANTILES

STATS_PREFIX = "stats/"
REQUIRED_STATS = ("min", "max", "mean", "std", "count")


def quantile_key(q: float) -> str:
    return f"q{round(q * 100):02d}"


def feature_stats(values: np.ndarray) -> dict[str, list]:
    """values [N, *S] (numeric) -> stats dict of lists (float64 maths, so the lists are exact to print)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[0] == 0:
        raise ValueError("cannot compute statistics of a feature with no frames")
    n = int(x.shape[0])
    x = x.reshape(-1, x.shape[-1])  # LeRobot's convention: statistics along the last axis only
    out = {
        "mean": x.mean(axis=0).tolist(),
        "std": x.std(axis=0).tolist(),
        "min": x.min(axis=0).tolist(),
        "max": x.max(axis=0).tolist(),
        "count": [n],
    }
    for q in STAT_QUANTILES:
        out[quantile_key(q)] = np.quantile(x, q, axis=0).tolist()
    return out


def image_stats(frames: np.ndarray, max_frames: int = 2000) -> dict[str, list]:
    """frames [N, H, W, 3] uint8 -> per-channel stats on [0, 1], each a [3, 1, 1] nested list.
    At most `max_frames` evenly spaced frames are used (cameras are large; statistics barely move)."""
    frames = np.asarray(frames)
    idx = np.linspace(0, len(frames) - 1, num=min(len(frames), max_frames)).round().astype(int)
    pixels = frames[idx].reshape(-1, frames.shape[-1]).astype(np.float64) / 255.0
    flat = feature_stats(pixels)
    return {k: (v if k == "count" else [[[c]] for c in v]) for k, v in flat.items()} | {"count": [len(frames)]}


def aggregate_stats(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-episode stats of one feature -> stats of all those episodes together: exact min, max, mean and
    std (count-weighted, parallel variance); quantiles are count-weighted means of the episodes' quantiles
    (what LeRobot's aggregate does, since quantiles do not combine exactly)."""
    if not parts:
        raise ValueError("cannot aggregate statistics of zero episodes")
    missing = sorted({k for p in parts for k in REQUIRED_STATS if k not in p})
    if missing:
        raise ValueError(f"per-episode statistics lack {missing}")
    mean = np.stack([np.asarray(p["mean"], np.float64) for p in parts])  # [E, *stat_shape]
    counts = np.asarray([float(np.asarray(p["count"]).reshape(-1)[0]) for p in parts])  # [E]
    w = counts.reshape(-1, *([1] * (mean.ndim - 1)))
    total = counts.sum()
    mu = (w * mean).sum(axis=0) / total
    var = np.stack([np.asarray(p["std"], np.float64) ** 2 for p in parts])
    out = {"min": np.min(np.stack([np.asarray(p["min"], np.float64) for p in parts]), axis=0),
           "max": np.max(np.stack([np.asarray(p["max"], np.float64) for p in parts]), axis=0),
           "mean": mu, "std": np.sqrt((w * (var + (mean - mu) ** 2)).sum(axis=0) / total),
           "count": np.asarray([total])}
    for key in (quantile_key(q) for q in STAT_QUANTILES):
        if all(key in p for p in parts):
            out[key] = (w * np.stack([np.asarray(p[key], np.float64) for p in parts])).sum(axis=0) / total
    return out


def stats_columns(stats: dict[str, dict[str, list]]) -> dict[str, list]:
    """{feature: {stat: value}} -> the flat `stats/<feature>/<stat>` columns of one episode's row."""
    return {f"{STATS_PREFIX}{key}/{name}": value for key, entry in stats.items() for name, value in entry.items()}


def stats_from_row(row: dict) -> dict[str, dict[str, np.ndarray]]:
    """An episode row's `stats/<feature>/<stat>` columns -> {feature: {stat: float64 array}}. Feature names
    hold no '/', so the stat name is the last part."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for column, value in row.items():
        if not column.startswith(STATS_PREFIX) or value is None or "/" not in column[len(STATS_PREFIX):]:
            continue
        key, name = column[len(STATS_PREFIX):].rsplit("/", 1)
        out.setdefault(key, {})[name] = np.asarray(value, dtype=np.float64)
    return out
