"""Procedural moment benchmark: short clips of shapes in which things happen, a query naming one event, and
the exact [start, end] of that event as fractions of the clip.

The frame is split into grid x grid cells and each object lives in its own cell (it moves only inside it),
so the pixels of a cell change exactly when its object's event happens. Frame k covers time [k / F, (k+1) / F);
an event changes the picture on frames first..last (each differs from the frame before), so its interval is
[first / F, (last + 1) / F], with first >= 1 (frame 0 shows the state before anything happens).

Events (one per object at most, each spread over several frames):
    appear     fades in from the background        "when does the red circle appear"
    disappear  fades out                           "when does the red circle disappear"
    move       slides to another spot in its cell  "when does the red circle move"
    recolour   blends into another colour          "when does the red circle turn blue"
Every colour-shape pair an object ever shows belongs to that object alone, so each query names one object;
other objects, some sharing the target's colour or shape, have their own events at random times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from driftkit.grounding.synthetic_common import (
    MIN_SIDE, PALETTE, SHAPES, TEMPORAL_TASK, check_int, check_names, check_split_sizes, draw_background, example_rng,
    shape_mask, split_size,
)

EVENT_KINDS = ("appear", "disappear", "move", "recolour")
SIDE_RANGE = (0.3, 0.45)
"""Object side as a fraction of the cell side."""
DISTRACTOR_EVENT_PROB = 0.7
"""Chance that an object other than the target (and the first distractor, which always has one) has an event."""
MAX_TRIES = 100


@dataclass
class TemporalGroundingConfig:
    frame_size: int = 32
    """Side of the square RGB frames in pixels."""
    num_frames: int = 32
    """Frames per clip (>= 4)."""
    grid: int = 2
    """Cells per side; each object has a cell of its own, so max_objects <= grid**2."""
    min_objects: int = 2
    """Fewest objects per clip (>= 2: the target and a distractor with its own event)."""
    max_objects: int = 4
    min_event_frames: int = 2
    """Fewest frames an event spreads over (>= 1)."""
    max_event_frames: int = 6
    """Most frames an event spreads over (< num_frames)."""
    event_kinds: tuple[str, ...] = EVENT_KINDS
    """Kinds of the queried event, drawn uniformly per clip (distractor events use all kinds)."""
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = SHAPES
    train_size: int = 512
    val_size: int = 128
    test_size: int = 256
    seed: int = 0

    def __post_init__(self):
        check_int("num_frames", self.num_frames, 4)
        check_int("grid", self.grid, 1, 4)
        check_int("min_objects", self.min_objects, 2)
        check_int("max_objects", self.max_objects, self.min_objects, self.grid**2)
        check_int("min_event_frames", self.min_event_frames, 1)
        check_int("max_event_frames", self.max_event_frames, self.min_event_frames, self.num_frames - 1)
        check_int("frame_size", self.frame_size, 8 * self.grid)
        if self.room < self.max_event_frames:
            raise ValueError(f"got frame_size={self.frame_size} with grid={self.grid}: objects can move only "
                             f"{self.room} px in a cell, fewer than max_event_frames={self.max_event_frames} "
                             "(a move shifts at least 1 px per frame); use larger frames or a smaller grid")
        self.event_kinds = check_names("event_kinds", self.event_kinds, EVENT_KINDS, 1)
        self.colours = check_names("colours", self.colours, PALETTE, 2)
        self.shapes = check_names("shapes", self.shapes, SHAPES, 2)
        pairs = len(self.colours) * len(self.shapes)
        if self.max_objects > pairs:
            raise ValueError(f"got max_objects={self.max_objects}, but {len(self.colours)} colours x "
                             f"{len(self.shapes)} shapes give only {pairs} distinct objects")
        check_split_sizes(self)

    @property
    def cell(self) -> int:
        return self.frame_size // self.grid

    @property
    def room(self) -> int:
        """The fewest pixels the largest object can travel along an axis inside its cell (1 px cell margin)."""
        return self.cell - 2 - max(MIN_SIDE, math.ceil(SIDE_RANGE[1] * self.cell))


@dataclass(frozen=True)
class TemporalEvent:
    kind: str
    query: str
    first: int
    """First frame that differs from the frame before because of this event (>= 1)."""
    last: int
    """Last such frame."""
    interval: tuple[float, float]
    """[first / F, (last + 1) / F], fractions of the clip."""
    region: tuple[int, int, int, int]
    """Pixel x0, y0, x1, y1 of the object's cell (x1, y1 exclusive); no other object enters it."""


