"""Success statistics of closed-loop evaluation: pure functions over per-episode records.

For a group of n episodes with k successes: success rate p = k / n and its binomial standard error
sqrt(p (1 - p) / n). Seed spread is the sample standard deviation (ddof 1) of the per-seed success rates,
NaN with a single seed. Latency is the median over all chunks of the milliseconds one predict() took.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np


@dataclass
class EpisodeOutcome:
    decoder: str
    """Label of the evaluated policy (decoder name, or checkpoint name when two share a decoder)."""
    task: str
    seed: int
    episode: int
    success: bool
    length: int
    """Environment steps until success or the step limit."""
    chunk_ms: list[float]
    """Wall-clock milliseconds of every predict() call in the episode."""
    nfe: int | None
    """Network evaluations per predicted chunk (policy.nfe), None when unknown."""
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    """Per stage of predict (preprocess, prefix, decoder): the milliseconds of every call."""


@dataclass
class GroupSummary:
    decoder: str
    group: str
    """A task name, a difficulty split, or "all"."""
    n_tasks: int
    n_episodes: int
    success_rate: float
    success_se: float
    """Binomial standard error sqrt(p (1 - p) / n)."""
    seed_std: float
    """Standard deviation of the per-seed success rates (NaN with one seed)."""
    n_seeds: int
    mean_length: float
    chunk_ms_median: float
    nfe: int | None
    stage_ms_median: dict[str, float] = field(default_factory=dict)
    """Median milliseconds per stage of predict (preprocess, prefix, decoder)."""


def success_rate(successes) -> float:
    s = np.asarray(successes, dtype=np.float64)
    if s.size == 0:
        raise ValueError("success_rate needs at least one episode")
    return float(s.mean())


def binomial_se(p: float, n: int) -> float:
    """Standard error of a success rate p measured over n independent episodes."""
    if n <= 0:
        raise ValueError(f"got n={n!r}, must be > 0")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"got p={p!r}, must be in [0, 1]")
    return math.sqrt(p * (1.0 - p) / n)


def seed_spread(rates) -> float:
    """Sample std (ddof 1) of per-seed success rates; NaN when fewer than two seeds."""
    r = np.asarray(rates, dtype=np.float64)
    return float(r.std(ddof=1)) if r.size >= 2 else float("nan")


def summarize_group(outcomes: list[EpisodeOutcome], decoder: str, group: str) -> GroupSummary:
    """Statistics of one decoder over the given outcomes (all its episodes of one task or split)."""
    if not outcomes:
        raise ValueError(f"no episodes for decoder {decoder!r}, group {group!r}")
    n = len(outcomes)
    p = success_rate([o.success for o in outcomes])
    by_seed: dict[int, list[bool]] = defaultdict(list)
    for o in outcomes:
        by_seed[o.seed].append(o.success)
    ms = [m for o in outcomes for m in o.chunk_ms]
    nfes = {o.nfe for o in outcomes}
    return GroupSummary(
        decoder=decoder, group=group, n_tasks=len({o.task for o in outcomes}), n_episodes=n,
        success_rate=p, success_se=binomial_se(p, n),
        seed_std=seed_spread([success_rate(v) for _, v in sorted(by_seed.items())]),
        n_seeds=len(by_seed), mean_length=float(np.mean([o.length for o in outcomes])),
        chunk_ms_median=float(np.median(ms)) if ms else float("nan"),
        nfe=nfes.pop() if len(nfes) == 1 else None,
        stage_ms_median={k: float(np.median([m for o in outcomes for m in o.stage_ms.get(k, [])]))
                         for k in dict.fromkeys(k for o in outcomes for k in o.stage_ms)},
    )


def summarize(outcomes: list[EpisodeOutcome], splits: dict[str, tuple[str, ...]]) -> list[GroupSummary]:
    """Per decoder: one row per task, one per split that contains an evaluated task, and "all".
    A split's rate pools the episodes of its evaluated tasks (equal episodes per task make it the mean of
    the task rates)."""
    rows = []
    for decoder in dict.fromkeys(o.decoder for o in outcomes):
        mine = [o for o in outcomes if o.decoder == decoder]
        tasks = list(dict.fromkeys(o.task for o in mine))
        rows += [summarize_group([o for o in mine if o.task == t], decoder, t) for t in tasks]
        for split, members in splits.items():
            chosen = [o for o in mine if o.task in members]
            if chosen:
                rows.append(summarize_group(chosen, decoder, split))
        rows.append(summarize_group(mine, decoder, "all"))
    return rows


def seed_points(outcomes: list[EpisodeOutcome]) -> list[dict]:
    """One point per (decoder, seed): success rate over all its tasks and median ms per chunk."""
    points = []
    for decoder, seed in dict.fromkeys((o.decoder, o.seed) for o in outcomes):
        group = [o for o in outcomes if o.decoder == decoder and o.seed == seed]
        ms = [m for o in group for m in o.chunk_ms]
        points.append({"decoder": decoder, "seed": seed, "success_rate": success_rate([o.success for o in group]),
                       "chunk_ms_median": float(np.median(ms)) if ms else float("nan")})
    return points
