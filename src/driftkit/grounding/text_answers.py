"""Grounding answers as text, the way Qwen-VL models write them, and the parser back to numbers.

    answers = text_answers("qwen2_5_vl")                        # one small object per family
    answers.box((0.1, 0.2, 0.5, 0.6), width=112, height=112)  -> '{"bbox_2d": [11, 22, 56, 67]}'
    answers.parse_box(text, width=112, height=112)            -> (x1, y1, x2, y2) fractions, or None
    answers.interval((0.25, 0.5), seconds=16.0)               -> 'from 4.0 to 8.0 seconds'
    answers.parse_interval(text, seconds=16.0)                -> (start, end) fractions, or None

Box conventions (what each family's released checkpoints answer; a byte-level tokenizer writes the text
without the special box tokens the real vocabularies have):

    family      units                                  text
    qwen2_vl    0-1000 of the image side, integers      (x1,y1),(x2,y2)            (<|box_start|>..<|box_end|>)
    qwen2_5_vl  absolute pixels of the input image      {"bbox_2d": [x1, y1, x2, y2]}
    qwen3_vl    0-1000 of the image side, integers      {"bbox_2d": [x1, y1, x2, y2]}

Intervals are seconds with one decimal, "from 3.2 to 7.9 seconds", in every family. Scene descriptions list the
objects from left to right ("3 objects: a small red circle, ...").

Parsing is lenient about spaces and takes the first well-formed answer in the text; what it refuses is None
(the grounding metrics then score IoU 0, via parse_* -> NaN rows in answers_to_tensor):
  - no number pattern of the convention's form, or a non-finite number;
  - after clipping, an empty box (x2 <= x1 or y2 <= y1) or interval (end <= start).
Numbers out of range are clipped to the valid range ([0, 1000], [0, width] / [0, height], [0, seconds]) before
that check, so a box that pokes past the border still scores.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from driftkit.errors import check_choice, check_positive

NUMBER = r"(-?\d+(?:\.\d+)?)"
PER_MILLE = 1000.0
BOX_STYLES = {
    # style -> (format with {x1}.. placeholders, regex with four groups)
    "pairs": ("({x1},{y1}),({x2},{y2})",
              rf"\(\s*{NUMBER}\s*,\s*{NUMBER}\s*\)\s*,\s*\(\s*{NUMBER}\s*,\s*{NUMBER}\s*\)"),
    "json": ('{{"bbox_2d": [{x1}, {y1}, {x2}, {y2}]}}',
             rf'"bbox_2d"\s*:\s*\[\s*{NUMBER}\s*,\s*{NUMBER}\s*,\s*{NUMBER}\s*,\s*{NUMBER}\s*\]'),
}
INTERVAL_FORMAT = "from {start:.1f} to {end:.1f} seconds"
INTERVAL_PATTERN = rf"from\s+{NUMBER}\s+to\s+{NUMBER}\s*(?:s\b|sec|second)"
QUESTIONS = {
    "box": "Locate {expression}.",
    "interval": "{query}?",
    "describe": "Describe the image.",
}
"""Question templates of the pretraining mix; evaluation must ask the same way."""


@dataclass(frozen=True)
class TextAnswers:
    """One family's textual answer convention."""

    family: str
    """VLM family it belongs to (driftkit.backbones families)."""
    box_units: str
    """"per_mille" (0-1000 of the image side) or "pixels" (absolute pixels of the image as given)."""
    box_style: str
    """"pairs" ((x1,y1),(x2,y2)) or "json" ({"bbox_2d": [...]}), see BOX_STYLES."""

    def __post_init__(self):
        check_choice("box_units", self.box_units, ("per_mille", "pixels"))
        check_choice("box_style", self.box_style, tuple(BOX_STYLES))

    # ---- boxes -----------------------------------------------------------------------------------------
    def _scale(self, width: int, height: int) -> tuple[float, float]:
        check_positive("width", width)
        check_positive("height", height)
        return (PER_MILLE, PER_MILLE) if self.box_units == "per_mille" else (float(width), float(height))

    def box(self, box: Sequence[float], width: int, height: int) -> str:
        """box x1, y1, x2, y2 as fractions of the image side -> the family's text (integers, rounded)."""
        x1, y1, x2, y2 = _four(box)
        sx, sy = self._scale(width, height)
        values = {"x1": round(x1 * sx), "y1": round(y1 * sy), "x2": round(x2 * sx), "y2": round(y2 * sy)}
        return BOX_STYLES[self.box_style][0].format(**values)

    def parse_box(self, text: str, width: int, height: int) -> tuple[float, float, float, float] | None:
        """The first box of the family's form in `text` -> fractions (clipped to [0, 1]), or None."""
        sx, sy = self._scale(width, height)
        m = re.search(BOX_STYLES[self.box_style][1], text)
        if m is None:
            return None
        x1, y1, x2, y2 = (float(v) for v in m.groups())
        x1, x2 = (_clip(v / sx) for v in (x1, x2))
        y1, y2 = (_clip(v / sy) for v in (y1, y2))
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
            return None
        return x1, y1, x2, y2

    # ---- intervals -------------------------------------------------------------------------------------
    def interval(self, interval: Sequence[float], seconds: float) -> str:
        """[start, end] as fractions of the clip -> "from S to E seconds" (clip of `seconds` seconds)."""
        check_positive("seconds", seconds)
        start, end = (float(v) for v in interval)
        return INTERVAL_FORMAT.format(start=start * seconds, end=end * seconds)

    def parse_interval(self, text: str, seconds: float) -> tuple[float, float] | None:
        """The first "from S to E seconds" in `text` -> fractions of the clip (clipped to [0, 1]), or None."""
        check_positive("seconds", seconds)
        m = re.search(INTERVAL_PATTERN, text)
        if m is None:
            return None
        start, end = (_clip(float(v) / seconds) for v in m.groups())
        if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
            return None
        return start, end

    # ---- descriptions ----------------------------------------------------------------------------------
    def describe(self, objects: Sequence[tuple[str, str, str, float]]) -> str:
        """objects as (size, colour, shape, centre x) -> "N objects: a small red circle, ..." left to right."""
        ordered = sorted(objects, key=lambda o: o[3])
        names = ", ".join(f"a {size} {colour} {shape}" for size, colour, shape, _ in ordered)
        return f"{len(ordered)} object{'s' if len(ordered) != 1 else ''}: {names}"


