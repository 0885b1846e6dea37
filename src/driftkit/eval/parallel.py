"""Closed-loop evaluation spread over worker processes: one (policy, task, evaluation seed) unit per job.

Meta-World rendering is single-threaded and dominates a VLA's evaluation, so on an N-core machine N processes of
one thread each (`workers=N, threads=1`) run about N times as many episodes per second as one process. Each
worker loads a policy from its checkpoint once (spawned processes share nothing with the parent) and returns the
unit's EpisodeOutcomes; the parent keeps them in (policy, task, seed) order, so results do not depend on the
number of workers.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import fields
from pathlib import Path

from driftkit.eval.stats import EpisodeOutcome

_POLICIES: dict[str, object] = {}  # checkpoint path -> loaded policy, per worker process


def _init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _unit(job: tuple) -> list[EpisodeOutcome]:
    from driftkit.eval.metaworld import EvalConfig, evaluate_policy
    from driftkit.policy import load_policy

    label, checkpoint, settings, task, seed, task_map = job
    if checkpoint not in _POLICIES:
        _POLICIES[checkpoint] = load_policy(checkpoint)
    cfg = EvalConfig(**{**settings, "tasks": [task], "seeds": [seed]})
    return evaluate_policy(_POLICIES[checkpoint], label, cfg, task_map, progress=False)


def evaluate_in_workers(checkpoints: dict[str, str | Path], cfg, task_maps: dict, workers: int,
                        threads: int = 1, progress: bool = True) -> list[EpisodeOutcome]:
    """{label: checkpoint dir} -> every (task, seed, episode) of cfg for each, run by `workers` processes of
    `threads` torch threads each."""
    from tqdm import tqdm

    if workers < 1 or threads < 1:
        raise ValueError(f"got workers={workers}, threads={threads}; both must be >= 1")
    settings = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.init}
    jobs = [(label, str(path), settings, task, seed, task_maps.get(label))
            for label, path in checkpoints.items() for task in cfg.tasks_resolved for seed in cfg.seeds]
    outcomes: list[EpisodeOutcome] = []
    ctx = multiprocessing.get_context("spawn")  # MuJoCo's GL context and torch threads do not survive a fork
    with ctx.Pool(min(workers, len(jobs)), initializer=_init, initargs=(threads,)) as pool:
        for part in tqdm(pool.imap(_unit, jobs), total=len(jobs), desc="eval units", disable=not progress):
            outcomes.extend(part)
    return outcomes
