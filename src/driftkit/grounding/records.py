"""Typed records shared by the grounding loaders, and the checks every loader applies to them.

A moment is [start, end] in seconds within a video of known duration (decoder target shape (1, 2)); a box is
[x1, y1, x2, y2] in pixels within an image of known size (target shape (1, 4)). Records keep the raw units;
`target(normalize=True)` divides by the duration or the image size to give values in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

OUT_OF_RANGE = ("raise", "clip")
"""What a loader does with a timestamp or box outside the video or image: raise an error, or clip to it."""


class GroundingDataError(ValueError):
    """An annotation file does not follow its dataset's format; the message names the file and line/record."""


@dataclass(frozen=True)
class MomentRecord:
    """One (video, sentence) pair of temporal grounding (Charades-STA, ActivityNet-Captions)."""

    video_id: str
    query: str
    """The sentence describing the moment, stripped of surrounding whitespace."""
    start: float
    """Seconds from the start of the video, 0 <= start <= end."""
    end: float
    """Seconds, end <= duration."""
    duration: float
    """Length of the whole video in seconds (> 0)."""
    source: str
    """Where the record came from, 'file:line' or 'file:video_id[index]', for error messages."""

    def target(self, normalize: bool = False) -> np.ndarray:  # [1, 2] float32
        """[[start, end]] in seconds, or as fractions of the duration when normalize is True."""
        scale = self.duration if normalize else 1.0
        return np.array([[self.start / scale, self.end / scale]], dtype=np.float32)


@dataclass(frozen=True)
class BoxRecord:
    """One (image, referring expression) pair of RefCOCO / RefCOCO+ / RefCOCOg."""

    image_id: int
    file_name: str
    """Image file name from instances.json (e.g. COCO_train2014_000000581857.jpg)."""
    query: str
    box: tuple[float, float, float, float]
    """x1, y1, x2, y2 in pixels, 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height."""
    width: float
    height: float
    split: str
    """train, val, test, testA or testB, as written in the refs file."""
    ref_id: int
    ann_id: int
    sent_id: int | None
    """The sentence's id in the refs file, None when the file gives none."""
    category_id: int | None
    source: str
    """'file[ref index].sentences[j]', for error messages."""

    def target(self, normalize: bool = False) -> np.ndarray:  # [1, 4] float32
        """[[x1, y1, x2, y2]] in pixels, or divided by (width, height) when normalize is True."""
        scale = (self.width, self.height, self.width, self.height) if normalize else (1.0,) * 4
        return np.array([[c / s for c, s in zip(self.box, scale)]], dtype=np.float32)


def stack_targets(records: Sequence[MomentRecord | BoxRecord], normalize: bool = False) -> np.ndarray:
    """Decoder targets of many records: [N, 1, 2] for moments, [N, 1, 4] for boxes (float32)."""
    if not records:
        raise ValueError("stack_targets needs at least one record, got an empty sequence")
    kinds = {type(r).__name__ for r in records}
    if len(kinds) > 1:
        raise ValueError(f"stack_targets got a mix of record types {sorted(kinds)}; stack one kind at a time")
    return np.stack([r.target(normalize) for r in records])


def require_file(path: str | Path, what: str) -> Path:
    """The path as a Path; FileNotFoundError naming the file and what it should hold when it is missing."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p} (no such file)")
    return p


def parse_float(text, where: str, field: str) -> float:
    """A finite float from a number or numeric string, else GroundingDataError naming where and the value."""
    if isinstance(text, bool):
        raise GroundingDataError(f"{where}: {field} must be a number, got {text!r}")
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise GroundingDataError(f"{where}: {field} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise GroundingDataError(f"{where}: {field} must be finite, got {text!r}")
    return value


def check_out_of_range(out_of_range: str) -> None:
    if out_of_range not in OUT_OF_RANGE:
        raise ValueError(f"got out_of_range={out_of_range!r}, must be one of {list(OUT_OF_RANGE)}")


def fit_interval(start: float, end: float, limit: float, out_of_range: str, where: str, what: str
                 ) -> tuple[float, float]:
    """[start, end] checked to lie in [0, limit], or clipped to it when out_of_range == "clip".

    end < start is always an error. Clipping that leaves nothing of a non-empty interval (it lay wholly
    outside) is an error too: a clipped [limit, limit] would be a silent wrong label.
    """
    if end < start:
        raise GroundingDataError(f"{where}: {what} end {end!r} < start {start!r}")
    if 0.0 <= start and end <= limit:
        return start, end
    if out_of_range == "raise":
        raise GroundingDataError(
            f"{where}: {what} [{start!r}, {end!r}] lies outside [0, {limit!r}] "
            f"(pass out_of_range='clip' to clip it)"
        )
    s, e = min(max(start, 0.0), limit), min(max(end, 0.0), limit)
    if end < 0.0 or start > limit or (e <= s and end > start):
        raise GroundingDataError(f"{where}: {what} [{start!r}, {end!r}] lies wholly outside [0, {limit!r}]")
    return s, e