TEXT_ANSWERS: dict[str, TextAnswers] = {
    a.family: a for a in (
        TextAnswers("qwen2_vl", "per_mille", "pairs"),
        TextAnswers("qwen2_5_vl", "pixels", "json"),
        TextAnswers("qwen3_vl", "per_mille", "json"),
    )
}


def text_answers(family: str) -> TextAnswers:
    """The answer convention of a family; families without one (SmolVLM, PaliGemma) raise, naming the known."""
    if family not in TEXT_ANSWERS:
        raise ValueError(f"no text-answer convention for family {family!r}; known: {sorted(TEXT_ANSWERS)}")
    return TEXT_ANSWERS[family]


def answers_to_tensor(parsed: Sequence[tuple[float, ...] | None], dim: int) -> Tensor:  # [N, 1, dim]
    """Parsed answers -> [N, 1, dim] float32, NaN rows where the answer did not parse (metrics score them 0)."""
    check_positive("dim", dim)
    out = torch.full((len(parsed), 1, dim), float("nan"))
    for i, p in enumerate(parsed):
        if p is not None:
            if len(p) != dim:
                raise ValueError(f"parsed[{i}] has {len(p)} numbers, expected {dim}")
            out[i, 0] = torch.tensor(p, dtype=torch.float32)
    return out


def _four(box: Sequence[float]) -> tuple[float, float, float, float]:
    values = tuple(float(v) for v in box)
    if len(values) != 4:
        raise ValueError(f"got box={box!r}, need 4 numbers x1, y1, x2, y2")
    return values  # type: ignore[return-value]


def _clip(v: float) -> float:
    return min(1.0, max(0.0, v)) if math.isfinite(v) else v
