"""A grounding dataset as training data for any policy: LeRobot keys, so grounding trains through the one
trainer (driftkit.train) like a robot dataset.

    data = GroundingActions(SpatialGroundingDataset(...))
    data[i]   # observation.images.frame [3, H, W] float in [0, 1], task = the expression or query,
              # action [1, D] = the box (D = 4) or interval (D = 2), action_is_pad [1] False

A box or interval is a one-step "action chunk" (T = 1); there is no state vector.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from driftkit.normalize import NormStats
from driftkit.policy.keys import ACTION_KEY, ACTION_PAD_KEY, IMAGES_PREFIX, TASK_KEY

CAMERA = IMAGES_PREFIX + "frame"


def image_tensor(image) -> Tensor:
    """PIL image -> [3, H, W] float32 in [0, 1] (exact: the backbone rounds it back to the same uint8)."""
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255.0


class GroundingActions(Dataset):
    cameras = [CAMERA]

    def __init__(self, data: Dataset):
        """data: a grounding dataset whose items hold images (one PIL image), prompts (str), target [1, D]."""
        self.data = data
        self._targets = data.targets()  # [N, 1, D]
        self.stats = {ACTION_KEY: NormStats.from_data(self._targets)}

    def __len__(self) -> int:
        return len(self.data)

    def chunks(self) -> tuple[Tensor, Tensor]:
        return self._targets, torch.ones_like(self._targets, dtype=torch.bool)

    def __getitem__(self, i: int) -> dict:
        item = self.data[i]
        return {CAMERA: image_tensor(item["images"]), TASK_KEY: item["prompts"], ACTION_KEY: item["target"],
                ACTION_PAD_KEY: torch.zeros(item["target"].shape[0], dtype=torch.bool)}


def observations(items: list[dict]) -> dict:
    """Grounding dataset items -> a policy observation batch (camera [B, 3, H, W], task [B strings])."""
    return {CAMERA: torch.stack([image_tensor(it["images"]) for it in items]),
            TASK_KEY: [it["prompts"] for it in items]}
