"""Routes: the waypoints an episode visits before the scripted expert takes over, and the averaged-route check.

A route is side -1 (left), +1 (right) or 0 (the expert's own path). Two kinds of waypoints:

- detour (every task but the wall ones): one via-point halfway along the hand's straight path to its first
  target, `offset` metres to the side. The mean of the left and right detours is the straight path, which the
  expert itself takes: regressing to the mean still succeeds.
- wall (WALL_TASKS): round one end of the wall below its top, then past it, then the expert. The wall of
  sawyer_reach_wall_v3.xml is a box centred at (0.1, 0.75) of half-size (0.12, 0.01, 0.06): x in [-0.02, 0.22],
  top at z = 0.12. The mean of the two routes runs into the wall's middle, so an averaging policy fails; the
  expert's own route (side 0) goes over the top.

`averaged_route_check` measures that claim: from one initial state it records the left and the right route,
replays the step-wise mean of their actions open loop, and reports whether each of the three succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WALL_X = (-0.02, 0.22)
"""x extent of the wall (metres) in the wall tasks' assets."""
WALL_Y = 0.75
_WALL_MARGIN = 0.10  # how far past an end of the wall the route passes
_WALL_Z = 0.07  # route height, below the wall's top (0.12)
_WALL_PAST_Y = 0.86  # y the route reaches before the expert takes over (beyond the wall and its expert zone)
WALL_TASKS = ("reach-wall-v3",)
"""Tasks whose left/right routes go round a wall (the others get a sideways detour)."""
GAIN = 10.0
REACHED = 0.02  # metres: a waypoint counts as reached within this distance
DETOUR_MAX_STEPS = 40
"""Steps a detour steers toward its via-point before the expert takes over anyway."""
WALL_MAX_STEPS = 60
"""Steps per waypoint of a wall route (its legs are up to 0.36 m long; a step moves the hand at most ~1 cm)."""


def detour_via_point(state: np.ndarray, task: str, side: int, offset: float) -> np.ndarray:
    """Halfway along the hand's straight path to its first target, shifted `offset` metres sideways in
    the table plane (side -1 = left of the direction of travel, +1 = right)."""
    hand = state[0:3].astype(np.float64)
    target = state[36:39] if task.startswith("reach") else state[4:7]
    direction = target[:2] - hand[:2]
    norm = np.linalg.norm(direction)
    direction = direction / norm if norm > 1e-6 else np.array([0.0, 1.0])
    left = np.array([-direction[1], direction[0]])
    via = hand.copy()
    via[:2] = hand[:2] + 0.5 * (target[:2] - hand[:2]) - side * offset * left
    return via


def wall_waypoints(state: np.ndarray, side: int) -> np.ndarray:
    """[2, 3]: beside one end of the wall (side -1 = the low-x end) at the hand's y, then past the wall."""
    x = WALL_X[0] - _WALL_MARGIN if side < 0 else WALL_X[1] + _WALL_MARGIN
    y = min(float(state[1]), WALL_Y - 0.1)
    return np.array([[x, y, _WALL_Z], [x, _WALL_PAST_Y, _WALL_Z]])


def route_step_limit(task: str) -> int:
    """Steps the route of `task` steers toward one waypoint at most."""
    return WALL_MAX_STEPS if task in WALL_TASKS else DETOUR_MAX_STEPS


def route_waypoints(state: np.ndarray, task: str, side: int, offset: float) -> np.ndarray:
    """[N, 3] waypoints of route `side` from the initial state (N = 0 for side 0, the expert's own path)."""
    if side not in (-1, 0, 1):
        raise ValueError(f"got side={side!r}, must be -1 (left), 0 (expert) or 1 (right)")
    if side == 0:
        return np.zeros((0, 3))
    if task in WALL_TASKS:
        return wall_waypoints(state, side)
    return detour_via_point(state, task, side, offset)[None]


class RouteFollower:
    """Steers the hand through `waypoints` with a proportional controller, then lets the expert act. A waypoint
    is left once reached or after `max_steps` steps toward it."""

    def __init__(self, waypoints: np.ndarray, max_steps: int):
        self.waypoints = list(np.asarray(waypoints, dtype=np.float64))
        self.max_steps = int(max_steps)
        self.steps_on_current = 0

    def __call__(self, state: np.ndarray, expert_action: np.ndarray) -> np.ndarray:
        while self.waypoints:
            if (np.linalg.norm(self.waypoints[0] - state[:3]) < REACHED
                    or self.steps_on_current >= self.max_steps):
                self.waypoints.pop(0)
                self.steps_on_current = 0
                continue
            self.steps_on_current += 1
            action = np.array(expert_action, dtype=np.float32, copy=True)
            action[:3] = np.clip(GAIN * (self.waypoints[0] - state[:3]), -1.0, 1.0)
            return action
        return expert_action


@dataclass
class RouteCheck:
    task: str
    seed: int
    left_success: bool
    right_success: bool
    mean_success: bool
    """The step-wise mean of the left and right actions, replayed open loop from the same initial state."""
    left_length: int
    right_length: int


def _run_route(task: str, seed: int, side: int, max_steps: int, offset: float) -> tuple[np.ndarray, bool]:
    from driftkit.envs.metaworld import MetaWorldEnv, make_expert

    expert = make_expert(task)
    with MetaWorldEnv(task, seed=seed, max_steps=max_steps) as env:
        obs = env.reset()
        follow = RouteFollower(route_waypoints(obs.state, task, side, offset), route_step_limit(task))
        actions = []
        for _ in range(max_steps):
            action = np.clip(follow(obs.state, expert(obs.state)), -1.0, 1.0).astype(np.float32)
            actions.append(action)
            step = env.step(action)
            obs = step.obs
            if step.success:
                return np.stack(actions), True
    return np.stack(actions), False


def _replay(task: str, seed: int, actions: np.ndarray) -> bool:
    from driftkit.envs.metaworld import MetaWorldEnv

    with MetaWorldEnv(task, seed=seed, max_steps=len(actions)) as env:
        env.reset()
        return any(env.step(a).success for a in actions)


def averaged_route_check(task: str, seed: int, max_steps: int = 300, offset: float = 0.12) -> RouteCheck:
    """Left route, right route, and their step-wise mean replayed open loop, all from the initial state of
    environment seed `seed`. The shorter route is padded with zero motion (and its last gripper command)."""
    left, left_ok = _run_route(task, seed, -1, max_steps, offset)
    right, right_ok = _run_route(task, seed, 1, max_steps, offset)
    n = max(len(left), len(right))

    def pad(a: np.ndarray) -> np.ndarray:
        tail = np.zeros((n - len(a), a.shape[1]), dtype=a.dtype)
        tail[:, 3] = a[-1, 3]
        return np.concatenate([a, tail])

    mean = 0.5 * (pad(left) + pad(right))
    return RouteCheck(task=task, seed=seed, left_success=left_ok, right_success=right_ok,
                      mean_success=_replay(task, seed, mean), left_length=len(left), right_length=len(right))
