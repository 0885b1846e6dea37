"""Shared pieces of the procedural grounding benchmarks: palette, shape masks, config checks, seeding.

Every example is drawn from its own generator seeded by (config seed, task, split, index), so an example
depends on nothing but those four numbers: a longer split starts with the examples of a shorter one, and the
splits use disjoint seed streams.
"""

from __future__ import annotations

import numpy as np

from driftkit.errors import check_choice

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 50),
    "green": (60, 185, 75),
    "blue": (60, 100, 235),
    "yellow": (235, 205, 50),
    "purple": (165, 75, 205),
}
"""Named object colours. Each differs from every grey background (levels 20-80) and from every other colour by
more than 100 in some channel, so objects stay separable by exact pixel value."""

SHAPES = ("square", "circle", "triangle")
SPLITS = ("train", "val", "test")
BACKGROUND_LEVELS = (20, 80)
"""Range of the uniform grey background level (inclusive), drawn per image or clip."""

SPATIAL_TASK, TEMPORAL_TASK = 0, 1
MIN_SIDE = 5
"""Smallest object side in pixels: below it a circle's corners fill in and it looks like a square."""


def shape_mask(shape: str, side: int) -> np.ndarray:  # [side, side] bool
    """Pixels of a shape drawn in a side x side box; every mask touches all four edges of its box, so the
    box is the tight bounding box of the drawn pixels."""
    c = np.arange(side) + 0.5  # pixel centres
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "circle":
        r = side / 2
        return (c[:, None] - r) ** 2 + (c[None, :] - r) ** 2 <= r**2
    if shape == "triangle":  # apex up; row y is covered up to the bottom edge of the row, so row 0 is never empty
        half = (np.arange(side) + 1) / 2  # [side] half-width of the row
        return np.abs(c[None, :] - side / 2) <= half[:, None]
    raise ValueError(f"got shape={shape!r}, must be one of {list(SHAPES)}")


def example_rng(seed: int, task: int, split: str, index: int) -> np.random.Generator:
    """The generator of one example; distinct (seed, task, split, index) give independent streams."""
    check_choice("split", split, SPLITS)
    return np.random.default_rng([seed, task, SPLITS.index(split), index])


def check_names(field: str, values, allowed, minimum: int) -> tuple:
    """A tuple of distinct known names, at least `minimum` of them; errors name the field and the bad value."""
    values = tuple(values)
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"got {field}={values!r}: {unknown!r} unknown, choose from {list(allowed)}")
    if len(set(values)) != len(values) or len(values) < minimum:
        raise ValueError(f"got {field}={values!r}, need at least {minimum} distinct names")
    return values


def check_int(field: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"got {field}={value!r} of type {type(value).__name__}, expected an int")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"got {field}={value!r}, must be {bound}")


def check_split_sizes(cfg) -> None:
    check_int("seed", cfg.seed, 0)
    for split in SPLITS:
        check_int(f"{split}_size", getattr(cfg, f"{split}_size"), 0)


def split_size(cfg, split: str) -> int:
    check_choice("split", split, SPLITS)
    return getattr(cfg, f"{split}_size")


def draw_background(rng: np.random.Generator) -> int:
    return int(rng.integers(BACKGROUND_LEVELS[0], BACKGROUND_LEVELS[1] + 1))
