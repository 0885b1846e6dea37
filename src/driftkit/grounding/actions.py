"""A grounding dataset as training data for any policy: LeRobot keys, so grounding trains through the one
trainer (driftkit.train) like a robot dataset.

    data = GroundingActions(SpatialGroundingDataset(...))
    data[i]   # observation.images.frame [3, H, W] float in [0, 1], task = the expression or query,
              # action [1, D] = the box (D = 4) or interval (D = 2), action_is_pad [1] False
    GroundingActions(TemporalGroundingDataset(...), frames=True)[i]
              # observation.images.frame_0 .. frame_{F-1}: each frame of the clip as a camera of its own

A box or interval is a one-step "action chunk" (T = 1); there is no state vector. A clip reaches the VLM either
as one image (its frames tiled in a grid) or as F images; in the second layout the backbone's image_labels
(frame_labels) put each frame's timestamp before it, as Qwen3-VL does with video frames.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from driftkit.normalize import NormStats
from driftkit.policy.keys import ACTION_KEY, ACTION_PAD_KEY, IMAGES_PREFIX, TASK_KEY

CAMERA = IMAGES_PREFIX + "frame"
FRAME_LAYOUTS = ("grid", "frames")
"""How a clip reaches the VLM: one image of its frames tiled, or one camera per frame after its timestamp."""
TIMESTAMP_FORMAT = "<{t:.1f} seconds>"
"""Qwen3-VL's text timestamp before each video frame."""


def frame_cameras(num_frames: int) -> list[str]:
    """Camera names of a clip's frames given as separate images: observation.images.frame_0, ..."""
    return [f"{CAMERA}_{k}" for k in range(num_frames)]


def frame_labels(num_frames: int, clip_seconds: float, fmt: str = TIMESTAMP_FORMAT) -> tuple[str, ...]:
    """The start time of each of num_frames equal frames of a clip of clip_seconds, as text (image_labels)."""
    return tuple(fmt.format(t=k * clip_seconds / num_frames) for k in range(num_frames))


def camera_images(item: dict, cameras: list[str] | tuple[str, ...]) -> dict[str, Tensor]:
    """A grounding item's images under the policy's camera names: [CAMERA] = the one image (a clip's frame
    grid), frame_cameras(F) = the clip's F frames, one each."""
    if list(cameras) == [CAMERA]:
        return {CAMERA: image_tensor(item["images"])}
    frames = item.get("frames")
    if frames is None or list(cameras) != frame_cameras(len(frames)):
        have = "no frames" if frames is None else f"{len(frames)} frames"
        raise ValueError(f"got cameras {list(cameras)[:2]}... for an item with {have}; use [{CAMERA!r}] (one "
                         f"image) or frame_cameras(number of frames)")
    return {cam: image_tensor(f) for cam, f in zip(cameras, frames)}


def image_tensor(image) -> Tensor:
    """PIL image -> [3, H, W] float32 in [0, 1] (exact: the backbone rounds it back to the same uint8)."""
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255.0


class GroundingActions(Dataset):
    def __init__(self, data: Dataset, frames: bool = False):
        """data: a grounding dataset whose items hold images (one PIL image), prompts (str), target [1, D], and
        for clips frames (F PIL images); frames=True gives each frame as a camera (frame_cameras(F))."""
        self.data = data
        self.cameras = frame_cameras(len(data[0]["frames"])) if frames else [CAMERA]
        self._targets = data.targets()  # [N, 1, D]
        self.stats = {ACTION_KEY: NormStats.from_data(self._targets)}

    def __len__(self) -> int:
        return len(self.data)

    def chunks(self) -> tuple[Tensor, Tensor]:
        return self._targets, torch.ones_like(self._targets, dtype=torch.bool)

    def __getitem__(self, i: int) -> dict:
        item = self.data[i]
        return {**camera_images(item, self.cameras), TASK_KEY: item["prompts"], ACTION_KEY: item["target"],
                ACTION_PAD_KEY: torch.zeros(item["target"].shape[0], dtype=torch.bool)}


def observations(items: list[dict], cameras: list[str] | tuple[str, ...] = (CAMERA,)) -> dict:
    """Grounding dataset items -> a policy observation batch (each camera [B, 3, H, W], task [B strings])."""
    per_item = [camera_images(it, cameras) for it in items]
    return {**{cam: torch.stack([im[cam] for im in per_item]) for cam in cameras},
            TASK_KEY: [it["prompts"] for it in items]}
