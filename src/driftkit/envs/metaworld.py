"""Meta-World (v3 tasks) behind a small interface; the only module of driftkit that imports metaworld.

    env = MetaWorldEnv("reach-v3", seed=0, image=True)
    obs = env.reset()                 # Observation(state [39] float32, image [64, 64, 3] uint8 or None)
    step = env.step(action)           # action [4] in [-1, 1] -> StepResult(obs, success, truncated)
    expert = make_expert("reach-v3")  # obs.state -> action [4], the library's scripted policy

Each reset draws a new goal/object placement from the task's seeded sampler, so `seed` fixes the
sequence of episodes. Camera images come from the corner2 camera with shadows and reflections off (about
4x faster on a software renderer) and are flipped upright (MuJoCo renders them upside down).
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np

from driftkit.envs.tasks import instruction, resolve_tasks

# MuJoCo picks its GL backend at import; on Linux EGL renders headless (set MUJOCO_GL=osmesa to use the
# software fallback). Other platforms keep MuJoCo's own default.
if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import metaworld  # noqa: E402,F401  (registers the Meta-World/* environments)
import mujoco  # noqa: E402
from metaworld.policies import ENV_POLICY_MAP  # noqa: E402

STATE_DIM = 39
ACTION_DIM = 4
CAMERA = "corner2"
MAX_PATH_LENGTH = 500  # Meta-World refuses to step an episode further


@dataclass
class Observation:
    state: np.ndarray
    """[39] float32: hand xyz, gripper opening, two object poses, goal xyz (Meta-World's layout)."""
    image: np.ndarray | None = None
    """[H, W, 3] uint8 upright corner2 view, or None when images are off."""


@dataclass
class StepResult:
    obs: Observation
    success: bool
    """The task's success flag after this step."""
    truncated: bool
    """The environment's own step limit was reached."""


class MetaWorldEnv:
    def __init__(self, task: str, seed: int = 0, image: bool = False, image_size: int = 64,
                 max_steps: int = 500):
        (self.task,) = resolve_tasks([task])
        self.instruction = instruction(self.task)
        self.seed, self.image = int(seed), bool(image)
        if not 0 < max_steps <= MAX_PATH_LENGTH:
            raise ValueError(f"got max_steps={max_steps!r}, must be in 1..{MAX_PATH_LENGTH} (Meta-World's limit)")
        kwargs = {"max_episode_steps": int(max_steps)}
        if self.image:
            kwargs.update(render_mode="rgb_array", camera_name=CAMERA, width=image_size, height=image_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._env = gym.make("Meta-World/MT1", env_name=self.task, seed=self.seed, **kwargs)
        self._first_reset = True
        self._scene_flags_set = False

    def _observe(self, state: np.ndarray) -> Observation:
        image = None
        if self.image:
            if not self._scene_flags_set:
                viewer = self._env.unwrapped.mujoco_renderer._get_viewer("rgb_array")
                viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
                self._scene_flags_set = True
            image = np.ascontiguousarray(self._env.render()[::-1])
        return Observation(state=np.asarray(state, dtype=np.float32), image=image)

    def reset(self) -> Observation:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Seed once: later resets continue the seeded sequence of goal placements.
            state, _ = self._env.reset(seed=self.seed) if self._first_reset else self._env.reset()
        self._first_reset = False
        return self._observe(state)

    def step(self, action: np.ndarray) -> StepResult:
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(ACTION_DIM), -1.0, 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, _, _, truncated, info = self._env.step(action)
        return StepResult(obs=self._observe(state), success=bool(info.get("success", 0.0)),
                          truncated=bool(truncated))

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> "MetaWorldEnv":
        return self

    def __exit__(self, *_) -> None:
        self.close()


def make_expert(task: str):
    """The scripted expert of a task: state [39] -> action [4] clipped to [-1, 1]."""
    (task,) = resolve_tasks([task])
    policy = ENV_POLICY_MAP[task]()

    def act(state: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            action = policy.get_action(np.asarray(state, dtype=np.float64))
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)

    return act
