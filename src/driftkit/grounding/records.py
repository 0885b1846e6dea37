"""Typed records shared by the grounding loaders, and the checks every loader applies to them.

A moment is [start, end] in seconds within a video of known duration (decoder target shape (1, 2)); a box is
[x1, y1, x2, y2] in pixels within an image of known size (target shape (1, 4)). Records keep the raw units;
`target(normalize=True)` divides by the duration or the image size to give values in [0, 1].

Every loader applies one policy, held by a LoadReport, to what the released files contain:

- invalid entries (unparsable, end <= start, wholly outside the video or image): invalid="drop" (default)
  skips them, invalid="raise" raises GroundingDataError naming the file and line or record;
- entries that overrun [0, duration] or the image by at most `tolerance` (float noise: TIME_TOLERANCE seconds,
  PIXEL_TOLERANCE pixels) are snapped to the bound silently, in every mode;
- entries that overrun by more: out_of_range="clip" (default) clips them, out_of_range="raise" raises;
- one GroundingDataWarning per loaded file counts what was dropped (naming the first few) and clipped.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

OUT_OF_RANGE = ("raise", "clip")
"""What a loader does with a timestamp or box outside the video or image: raise an error, or clip to it."""
INVALID = ("drop", "raise")
"""What a loader does with an entry it cannot use (unparsable, end <= start): skip it, or raise."""
TIME_TOLERANCE = 1e-3
"""Seconds a moment may overrun [0, duration] and still count as inside (snapped to the bound, not reported).
The released ActivityNet-Captions files hold ends past the duration by ~1e-14 s (sums of rounded floats)."""
PIXEL_TOLERANCE = 1e-3
"""Pixels a box may overrun the image and still count as inside (snapped, not reported)."""
SHOWN_PROBLEMS = 3
"""How many dropped entries a load warning names."""


class GroundingDataError(ValueError):
    """An annotation file does not follow its dataset's format; the message names the file and line/record.

    droppable: False for errors that invalid="drop" must not skip, because they are not about one entry:
    the inputs disagree (a video with no duration) or out_of_range="raise" asked for the error.
    """

    def __init__(self, message: str, droppable: bool = True):
        super().__init__(message)
        self.droppable = droppable


class GroundingDataWarning(UserWarning):
    """A loaded file had entries dropped as invalid or clipped to the video/image; issued once per file."""


@dataclass(frozen=True)
class MomentRecord:
    """One (video, sentence) pair of temporal grounding (Charades-STA, ActivityNet-Captions)."""

    video_id: str
    query: str
    """The sentence describing the moment, stripped of surrounding whitespace."""
    start: float
    """Seconds from the start of the video, 0 <= start < end."""
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


def read_text(path: Path) -> str:
    """The file as text; a UTF-8 byte-order mark (written by some Windows editors) is dropped."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise GroundingDataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def read_json(path: Path):
    """The parsed JSON of a file (BOM allowed); GroundingDataError naming file and line when it is not JSON."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise GroundingDataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


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


def check_policy(invalid: str, out_of_range: str, tolerance: float) -> None:
    """ValueError naming the bad value when a loader's invalid / out_of_range / tolerance is not one it knows."""
    if invalid not in INVALID:
        raise ValueError(f"got invalid={invalid!r}, must be one of {list(INVALID)}")
    if out_of_range not in OUT_OF_RANGE:
        raise ValueError(f"got out_of_range={out_of_range!r}, must be one of {list(OUT_OF_RANGE)}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
        raise ValueError(f"got tolerance={tolerance!r}, must be a finite number >= 0")


def fit_interval(start: float, end: float, limit: float, out_of_range: str, where: str, what: str,
                 tolerance: float = 0.0) -> tuple[float, float]:
    """[start, end] checked to lie in [0, limit], or clipped to it when out_of_range == "clip".

    Bounds overrun by at most `tolerance` are snapped to the bound in every mode (float noise). end <= start
    is always an error: an empty moment or box can never be hit. Clipping that leaves nothing (the interval
    lay wholly outside) is an error too: a clipped [limit, limit] would be a silent wrong label. Errors are
    droppable except the one out_of_range="raise" asks for.
    """
    if end < start:
        raise GroundingDataError(f"{where}: {what} end {end!r} < start {start!r}")
    if end == start:
        raise GroundingDataError(f"{where}: {what} is empty (start == end == {start!r})")
    s = 0.0 if -tolerance <= start < 0.0 else start
    e = limit if limit < end <= limit + tolerance else end
    if 0.0 <= s and e <= limit:
        return s, e
    if e <= 0.0 or s >= limit:
        raise GroundingDataError(f"{where}: {what} [{start!r}, {end!r}] lies wholly outside [0, {limit!r}]")
    if out_of_range == "raise":
        raise GroundingDataError(
            f"{where}: {what} [{start!r}, {end!r}] lies outside [0, {limit!r}] by more than the tolerance "
            f"{tolerance:g} (pass out_of_range='clip' to clip it)", droppable=False,
        )
    return max(s, 0.0), min(e, limit)


@dataclass
class LoadReport:
    """What one load of one file dropped and clipped, under the loader's invalid / out_of_range policy;
    `finish` says it in one GroundingDataWarning."""

    path: Path
    invalid: str = "drop"
    out_of_range: str = "clip"
    tolerance: float = 0.0
    unit: tuple[str, str] = ("line", "lines")
    """What a dropped entry is, singular and plural, for the warning."""
    kind: str = "moments"
    """What one kept record is, for the warning ("moments", "boxes")."""
    limits: str = "[0, duration]"
    """What a clipped entry overran, for the warning ("[0, duration]", "the image")."""
    measure: str = "s"
    """The unit of the tolerance and overruns, for the warning ("s", "px")."""
    dropped: list[str] = field(default_factory=list)
    """The error message of every dropped entry, in file order."""
    overruns: list[float] = field(default_factory=list)
    """For every clipped entry, how far it ran outside its bounds (beyond the tolerance)."""

    def __post_init__(self):
        check_policy(self.invalid, self.out_of_range, self.tolerance)

    def drop(self, error: GroundingDataError) -> None:
        """Record a bad entry, or raise its error in strict mode (or when the error is not droppable)."""
        if self.invalid == "raise" or not error.droppable:
            raise error
        self.dropped.append(str(error))

    def fit(self, start: float, end: float, limit: float, where: str, what: str) -> tuple[float, float]:
        """fit_interval under this report's policy; counts a clip when a bound is overrun beyond tolerance."""
        fitted = fit_interval(start, end, limit, self.out_of_range, where, what, self.tolerance)
        self.note_overrun(max(-start, end - limit))
        return fitted

    def note_overrun(self, overrun: float) -> None:
        """Count one clipped entry when `overrun` (how far it left its bounds) exceeds the tolerance."""
        if overrun > self.tolerance:
            self.overruns.append(overrun)

    def finish(self, num_kept: int) -> None:
        """Warn once if anything was dropped or clipped; GroundingDataError if every entry was dropped."""
        n = len(self.dropped)
        units = f"{n} invalid {self.unit[n != 1]}"
        if num_kept == 0 and n:
            raise GroundingDataError(f"{self.path}: every entry is invalid ({units}; first: {self.dropped[0]})")
        parts = []
        if n:
            # Each message starts with the full path, which begins the warning: name the file only.
            shown = "; ".join(self.path.name + m.removeprefix(str(self.path)) for m in self.dropped[:SHOWN_PROBLEMS])
            more = f"; and {n - SHOWN_PROBLEMS} more" if n > SHOWN_PROBLEMS else ""
            parts.append(f"dropped {units} ({shown}{more}); pass invalid='raise' to raise instead")
        if self.overruns:
            u = self.measure
            parts.append(f"clipped {len(self.overruns)} of {num_kept} {self.kind} that overran {self.limits} by "
                         f"more than {self.tolerance:g} {u} (median {float(np.median(self.overruns)):.3g} {u}, "
                         f"max {max(self.overruns):.3g} {u}); pass out_of_range='raise' to raise instead")
        if parts:
            warnings.warn(f"{self.path}: " + "; ".join(parts), GroundingDataWarning, stacklevel=3)
