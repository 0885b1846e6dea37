"""LeRobotDataset: a LeRobot v3.0 folder as a torch Dataset of training items (driftkit.policy's keys).

    ds = LeRobotDataset(root, horizon=16)
    item = ds[i]   # observation.state [S] float32, task_index [] long, action [T, D] float32,
                   # action_is_pad [T] bool (True past the episode end), and, when the dataset has a camera,
                   # observation.image [3, H, W] float32 in [0, 1]
    ds.stats       # LeRobot stats.json: feature -> {"mean", "std", "q01", "q99", ...} arrays
    ds.tasks       # task_index -> language instruction
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from driftkit.data.reader import LeRobotReader

STATE_KEY = "observation.state"
ACTION_KEY = "action"
ACTION_PAD_KEY = "action_is_pad"
TASK_KEY = "task_index"
IMAGE_KEY = "observation.image"


class LeRobotDataset(Dataset):
    def __init__(self, root: str | Path, horizon: int = 16, image_key: str | None = None,
                 state_key: str = STATE_KEY, action_key: str = ACTION_KEY):
        """image_key: the video feature served as observation.image (default: the dataset's only camera,
        none when it has no camera; a dataset with several cameras needs it named)."""
        self.reader = LeRobotReader(root)
        self.horizon = int(horizon)
        for key in (state_key, action_key):
            if key not in self.reader.features or self.reader.features[key].is_video:
                raise KeyError(f"{self.reader.root} has no numeric feature {key!r}; features: "
                               f"{sorted(self.reader.features)}")
        videos = self.reader.video_keys
        if image_key is None and len(videos) > 1:
            raise ValueError(f"{self.reader.root} has cameras {videos}; pass image_key to choose one")
        if image_key is not None and image_key not in videos:
            raise KeyError(f"{self.reader.root} has no video feature {image_key!r}; cameras: {videos}")
        self.image_key = image_key if image_key is not None else (videos[0] if videos else None)
        self._state = torch.from_numpy(np.ascontiguousarray(self.reader.column(state_key), dtype=np.float32))
        chunks = self.reader.action_chunks(self.horizon, action_key)
        self._action = torch.from_numpy(np.ascontiguousarray(chunks.actions, dtype=np.float32))  # [N, T, D]
        self._pad = torch.from_numpy(~chunks.mask[:, :, 0])  # [N, T]
        self._task = torch.from_numpy(self.reader.column("task_index")[:, 0].astype(np.int64))
        self._frames = None if self.image_key is None else torch.from_numpy(self.reader.video(self.image_key))
        self.stats = {k: v for k, v in self.reader.stats.items()}
        if state_key != STATE_KEY and state_key in self.stats:
            self.stats[STATE_KEY] = self.stats[state_key]
        if action_key != ACTION_KEY and action_key in self.stats:
            self.stats[ACTION_KEY] = self.stats[action_key]

    @property
    def tasks(self) -> list[str]:
        return self.reader.tasks

    @property
    def fps(self) -> float:
        return self.reader.fps

    def __len__(self) -> int:
        return self.reader.num_frames

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {STATE_KEY: self._state[i], TASK_KEY: self._task[i], ACTION_KEY: self._action[i],
                ACTION_PAD_KEY: self._pad[i]}
        if self._frames is not None:
            item[IMAGE_KEY] = self._frames[i].permute(2, 0, 1).float() / 255.0  # [3, H, W]
        return item


def task_index_map(root: str | Path) -> dict[str, int]:
    """Language instruction -> task_index of a dataset (reads only meta/tasks.parquet)."""
    from driftkit.data.reader import read_parquet

    table = read_parquet(Path(root) / "meta" / "tasks.parquet")
    col = "task" if "task" in table.column_names else "__index_level_0__"
    return dict(zip(table.column(col).to_pylist(), table.column("task_index").to_pylist()))
