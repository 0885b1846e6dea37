"""Closed-loop evaluation on Meta-World: predict a chunk of T actions, execute the first `n_action_steps`
open-loop, observe, predict again, until success or the step limit.

The policy follows the contract of driftkit.policy.Policy:
    policy.predict(obs_batch, num_samples=K, steps=S, select=...) -> actions [B, T, D]
with obs_batch = {"observation.state": [B, 39] float32, "task_index": [B] long (when the policy was trained
on several tasks), "observation.image": [B, 3, H, W] float32 in [0, 1] (with images)};
policy.decoder.nfe(steps) gives the network evaluations per chunk.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from driftkit.envs.tasks import DIFFICULTY, resolve_tasks
from driftkit.eval.stats import EpisodeOutcome, summarize

STATE_KEY = "observation.state"
IMAGE_KEY = "observation.image"
TASK_KEY = "task_index"


@dataclass
class EvalConfig:
    tasks: list[str]
    """Task names or groups (see driftkit.envs.tasks.resolve_tasks)."""
    episodes: int = 10
    """Episodes per task and seed."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Environment seeds; each fixes a sequence of goal placements."""
    n_action_steps: int = 8
    """Actions of each predicted chunk executed before replanning."""
    max_steps: int = 300
    """Step limit of an episode."""
    num_samples: int = 1
    """K, samples drawn per chunk (the policy's `select` picks one)."""
    steps: int | None = None
    """Integration steps of iterative decoders (None = the decoder's default)."""
    select: str | None = None
    """How the policy picks one of K samples (passed through to predict)."""
    image: bool = False
    """Render the corner2 camera for policies that take images."""
    image_size: int = 64
    tasks_resolved: list[str] = field(init=False)

    def __post_init__(self):
        self.tasks_resolved = resolve_tasks(self.tasks)
        for name in ("episodes", "n_action_steps", "max_steps", "num_samples", "image_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"got {name}={getattr(self, name)!r}, must be > 0")
        if not self.seeds:
            raise ValueError("got seeds=[], give at least one evaluation seed")
        self.seeds = [int(s) for s in self.seeds]


def policy_nfe(policy, steps: int | None) -> int | None:
    decoder = getattr(policy, "decoder", None)
    return int(decoder.nfe(steps)) if decoder is not None and hasattr(decoder, "nfe") else None


def obs_batch(obs, task_index: int | None) -> dict:
    """One environment observation -> a batch of one for policy.predict."""
    import torch

    batch = {STATE_KEY: torch.as_tensor(obs.state, dtype=torch.float32)[None]}
    if task_index is not None:
        batch[TASK_KEY] = torch.tensor([task_index], dtype=torch.long)
    if obs.image is not None:
        batch[IMAGE_KEY] = torch.as_tensor(obs.image).permute(2, 0, 1)[None].float() / 255.0
    return batch


def lookup_task_index(task_map: dict[str, int] | None, instruction: str) -> int | None:
    """task_map: language instruction -> task_index of the training data (None: the policy takes no task)."""
    if task_map is None:
        return None
    if instruction not in task_map:
        raise ValueError(f"the policy's training data has no task {instruction!r}; it knows {sorted(task_map)}")
    return int(task_map[instruction])


def chunk_to_numpy(pred) -> np.ndarray:
    """predict() output -> [T, D] actions of the single batch element (accepts [B, T, D] or [B, K, T, D]
    tensors/arrays, or an object with an `.actions` field)."""
    pred = getattr(pred, "actions", pred)
    if hasattr(pred, "detach"):
        pred = pred.detach().float().cpu().numpy()
    pred = np.asarray(pred, dtype=np.float32)
    if pred.ndim == 4:
        pred = pred[:, 0]
    if pred.ndim != 3 or pred.shape[0] != 1:
        raise ValueError(f"policy.predict returned shape {list(pred.shape)}, expected [1, T, D]")
    return pred[0]


@dataclass
class EpisodeRun:
    success: bool
    length: int
    """Environment steps taken."""
    chunk_ms: list[float]
    """Milliseconds of every predict call (including the copy to the CPU, which waits for a GPU)."""


def run_episode(policy, env, cfg: EvalConfig, task_index: int | None = None) -> EpisodeRun:
    """One closed-loop episode on a MetaWorldEnv-like env (reset() -> obs, step(a) -> .obs/.success/.truncated)."""
    import torch

    obs = env.reset()
    chunk_ms: list[float] = []
    t = 0
    while t < cfg.max_steps:
        start = time.perf_counter()
        with torch.no_grad():
            pred = policy.predict(obs_batch(obs, task_index), num_samples=cfg.num_samples,
                                  steps=cfg.steps, select=cfg.select)
        actions = chunk_to_numpy(pred)
        chunk_ms.append(1000.0 * (time.perf_counter() - start))
        for action in actions[: cfg.n_action_steps]:
            step = env.step(action)
            obs, t = step.obs, t + 1
            if step.success:
                return EpisodeRun(True, t, chunk_ms)
            if t >= cfg.max_steps or step.truncated:
                return EpisodeRun(False, t, chunk_ms)
    return EpisodeRun(False, t, chunk_ms)


def evaluate_policy(policy, label: str, cfg: EvalConfig, task_map: dict[str, int] | None = None,
                    progress: bool = True) -> list[EpisodeOutcome]:
    """Every (task, seed, episode) of `cfg` for one policy. task_map: instruction -> task_index used in
    training (see driftkit.data.task_index_map); None feeds no task_index."""
    from tqdm import tqdm

    from driftkit.envs.metaworld import MetaWorldEnv

    nfe = policy_nfe(policy, cfg.steps)
    # A policy trained on images says so in its config; render at its size even without cfg.image.
    policy_image = int(getattr(getattr(policy, "config", None), "image_size", 0) or 0)
    image, image_size = cfg.image or policy_image > 0, policy_image or cfg.image_size
    outcomes = []
    bar = tqdm(total=len(cfg.tasks_resolved) * len(cfg.seeds) * cfg.episodes, desc=f"eval {label}",
               disable=not progress)
    for task in cfg.tasks_resolved:
        for seed in cfg.seeds:
            with MetaWorldEnv(task, seed=seed, image=image, image_size=image_size,
                              max_steps=cfg.max_steps) as env:
                task_index = lookup_task_index(task_map, env.instruction)
                for episode in range(cfg.episodes):
                    run = run_episode(policy, env, cfg, task_index)
                    outcomes.append(EpisodeOutcome(decoder=label, task=task, seed=seed, episode=episode,
                                                   success=run.success, length=run.length,
                                                   chunk_ms=run.chunk_ms, nfe=nfe))
                    bar.update(1)
                    bar.set_postfix(success=f"{np.mean([o.success for o in outcomes]):.2f}")
    bar.close()
    return outcomes


def evaluate(policies: dict, cfg: EvalConfig, out_dir=None, task_maps: dict | None = None,
             progress: bool = True) -> dict:
    """Evaluate each labelled policy ({label: policy}); task_maps: {label: instruction -> task_index}.
    With `out_dir`, write results.json, results.md and success_vs_latency.png there. Returns the results."""
    from driftkit.eval.report import markdown_table, plot_success_vs_latency, results_dict, write_json

    task_maps = task_maps or {}
    outcomes = [o for label, policy in policies.items()
                for o in evaluate_policy(policy, label, cfg, task_maps.get(label), progress)]
    summary = summarize(outcomes, DIFFICULTY)
    results = results_dict(outcomes, summary, asdict(cfg))
    if out_dir is not None:
        from pathlib import Path

        out = Path(out_dir)
        write_json(out / "results.json", results)
        (out / "results.md").write_text(markdown_table(summary), encoding="utf-8")
        plot_success_vs_latency(results["seed_points"], out / "success_vs_latency.png")
    return results
