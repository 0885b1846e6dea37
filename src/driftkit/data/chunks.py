"""Action chunks: the T actions starting at each frame, padded past the end of its episode."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ActionChunks:
    actions: np.ndarray
    """[N, T, *S] (S = (D,) for vector actions): actions[i, j] = action of frame i + j; past the episode
    end, the episode's last action."""
    mask: np.ndarray
    """[N, T, *S] bool, True where the action is real (frame i + j lies inside the episode of frame i)."""

    @property
    def horizon(self) -> int:
        return self.actions.shape[1]


def make_action_chunks(actions: np.ndarray, episode_ends: np.ndarray, horizon: int) -> ActionChunks:
    """actions [N, *S]; episode_ends [N]: one past the last global frame index of each frame's episode.
    Frames are in dataset order, so frame i's episode covers i..episode_ends[i]-1."""
    if not isinstance(horizon, (int, np.integer)) or horizon <= 0:
        raise ValueError(f"got horizon={horizon!r}, must be a positive int")
    actions = np.asarray(actions)
    ends = np.asarray(episode_ends, dtype=np.int64)
    if actions.ndim < 2 or ends.shape != (actions.shape[0],):
        raise ValueError(f"actions has shape {list(actions.shape)} and episode_ends {list(ends.shape)}; "
                         "expected [N, *S] (at least [N, D]) and [N]")
    n = actions.shape[0]
    frame = np.arange(n, dtype=np.int64)
    if (ends <= frame).any() or (ends > n).any():
        raise ValueError("episode_ends must satisfy i < episode_ends[i] <= N for every frame i")
    idx = frame[:, None] + np.arange(horizon, dtype=np.int64)[None, :]  # [N, T]
    real = idx < ends[:, None]
    idx = np.minimum(idx, ends[:, None] - 1)
    per_frame = actions.shape[1:]
    mask = np.broadcast_to(real.reshape(n, horizon, *([1] * len(per_frame))), (n, horizon, *per_frame)).copy()
    return ActionChunks(actions=actions[idx], mask=mask)
