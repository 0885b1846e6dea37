"""Image-text pairs from the procedural benchmarks, for pretraining a VLM through its text interface.

    cfg = PretrainDataConfig(family="qwen2_5_vl", image_size=112, train_scenes=4096)
    data = make_pretrain_data(cfg, "train")        # items: observation.images.frame, task, answer (text)
    result = train(TrainConfig(model=TextPolicyConfig(...), data=DataConfig(source="given"), ...), data)
    scores = evaluate_text(result.policy, cfg, "spatial")    # held-out referring boxes, parsed from text

The mix, per spatial scene: a referring question ("Locate the small red circle.") answered with the box in
the family's convention (grounding.text_answers), and with probability describe_fraction a second item on the
same image, "Describe the image." answered with its objects from left to right; plus temporal clips (frames
tiled into one image of the same side, or with frame_layout="frames" given as one image per frame, each after its
timestamp as Qwen3-VL reads video) asked "when does the red circle move?" and answered "from 4.0 to 6.0
seconds". Every item is a pure function of (cfg, split, index), so the same cfg gives the same data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from driftkit.errors import check_choice, check_positive
from driftkit.grounding.actions import CAMERA, FRAME_LAYOUTS, frame_cameras, frame_labels, image_tensor
from driftkit.grounding.synthetic import (
    SpatialGroundingConfig, TemporalGroundingConfig, frame_grid, make_spatial_example, make_temporal_example,
    sample_frame_indices,
)
from driftkit.grounding.synthetic_common import check_int
from driftkit.grounding.text_answers import QUESTIONS, text_answers
from driftkit.policy.keys import TASK_KEY
from driftkit.policy.text import ANSWER_KEY

TASKS = ("spatial", "temporal")


@dataclass
class PretrainDataConfig:
    """What the pretraining mix and its held-out tests are made of."""

    family: str = "qwen2_5_vl"
    """Whose answer convention the text follows (grounding.text_answers)."""
    image_size: int = 112
    """Side of every image in pixels: spatial scenes, and temporal grids of frames (cols x frame side)."""
    train_scenes: int = 4096
    """Spatial scenes in the training split (each a referring item, some also a description)."""
    temporal_clips: int = 2048
    """Temporal clips in the training split (0 = boxes and descriptions only)."""
    describe_fraction: float = 0.5
    """Chance that a spatial scene also gives a description item."""
    test_size: int = 256
    """Held-out scenes and clips per task (the test split's seed stream)."""
    kinds: tuple[str, ...] | None = None
    """Spatial expression kinds (None = the benchmark's default referring mix)."""
    num_frames: int = 16
    """Frames per clip, tiled into a ceil(sqrt) grid with no gap; image_size must divide by the columns."""
    clip_seconds: float = 16.0
    """Seconds a clip spans (the answers' time unit)."""
    frame_layout: str = "grid"
    """"grid": a clip's frames tiled into one image_size image; "frames": each frame (image_size / columns
    pixels, the grid's cells) a camera of its own after its timestamp (image_labels). Items of one batch
    need the same number of images, so "frames" trains on clips only (train_scenes = 0)."""
    seed: int = 0
    """Data seed of both benchmarks."""

    def __post_init__(self):
        text_answers(self.family)  # the family must have a convention
        check_int("image_size", self.image_size, 32)
        check_choice("frame_layout", self.frame_layout, FRAME_LAYOUTS)
        check_int("train_scenes", self.train_scenes, 0)
        check_int("temporal_clips", self.temporal_clips, 0 if self.train_scenes else 1)
        if self.frame_layout == "frames" and self.train_scenes and self.temporal_clips:
            raise ValueError(f"got frame_layout='frames' with train_scenes={self.train_scenes} and temporal_clips="
                             f"{self.temporal_clips}: a batch cannot mix one-image scenes and {self.num_frames}-image "
                             "clips; set train_scenes=0 (a temporal stage) or use the 'grid' layout")
        check_int("test_size", self.test_size, 1)
        check_int("num_frames", self.num_frames, 4)
        if not 0 <= self.describe_fraction <= 1:
            raise ValueError(f"got describe_fraction={self.describe_fraction}, must be in [0, 1]")
        check_positive("clip_seconds", self.clip_seconds)
        if self.image_size % self.grid_cols:
            raise ValueError(f"got image_size={self.image_size} with num_frames={self.num_frames}: the "
                             f"{self.grid_cols} grid columns need an image side divisible by {self.grid_cols}")
        if self.kinds is not None:
            self.kinds = tuple(self.kinds)
        self.spatial_config()
        self.temporal_config()

    def image_labels(self) -> tuple[str, ...]:
        """The backbone's image_labels for the clips: their frames' timestamps ("frames"), or none ("grid")."""
        return frame_labels(self.num_frames, self.clip_seconds) if self.frame_layout == "frames" else ()

    @property
    def input_side(self) -> int:
        """Side of the images the VLM is given: image_size, or one frame's in the "frames" layout."""
        return self.image_size // self.grid_cols if self.frame_layout == "frames" else self.image_size

    @property
    def grid_cols(self) -> int:
        return math.ceil(math.sqrt(self.num_frames))

    def spatial_config(self) -> SpatialGroundingConfig:
        kinds = {} if self.kinds is None else {"kinds": self.kinds}
        return SpatialGroundingConfig(image_size=self.image_size, train_size=self.train_scenes, val_size=0,
                                      test_size=self.test_size, seed=self.seed, **kinds)

    def temporal_config(self) -> TemporalGroundingConfig:
        return TemporalGroundingConfig(frame_size=self.image_size // self.grid_cols, num_frames=self.num_frames,
                                       max_event_frames=min(6, self.num_frames // 3), train_size=self.temporal_clips,
                                       val_size=0, test_size=self.test_size, seed=self.seed)

    def to_dict(self) -> dict:
        return asdict(self)


class TextGroundingData(Dataset):
    """Items {observation.images.frame: [3, S, S] float in [0, 1], task: question, answer: text}, or for clips in
    the "frames" layout one camera per frame (actions.frame_cameras); images[i] is uint8 [3, S, S] or [N, 3, S, S]
    (a quarter of the memory of floats), N = 1 or the frames. `kinds[i]` says what item i asks, `levels[i]`
    which expression or query kind of the benchmark it is ("colour", "single", "move", ...; None for
    descriptions)."""

    def __init__(self, images: list[Tensor], questions: list[str], answers: list[str], kinds: list[str],
                 truth: list[tuple[float, ...] | None], levels: list[str | None] | None = None):
        levels = [None] * len(images) if levels is None else levels
        if not (len(images) == len(questions) == len(answers) == len(kinds) == len(truth) == len(levels)) or not images:
            raise ValueError(f"got {len(images)} images, {len(questions)} questions, {len(answers)} answers, "
                             f"{len(kinds)} kinds, {len(truth)} targets, {len(levels)} levels; need the same number, "
                             "at least one")
        images = [im if im.dim() == 4 else im[None] for im in images]  # [3, S, S] -> [1, 3, S, S]
        self.images, self.questions, self.answers, self.kinds, self.truth = images, questions, answers, kinds, truth
        self.levels = levels

    def __len__(self) -> int:
        return len(self.images)

    @property
    def cameras(self) -> list[str]:
        counts = sorted({int(im.shape[0]) for im in self.images})
        if len(counts) > 1:
            raise ValueError(f"items hold {counts} images each; one dataset's cameras need the same number: take "
                             "subset(kind) first")
        return _cameras(counts[0])

    def __getitem__(self, i: int) -> dict:
        images = self.images[i].float() / 255.0
        return {**dict(zip(_cameras(len(images)), images)), TASK_KEY: self.questions[i], ANSWER_KEY: self.answers[i]}

    def subset(self, kind: str | None = None, level: str | None = None, first: int | None = None
               ) -> "TextGroundingData":
        """The items of one kind ("box", "interval" or "describe") and/or one level, the first `first` of them."""
        keep = [i for i, (k, v) in enumerate(zip(self.kinds, self.levels))
                if kind in (None, k) and level in (None, v)][:first]
        if not keep:
            raise ValueError(f"no items of kind {kind!r}, level {level!r}; kinds present: {sorted(set(self.kinds))}")
        pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
        return TextGroundingData(pick(self.images), pick(self.questions), pick(self.answers), pick(self.kinds),
                                 pick(self.truth), pick(self.levels))

    def targets(self) -> Tensor:  # [N, 1, D]
        """Ground truth of a one-kind subset (fractions), for the grounding metrics."""
        return torch.tensor([[t] for t in self.truth], dtype=torch.float32)


def _cameras(num_images: int) -> list[str]:
    """Camera names of an item of num_images images: the one image, or a clip's frames."""
    return [CAMERA] if num_images == 1 else frame_cameras(num_images)


def _uint8(*images) -> Tensor:  # N PIL images -> [N, 3, H, W] uint8
    return torch.stack([(image_tensor(im) * 255).round().to(torch.uint8) for im in images])


def make_pretrain_data(cfg: PretrainDataConfig, split: str) -> TextGroundingData:
    """The split's items: per scene a referring item (and maybe a description), then the temporal clips."""
    if split not in ("train", "test"):
        raise ValueError(f"got split={split!r}, must be 'train' or 'test'")
    answers, size = text_answers(cfg.family), cfg.image_size
    scenes = cfg.train_scenes if split == "train" else cfg.test_size
    clips = cfg.temporal_clips if split == "train" else cfg.test_size
    coin = np.random.default_rng([cfg.seed, 7, split == "train"])
    images, questions, texts, kinds, truth, levels = [], [], [], [], [], []

    def add(image, question, text, kind, target, level=None):
        images.append(image), questions.append(question), texts.append(text), kinds.append(kind)
        truth.append(target), levels.append(level)

    spatial = cfg.spatial_config()
    for i in range(scenes):
        ex = make_spatial_example(spatial, split, i)
        image = _uint8(ex.image)
        add(image, QUESTIONS["box"].format(expression=ex.expression), answers.box(ex.box, size, size), "box", ex.box,
            ex.kind)
        if coin.random() < cfg.describe_fraction:
            objects = [(o.size, o.colour, o.shape, o.center[0]) for o in ex.scene.objects]
            add(image, QUESTIONS["describe"], answers.describe(objects), "describe", None)
    temporal = cfg.temporal_config()
    for i in range(clips):
        ex = make_temporal_example(temporal, split, i)
        frames = [ex.frames[k] for k in sample_frame_indices(len(ex.frames), cfg.num_frames)]
        clip = _uint8(*frames) if cfg.frame_layout == "frames" else _uint8(frame_grid(frames, cfg.grid_cols, gap=0))
        add(clip, QUESTIONS["interval"].format(query=ex.query), answers.interval(ex.interval, cfg.clip_seconds),
            "interval", ex.interval, ex.kind)
    return TextGroundingData(images, questions, texts, kinds, truth, levels)
