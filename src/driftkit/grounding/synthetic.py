"""Procedural grounding benchmarks a VLM has to look at to solve, and torch datasets of them (grounding.actions
adapts them to the trainer's LeRobot keys).

    cfg = SpatialGroundingConfig(image_size=64, seed=0)
    train = make_spatial_split(cfg, "train")          # [SpatialExample]: image, expression, box (xyxy in [0, 1])
    data = SpatialGroundingDataset(train)             # items: images, prompts, target [1, 4], mask [1, 4]
    batch = collate_grounding([data[i] for i in range(8)])   # images and prompts in lists, target [8, 1, 4]

    tcfg = TemporalGroundingConfig(num_frames=32, frame_size=32)
    clips = make_temporal_split(tcfg, "test")         # [TemporalExample]: frames, query, interval in [0, 1]
    data = TemporalGroundingDataset(clips)            # frames tiled into one image; target [1, 2]

Spatial: shapes of several colours and sizes, expressions by attributes, relations and extremes, each naming
exactly one object (is_unambiguous) with distractors sharing its colour or shape (synthetic_spatial).
Temporal: objects that appear, disappear, move or change colour at random times, one event queried, the
others distractors (synthetic_temporal). Examples are seeded by (seed, split, index); splits never share a
seed stream.

The benchmark gives the VLM one image per prompt, so clips reach it as a grid of frames (frame_grid); the items also carry
the sampled frames (key "frames") for wrappers that take several images or video.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from driftkit.errors import check_positive
from driftkit.grounding.synthetic_common import PALETTE, SHAPES, SPLITS, shape_mask
from driftkit.grounding.synthetic_expressions import (
    Expression, Resolution, Scene, SceneObject, is_unambiguous, parse_expression, resolve,
)
from driftkit.grounding.synthetic_spatial import (
    SPATIAL_KINDS, SpatialExample, SpatialGroundingConfig, make_spatial_example, make_spatial_split,
    spatial_kind_counts,
)
from driftkit.grounding.synthetic_temporal import (
    EVENT_KINDS, TemporalEvent, TemporalExample, TemporalGroundingConfig, make_temporal_example,
    make_temporal_split,
)

__all__ = [
    "EVENT_KINDS", "PALETTE", "SHAPES", "SPATIAL_KINDS", "SPLITS",
    "Expression", "Resolution", "Scene", "SceneObject", "SpatialExample", "SpatialGroundingConfig",
    "SpatialGroundingDataset", "TemporalEvent", "TemporalExample", "TemporalGroundingConfig",
    "TemporalGroundingDataset", "collate_grounding", "frame_grid", "is_unambiguous", "make_spatial_example",
    "make_spatial_split", "make_temporal_example", "make_temporal_split", "parse_expression", "resolve",
    "sample_frame_indices", "shape_mask", "spatial_kind_counts",
]


def frame_grid(frames: Sequence[Image.Image], cols: int | None = None, gap: int = 2, fill: int = 255) -> Image.Image:
    """Frames tiled row-major into one RGB image, `gap` pixels of grey level `fill` between tiles.

    cols defaults to ceil(sqrt(len(frames))); a short last row is padded with fill.
    """
    if not frames:
        raise ValueError("frame_grid needs at least one frame, got none")
    cols = cols or math.ceil(math.sqrt(len(frames)))
    check_positive("cols", cols)
    arrays = [np.asarray(f.convert("RGB")) for f in frames]
    h, w = arrays[0].shape[:2]
    bad = [i for i, a in enumerate(arrays) if a.shape[:2] != (h, w)]
    if bad:
        raise ValueError(f"frames[{bad[0]}] is {arrays[bad[0]].shape[1]}x{arrays[bad[0]].shape[0]}, but frames[0] is "
                         f"{w}x{h}; all frames must have one size")
    rows = math.ceil(len(arrays) / cols)
    out = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), fill, dtype=np.uint8)
    for i, a in enumerate(arrays):
        r, c = divmod(i, cols)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = a
    return Image.fromarray(out)


def sample_frame_indices(total: int, num: int) -> list[int]:
    """num frame indices spread evenly over [0, total), first and last included (num <= total)."""
    check_positive("num", num)
    if num > total:
        raise ValueError(f"got num_frames={num}, but the clips have only {total} frames")
    return [int(i) for i in np.floor(np.linspace(0, total - 1, num) + 0.5)]


class SpatialGroundingDataset(Dataset):
    """Items {"images": PIL image, "prompts": str, "target": [1, 4] float32 box, "mask": [1, 4] bool}."""

    def __init__(self, examples: Sequence[SpatialExample], prompt_template: str = "{expression}"):
        if "{expression}" not in prompt_template:
            raise ValueError(f"got prompt_template={prompt_template!r}; it must contain '{{expression}}'")
        self.examples, self.prompt_template = list(examples), prompt_template

    @classmethod
    def from_config(cls, cfg: SpatialGroundingConfig, split: str, **options) -> "SpatialGroundingDataset":
        return cls(make_spatial_split(cfg, split), **options)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        target = torch.tensor([ex.box], dtype=torch.float32)  # [1, 4]
        return {"images": ex.image, "prompts": self.prompt_template.format(expression=ex.expression),
                "target": target, "mask": torch.ones_like(target, dtype=torch.bool)}

    def targets(self) -> Tensor:  # [N, 1, 4]
        """Every box, for Decoder.fit_normalizer."""
        return torch.tensor([[ex.box] for ex in self.examples], dtype=torch.float32)


class TemporalGroundingDataset(Dataset):
    """Items {"images": grid image of the sampled frames, "frames": [PIL], "prompts": str,
    "target": [1, 2] float32 interval, "mask": [1, 2] bool}.

    num_frames (default: all) picks evenly spaced frames; a subsample may skip the frames where a short event
    happens, which is the usual trade-off of sampled-frame video models.
    """

    def __init__(self, examples: Sequence[TemporalExample], prompt_template: str = "{query}",
                 num_frames: int | None = None, cols: int | None = None, gap: int = 2):
        if "{query}" not in prompt_template:
            raise ValueError(f"got prompt_template={prompt_template!r}; it must contain '{{query}}'")
        self.examples, self.prompt_template = list(examples), prompt_template
        total = len(self.examples[0].frames) if self.examples else 0
        self.frame_indices = sample_frame_indices(total, num_frames or total) if total else []
        self.cols, self.gap = cols, gap

    @classmethod
    def from_config(cls, cfg: TemporalGroundingConfig, split: str, **options) -> "TemporalGroundingDataset":
        return cls(make_temporal_split(cfg, split), **options)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        frames = [ex.frames[k] for k in self.frame_indices]
        target = torch.tensor([ex.interval], dtype=torch.float32)  # [1, 2]
        return {"images": frame_grid(frames, self.cols, self.gap), "frames": frames,
                "prompts": self.prompt_template.format(query=ex.query), "target": target,
                "mask": torch.ones_like(target, dtype=torch.bool)}

    def targets(self) -> Tensor:  # [N, 1, 2]
        return torch.tensor([[ex.interval] for ex in self.examples], dtype=torch.float32)


def collate_grounding(items: Sequence[dict]) -> dict:
    """Dataset items -> a batch: tensors stacked ([B, 1, D]), everything else in lists."""
    if not items:
        raise ValueError("collate_grounding needs at least one item, got none")
    return {k: torch.stack([it[k] for it in items]) if isinstance(items[0][k], Tensor) else [it[k] for it in items]
            for k in items[0]}
