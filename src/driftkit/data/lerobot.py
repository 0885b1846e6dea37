"""LeRobotDataset: a LeRobot v3.0 folder as a torch Dataset of training items (driftkit.policy.keys).

    ds = LeRobotDataset(root, horizon=16)                       # every camera; or cameras=["corner2"]
    item = ds[i]   # observation.state [S] float32, task_index [] long, task str (the instruction),
                   # action [T, D] float32, action_is_pad [T] bool (True past the episode end), and per camera
                   # observation.images.<cam> [3, H, W] float32 in [0, 1]
    ds.stats       # LeRobot stats.json: feature -> {"mean", "std", "q01", "q99", ...} arrays
    ds.tasks       # task_index -> language instruction
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from driftkit.data.reader import LeRobotReader
from driftkit.policy.keys import ACTION_KEY, ACTION_PAD_KEY, STATE_KEY, TASK_INDEX_KEY, TASK_KEY, camera_key


class LeRobotDataset(Dataset):
    def __init__(self, root: str | Path, horizon: int = 16, cameras: list[str] | tuple[str, ...] | None = None,
                 state_key: str = STATE_KEY, action_key: str = ACTION_KEY, require_state: bool = True):
        """cameras: the video features served (names or full keys); None = every camera of the dataset.
        require_state: False lets a dataset without a state vector load (for policies that take none)."""
        self.reader = LeRobotReader(root)
        self.horizon = int(horizon)
        for key in (state_key, action_key) if require_state else (action_key,):
            if key not in self.reader.features or self.reader.features[key].is_video:
                raise KeyError(f"{self.reader.root} has no numeric feature {key!r}; features: "
                               f"{sorted(self.reader.features)}")
        videos = self.reader.video_keys
        self.cameras = list(videos) if cameras is None else [camera_key(c) for c in cameras]
        missing = [c for c in self.cameras if c not in videos]
        if missing:
            raise KeyError(f"{self.reader.root} has no camera {missing[0]!r}; its cameras: {videos}")
        if not self.reader.tasks:
            raise ValueError(f"{self.reader.root} lists no tasks in meta/tasks.parquet; every frame needs an "
                             "instruction (task_index into that table)")
        has_state = state_key in self.reader.features
        self._state = (torch.from_numpy(np.ascontiguousarray(self.reader.column(state_key), dtype=np.float32))
                       if has_state else None)
        chunks = self.reader.action_chunks(self.horizon, action_key)
        self._action = torch.from_numpy(np.ascontiguousarray(chunks.actions, dtype=np.float32))  # [N, T, D]
        self._pad = torch.from_numpy(~chunks.mask[:, :, 0])  # [N, T]
        self._task = torch.from_numpy(self.reader.column("task_index")[:, 0].astype(np.int64))
        self._check_task_index()
        self._frames = {c: torch.from_numpy(self.reader.video(c)) for c in self.cameras}  # [N, H, W, 3] uint8
        self.stats = dict(self.reader.stats)
        for alias, key in ((STATE_KEY, state_key), (ACTION_KEY, action_key)):
            if key != alias and key in self.stats:
                self.stats[alias] = self.stats[key]

    def _check_task_index(self) -> None:
        bad = (self._task < 0) | (self._task >= len(self.reader.tasks))
        if bad.any():
            raise ValueError(f"{self.reader.root}: frame {int(bad.nonzero()[0])} has task_index "
                             f"{int(self._task[bad][0])}, but meta/tasks.parquet lists {len(self.reader.tasks)} tasks")

    @property
    def tasks(self) -> list[str]:
        return self.reader.tasks

    @property
    def fps(self) -> float:
        return self.reader.fps

    def __len__(self) -> int:
        return self.reader.num_frames

    def chunks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every action chunk [N, T, D] and its mask [N, T, D] (True = real), without decoding images."""
        return self._action, (~self._pad).unsqueeze(-1).expand_as(self._action)

    def __getitem__(self, i: int) -> dict:
        task = int(self._task[i])
        item = {TASK_INDEX_KEY: self._task[i], TASK_KEY: self.reader.tasks[task], ACTION_KEY: self._action[i],
                ACTION_PAD_KEY: self._pad[i]}
        if self._state is not None:
            item[STATE_KEY] = self._state[i]
        for key, frames in self._frames.items():
            item[key] = frames[i].permute(2, 0, 1).float() / 255.0  # [3, H, W]
        return item


def task_index_map(root: str | Path) -> dict[str, int]:
    """Language instruction -> task_index of a dataset (reads only meta/tasks.parquet)."""
    from driftkit.data.reader import read_parquet

    table = read_parquet(Path(root) / "meta" / "tasks.parquet")
    col = "task" if "task" in table.column_names else "__index_level_0__"
    return dict(zip(table.column(col).to_pylist(), table.column("task_index").to_pylist()))
