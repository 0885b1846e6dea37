"""Demonstrations from Meta-World's scripted experts, saved as a LeRobotDataset v3.0.

Two options make the demonstrations less trivial to imitate:
- noise_std: Gaussian noise added to every executed action (the noisy action is what is recorded).
- alt_path_prob: with this probability an episode first follows a left or a right route (equal odds) and only
  then hands control to the expert: a via-point beside the straight line from the hand to its first target, or,
  on the wall tasks, a path round one end of the wall (driftkit.envs.routes). The same observation can then be
  followed by a left route, a right route or the expert's own path: the action distribution is multimodal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from driftkit.data import Feature, LeRobotWriter
from driftkit.envs.routes import RouteFollower, route_step_limit, route_waypoints
from driftkit.envs.tasks import resolve_tasks

STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_KEY = "observation.images.corner2"
FPS = 80  # Meta-World's control frequency (frame_skip 5 at dt 0.0025)


@dataclass
class CollectConfig:
    tasks: list[str]
    """Task names or groups (see driftkit.envs.tasks.resolve_tasks)."""
    episodes: int = 20
    """Episodes to keep per task."""
    noise_std: float = 0.0
    """Std of Gaussian noise added to each executed action (before clipping to [-1, 1])."""
    alt_path_prob: float = 0.0
    """Probability that an episode starts with a left or right detour."""
    detour_offset: float = 0.12
    """Sideways distance (metres) of the detour via-point from the straight path (not used by wall routes)."""
    max_steps: int = 300
    """Step limit of an episode; episodes end at the first success."""
    success_only: bool = True
    """Keep only episodes that reach success."""
    max_attempts: int | None = None
    """Episodes to try per task before giving up (default 3 x episodes)."""
    image: bool = False
    """Record the corner2 camera as a video feature."""
    image_size: int = 64
    seed: int = 100
    """Environment seed; evaluation uses small seeds (0, 1, 2...), so the default keeps goals apart."""
    tasks_resolved: list[str] = field(init=False)

    def __post_init__(self):
        self.tasks_resolved = resolve_tasks(self.tasks)
        for name in ("episodes", "max_steps", "image_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"got {name}={getattr(self, name)!r}, must be > 0")
        if self.noise_std < 0:
            raise ValueError(f"got noise_std={self.noise_std!r}, must be >= 0")
        if not 0.0 <= self.alt_path_prob <= 1.0:
            raise ValueError(f"got alt_path_prob={self.alt_path_prob!r}, must be in [0, 1]")


@dataclass
class EpisodeRecord:
    task: str
    success: bool
    detour: int
    """-1 left, +1 right, 0 direct."""
    states: np.ndarray  # [N, 39]
    actions: np.ndarray  # [N, 4]
    images: np.ndarray | None  # [N, H, W, 3]
    via_point: np.ndarray | None  # [3] the route's first waypoint


@dataclass
class CollectSummary:
    root: str
    kept: dict[str, int]
    attempts: dict[str, int]
    detours: list[int]
    """Detour side of every kept episode, in dataset order."""


def run_demo(env, expert, cfg: CollectConfig, rng: np.random.Generator) -> EpisodeRecord:
    """One episode: optional left/right route (driftkit.envs.routes), then the expert; noise on every action."""
    obs = env.reset()
    detour = int(rng.choice([-1, 1])) if rng.random() < cfg.alt_path_prob else 0
    waypoints = route_waypoints(obs.state, env.task, detour, cfg.detour_offset)
    follow = RouteFollower(waypoints, route_step_limit(env.task))
    states, actions, images, success = [], [], [], False
    for _ in range(cfg.max_steps):
        action = follow(obs.state, expert(obs.state))
        if cfg.noise_std > 0:
            action = action + rng.normal(0.0, cfg.noise_std, size=action.shape)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        states.append(obs.state)
        actions.append(action)
        if obs.image is not None:
            images.append(obs.image)
        step = env.step(action)
        obs = step.obs
        if step.success:
            success = True
            break
    return EpisodeRecord(task=env.task, success=success, detour=detour, states=np.stack(states),
                         actions=np.stack(actions), images=np.stack(images) if images else None,
                         via_point=waypoints[0] if len(waypoints) else None)


def collect(cfg: CollectConfig, out: str | Path, overwrite: bool = False, progress: bool = True) -> CollectSummary:
    """Collect `cfg.episodes` demonstrations per task into a LeRobotDataset at `out`."""
    from tqdm import tqdm

    from driftkit.envs.metaworld import ACTION_DIM, STATE_DIM, MetaWorldEnv, make_expert

    features = {STATE_KEY: Feature("float32", (STATE_DIM,)),
                ACTION_KEY: Feature("float32", (ACTION_DIM,), names=("dx", "dy", "dz", "gripper"))}
    if cfg.image:
        features[IMAGE_KEY] = Feature("video", (cfg.image_size, cfg.image_size, 3),
                                      names=("height", "width", "channels"))
    writer = LeRobotWriter(out, fps=FPS, features=features, robot_type="sawyer", overwrite=overwrite)
    summary = CollectSummary(root=str(out), kept={}, attempts={}, detours=[])
    rng = np.random.default_rng(cfg.seed)
    max_attempts = cfg.max_attempts or 3 * cfg.episodes
    bar = tqdm(total=cfg.episodes * len(cfg.tasks_resolved), desc="collect", disable=not progress)
    for task in cfg.tasks_resolved:
        expert = make_expert(task)
        kept = attempts = 0
        with MetaWorldEnv(task, seed=cfg.seed, image=cfg.image, image_size=cfg.image_size,
                          max_steps=cfg.max_steps) as env:
            while kept < cfg.episodes and attempts < max_attempts:
                attempts += 1
                ep = run_demo(env, expert, cfg, rng)
                if cfg.success_only and not ep.success:
                    continue
                frames = {STATE_KEY: ep.states, ACTION_KEY: ep.actions}
                if cfg.image:
                    frames[IMAGE_KEY] = ep.images
                writer.add_episode(frames, task=env.instruction)
                summary.detours.append(ep.detour)
                kept += 1
                bar.update(1)
        summary.kept[task], summary.attempts[task] = kept, attempts
    bar.close()
    if not summary.detours:
        raise RuntimeError(f"no episode was kept for {cfg.tasks_resolved} after {summary.attempts} attempts")
    writer.close()
    _write_manifest(Path(out), cfg, summary)
    return summary


def _write_manifest(root: Path, cfg: CollectConfig, summary: CollectSummary) -> None:
    """meta/driftkit_collection.json: how the data was made (LeRobot readers ignore extra meta files)."""
    import json

    config = asdict(cfg)
    (root / "meta" / "driftkit_collection.json").write_text(
        json.dumps({"config": config, "kept": summary.kept, "attempts": summary.attempts,
                    "detours": summary.detours}, indent=2), encoding="utf-8")