@dataclass
class TemporalExample:
    frames: list[Image.Image]
    """num_frames RGB frames."""
    query: str
    interval: tuple[float, float]
    """[start, end] of the queried event as fractions of the clip, 0 < start < end <= 1."""
    kind: str
    template: str
    """The query with attribute words as slots, e.g. 'when does the {colour} {shape} turn {colour}'."""
    events: tuple[TemporalEvent, ...]
    """Every event in the clip, the queried one first."""

    @property
    def video(self) -> np.ndarray:  # [F, H, W, 3] uint8
        return np.stack([np.asarray(f) for f in self.frames])

    def target_array(self) -> np.ndarray:  # [1, 2] float32
        return np.array([self.interval], dtype=np.float32)


@dataclass
class _Track:
    """One object over the clip: per-frame top-left corner, colour and opacity."""

    shape: str
    colour: str
    side: int
    region: tuple[int, int, int, int]
    pos: np.ndarray  # [F, 2] int (x, y)
    rgb: np.ndarray  # [F, 3] float
    alpha: np.ndarray  # [F] float in [0, 1]


def make_temporal_split(cfg: TemporalGroundingConfig, split: str) -> list[TemporalExample]:
    """The split's clips, a pure function of (cfg, split); splits draw from disjoint seed streams."""
    return [make_temporal_example(cfg, split, i) for i in range(split_size(cfg, split))]


def make_temporal_example(cfg: TemporalGroundingConfig, split: str, index: int) -> TemporalExample:
    rng = example_rng(cfg.seed, TEMPORAL_TASK, split, index)
    kind = cfg.event_kinds[int(rng.integers(len(cfg.event_kinds)))]
    for _ in range(MAX_TRIES):
        clip = _sample_clip(cfg, kind, rng)
        if clip is not None:
            return clip
    raise RuntimeError(f"could not give every object a colour-shape pair of its own in {MAX_TRIES} tries for {cfg}; "
                       "allow more colours or shapes, or fewer objects")


def _sample_clip(cfg: TemporalGroundingConfig, kind: str, rng) -> TemporalExample | None:
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    cells = rng.permutation(cfg.grid**2)[:n]
    colours, shapes = _attributes(cfg, n, rng)
    used = set(zip(colours, shapes))  # colour-shape pairs taken; a recolour's new pair must be free too
    background = draw_background(rng)
    tracks, events = [], []
    for i in range(n):
        track = _static_track(cfg, colours[i], shapes[i], int(cells[i]), rng)
        if i == 0:
            event_kind = kind
        elif i == 1 or rng.random() < DISTRACTOR_EVENT_PROB:
            event_kind = EVENT_KINDS[int(rng.integers(len(EVENT_KINDS)))]
        else:
            event_kind = None
        if event_kind is not None:
            event = _add_event(cfg, track, event_kind, used, rng)
            if event is None and i == 0:
                return None
            events.append(event or _add_event(cfg, track, "move", used, rng))  # no free colour: move instead
        tracks.append(track)
    frames = [Image.fromarray(f) for f in _render(cfg, tracks, background)]
    target = events[0]
    template = "when does the {colour} {shape} " + ("turn {colour}" if target.kind == "recolour" else target.kind)
    return TemporalExample(frames, target.query, target.interval, target.kind, template, tuple(events))


