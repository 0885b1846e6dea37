"""Closed-loop evaluation on Meta-World: predict a chunk of T actions, execute the first `n_action_steps`
open-loop, observe, predict again, until success or the step limit.

Any policy of driftkit.policy runs here through its one contract:
    policy.predict(obs_batch, num_samples=K, steps=S, select=..., generator=..., timer=...) -> actions [B, T, D]
with obs_batch in LeRobot's keys: "observation.state" [1, 39] float32, "task" [the instruction],
"task_index" [1] long (when the policy was trained on several tasks), and "observation.images.corner2"
[1, 3, H, W] float32 in [0, 1] for policies that read that camera (the one Meta-World renders here);
policy.nfe(steps) gives the network evaluations per chunk. The sampling noise of a stochastic decoder comes
from a generator seeded by (task, evaluation seed, EvalConfig.sample_seed), so an evaluation repeats exactly,
in one process or spread over workers, and every checkpoint meets the same noise stream on the same unit.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from driftkit.envs.tasks import DIFFICULTY, resolve_tasks
from driftkit.errors import check_fraction, check_positive
from driftkit.eval.stats import EpisodeOutcome, summarize

from driftkit.policy.keys import STATE_KEY, TASK_INDEX_KEY, TASK_KEY

CAMERA_KEY = "observation.images.corner2"  # the camera MetaWorldEnv renders


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
    temperature: float | None = None
    """Sampling temperature of stochastic decoders (passed through to predict; 0 = the deterministic output at
    the noise mean); None = the decoder's own."""
    sample_seed: int = 0
    """Seed of the sampling noise: each (task, evaluation seed) unit draws it from a generator seeded by the
    unit and this number, so a run repeats exactly; another value gives other noise on the same episodes."""
    image: bool = False
    """Render the corner2 camera for policies that take images."""
    image_size: int = 64
    visual_keep: float | None = None
    """VLM policies: keep this share of each image's visual tokens, merging the others into one
    (driftkit.backbones.reduce; training-free); None = all tokens."""
    tasks_resolved: list[str] = field(init=False)

    def __post_init__(self):
        self.tasks_resolved = resolve_tasks(self.tasks)
        for name in ("episodes", "n_action_steps", "max_steps", "num_samples", "image_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"got {name}={getattr(self, name)!r}, must be > 0")
        if not self.seeds:
            raise ValueError("got seeds=[], give at least one evaluation seed")
        self.seeds = [int(s) for s in self.seeds]
        if self.temperature is not None:
            check_positive("temperature", self.temperature, allow_zero=True)
        if self.visual_keep is not None:
            check_fraction("visual_keep", self.visual_keep)


def policy_nfe(policy, steps: int | None) -> int | None:
    return int(policy.nfe(steps)) if hasattr(policy, "nfe") else None


def policy_image_size(policy) -> int:
    """Side of the camera image a policy reads (0 = none): its config's image_size or image_shape."""
    config = getattr(policy, "config", None)
    cameras = [c for c in getattr(config, "cameras", ()) if c != CAMERA_KEY]
    if cameras:
        raise ValueError(f"the policy reads cameras {cameras}; Meta-World renders only {CAMERA_KEY!r} here")
    shape = getattr(config, "image_shape", ())
    if shape:
        if shape[1] != shape[2]:
            raise ValueError(f"the policy was trained on {shape[1]}x{shape[2]} images; the renders are square")
        return int(shape[1])
    return int(getattr(config, "image_size", 0) or 0)


def obs_batch(obs, task_index: int | None, instruction: str = "") -> dict:
    """One environment observation -> a batch of one for policy.predict."""
    import torch

    batch = {STATE_KEY: torch.as_tensor(obs.state, dtype=torch.float32)[None], TASK_KEY: [instruction]}
    if task_index is not None:
        batch[TASK_INDEX_KEY] = torch.tensor([task_index], dtype=torch.long)
    if obs.image is not None:
        batch[CAMERA_KEY] = torch.as_tensor(obs.image).permute(2, 0, 1)[None].float() / 255.0
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
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    """Per stage of predict (preprocess, prefix, decoder), the milliseconds of every call."""


def sampling_generator(policy, task: str, seed: int, sample_seed: int = 0):
    """The generator of a (task, evaluation seed) unit's sampling noise, on the policy's device; its seed
    depends on the unit and sample_seed alone (not on the process or on the units run before it)."""
    import torch

    device = getattr(policy, "device", None) or "cpu"
    return torch.Generator(device=device).manual_seed(zlib.crc32(f"{task}/{seed}/{sample_seed}".encode()))


def run_episode(policy, env, cfg: EvalConfig, task_index: int | None = None, generator=None) -> EpisodeRun:
    """One closed-loop episode on a MetaWorldEnv-like env (reset() -> obs, step(a) -> .obs/.success/.truncated);
    generator: the torch.Generator of the decoder's sampling noise (None: torch's global one)."""
    import torch

    from driftkit.timing import StageTimer

    obs = env.reset()
    run = EpisodeRun(False, 0, [])
    instruction = getattr(env, "instruction", "")
    timer = StageTimer(getattr(policy, "device", None))
    while run.length < cfg.max_steps:
        with torch.no_grad(), timer.stage("chunk"):
            pred = policy.predict(obs_batch(obs, task_index, instruction), num_samples=cfg.num_samples,
                                  steps=cfg.steps, select=cfg.select, generator=generator, timer=timer,
                                  temperature=cfg.temperature)
            actions = chunk_to_numpy(pred)
        for stage, ms in timer.reset().items():
            (run.chunk_ms if stage == "chunk" else run.stage_ms.setdefault(stage, [])).append(ms)
        for action in actions[: cfg.n_action_steps]:
            step = env.step(action)
            obs, run.length = step.obs, run.length + 1
            if step.success:
                run.success = True
                return run
            if run.length >= cfg.max_steps or step.truncated:
                return run
    return run


def evaluate_policy(policy, label: str, cfg: EvalConfig, task_map: dict[str, int] | None = None,
                    progress: bool = True) -> list[EpisodeOutcome]:
    """Every (task, seed, episode) of `cfg` for one policy. task_map: instruction -> task_index used in
    training (see driftkit.data.task_index_map); None feeds no task_index."""
    from tqdm import tqdm

    from driftkit.envs.metaworld import MetaWorldEnv

    if cfg.visual_keep is not None:
        from driftkit.backbones.reduce import TokenReduction

        if getattr(policy, "backbone", None) is None:
            raise ValueError(f"got visual_keep={cfg.visual_keep}, but {label!r} is not a VLM policy")
        policy.backbone.set_reduction(TokenReduction(cfg.visual_keep, merged=1))
    nfe = policy_nfe(policy, cfg.steps)
    # A policy trained on images says so in its config; render at its size even without cfg.image.
    policy_image = policy_image_size(policy)
    image, image_size = cfg.image or policy_image > 0, policy_image or cfg.image_size
    outcomes = []
    bar = tqdm(total=len(cfg.tasks_resolved) * len(cfg.seeds) * cfg.episodes, desc=f"eval {label}",
               disable=not progress)
    for task in cfg.tasks_resolved:
        for seed in cfg.seeds:
            with MetaWorldEnv(task, seed=seed, image=image, image_size=image_size,
                              max_steps=cfg.max_steps) as env:
                task_index = lookup_task_index(task_map, env.instruction)
                generator = sampling_generator(policy, task, seed, cfg.sample_seed)
                for episode in range(cfg.episodes):
                    run = run_episode(policy, env, cfg, task_index, generator)
                    outcomes.append(EpisodeOutcome(decoder=label, task=task, seed=seed, episode=episode,
                                                   success=run.success, length=run.length,
                                                   chunk_ms=run.chunk_ms, nfe=nfe, stage_ms=run.stage_ms))
                    bar.update(1)
                    bar.set_postfix(success=f"{np.mean([o.success for o in outcomes]):.2f}")
    bar.close()
    return outcomes


def evaluate(policies: dict, cfg: EvalConfig, out_dir=None, task_maps: dict | None = None,
             progress: bool = True, workers: int = 1) -> dict:
    """Evaluate each labelled policy ({label: policy, or its checkpoint directory}); task_maps: {label:
    instruction -> task_index}. workers > 1 spreads the (policy, task, seed) units over that many processes of
    one torch thread each (driftkit.eval.parallel); it needs checkpoint directories, not loaded policies. With
    `out_dir`, write results.json, results.md and success_vs_latency.png there. Returns the results."""
    from driftkit.eval.report import markdown_table, plot_success_vs_latency, results_dict, write_json

    task_maps = task_maps or {}
    paths = {label: p for label, p in policies.items() if isinstance(p, (str, os.PathLike))}
    if workers > 1:
        if len(paths) != len(policies):
            raise ValueError(f"workers={workers} loads each policy in its worker processes: give checkpoint "
                             f"directories, got loaded policies for {sorted(set(policies) - set(paths))}")
        from driftkit.eval.parallel import evaluate_in_workers

        outcomes = evaluate_in_workers(paths, cfg, task_maps, workers, progress=progress)
    else:
        from driftkit.policy import load_policy

        loaded = {label: load_policy(p) if label in paths else p for label, p in policies.items()}
        outcomes = [o for label, policy in loaded.items()
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