def _attributes(cfg: TemporalGroundingConfig, n: int, rng) -> tuple[list[str], list[str]]:
    """Distinct colour-shape pairs; object 1 shares the target's (object 0's) colour or shape."""
    pairs = [(c, s) for c in cfg.colours for s in cfg.shapes]
    first = pairs[int(rng.integers(len(pairs)))]
    sharing = [p for p in pairs if p != first and (p[0] == first[0] or p[1] == first[1])]
    chosen = [first, sharing[int(rng.integers(len(sharing)))]]
    rest = [p for p in pairs if p not in chosen]
    chosen += [rest[int(j)] for j in rng.choice(len(rest), n - 2, replace=False)]
    return [c for c, _ in chosen], [s for _, s in chosen]


def _static_track(cfg: TemporalGroundingConfig, colour: str, shape: str, cell: int, rng) -> _Track:
    f, c = cfg.num_frames, cfg.cell
    x0, y0 = (cell % cfg.grid) * c, (cell // cfg.grid) * c
    side = max(MIN_SIDE, int(round(rng.uniform(*SIDE_RANGE) * c)))
    xy = rng.integers(1, c - side, size=2)  # 1 px margin on every side of the cell
    pos = np.tile(np.array([x0, y0]) + xy, (f, 1))
    rgb = np.tile(np.array(PALETTE[colour], dtype=float), (f, 1))
    return _Track(shape, colour, side, (x0, y0, x0 + c, y0 + c), pos, rgb, np.ones(f))


def _add_event(cfg: TemporalGroundingConfig, track: _Track, kind: str, used: set, rng) -> TemporalEvent | None:
    """Writes the event into the track's per-frame state; None when a recolour has no free colour."""
    f = cfg.num_frames
    d = int(rng.integers(cfg.min_event_frames, cfg.max_event_frames + 1))
    first = int(rng.integers(1, f - d + 1))
    last = first + d - 1
    ramp = np.clip((np.arange(f) - first + 1) / d, 0.0, 1.0)  # [F] 0 before, 1 from `last` on
    query = f"when does the {track.colour} {track.shape} {kind}"
    if kind == "appear":
        track.alpha = ramp
    elif kind == "disappear":
        track.alpha = 1.0 - ramp
    elif kind == "move":
        track.pos = _move(cfg, track, d, ramp, rng)
    else:
        free = [c for c in cfg.colours if c != track.colour and (c, track.shape) not in used]
        if not free:
            return None
        new = free[int(rng.integers(len(free)))]
        used.add((new, track.shape))
        start, end = np.array(PALETTE[track.colour], float), np.array(PALETTE[new], float)
        track.rgb = start + ramp[:, None] * (end - start)
        query = f"when does the {track.colour} {track.shape} turn {new}"
    return TemporalEvent(kind, query, first, last, (first / f, (last + 1) / f), track.region)


def _move(cfg: TemporalGroundingConfig, track: _Track, d: int, ramp: np.ndarray, rng) -> np.ndarray:
    """Positions [F, 2] sliding between two spots at least d px apart along some axis, so every step moves
    >= 1 px (the start is redrawn with the end: from a central start no spot may be d px away)."""
    low = np.array(track.region[:2]) + 1
    high = np.array(track.region[:2]) + cfg.cell - track.side - 1  # inclusive
    while True:  # cfg.room >= max_event_frames guarantees such pairs exist
        start, end = rng.integers(low, high + 1, size=(2, 2))
        if np.abs(end - start).max() >= d:
            break
    return np.floor(start + ramp[:, None] * (end - start) + 0.5).astype(int)


def _render(cfg: TemporalGroundingConfig, tracks: list[_Track], background: int) -> np.ndarray:  # [F, H, W, 3]
    f, s = cfg.num_frames, cfg.frame_size
    video = np.full((f, s, s, 3), float(background))
    for t in tracks:
        mask = shape_mask(t.shape, t.side)
        for k in range(f):
            x, y = t.pos[k]
            patch = video[k, y:y + t.side, x:x + t.side]
            patch[mask] = background + t.alpha[k] * (t.rgb[k] - background)
    return np.floor(video + 0.5).astype(np.uint8)
