"""Scenes of shapes and the referring expressions that pick one object out of them.

Grammar (all lower case):

    expression := "the" [extreme] [size] [colour] noun [relation "the" [size] [colour] noun]
    extreme    := largest | smallest | leftmost | rightmost | topmost | bottommost
    size       := small | large            (absolute size classes, far apart)
    noun       := square | circle | triangle | object
    relation   := "left of" | "right of" | "above" | "below"

An expression is resolved against a scene twice: strictly (what it certainly names) and loosely (what a reader
might take it to name: an object whose centre is left of the anchor, a circle almost as large as the
largest). It is unambiguous when both readings give the same single object; borderline scenes are thereby
rejected rather than given an answer that depends on a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from driftkit.grounding.synthetic_common import PALETTE, SHAPES, shape_mask

SIZE_WORDS = ("small", "large")
SIZE_EXTREMES = ("largest", "smallest")
POSITION_EXTREMES = ("leftmost", "rightmost", "topmost", "bottommost")
EXTREMES = SIZE_EXTREMES + POSITION_EXTREMES
RELATIONS = ("left of", "right of", "above", "below")
AREA_RATIO = 1.5
"""'the largest X' needs its area to be at least this times that of every other X (likewise smallest)."""
POSITION_MARGIN = 0.1
"""'the leftmost X' needs its centre left of every other X's centre by this fraction of the image side."""


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    """Size class, 'small' or 'large'."""
    box: tuple[int, int, int, int]
    """Pixel x0, y0, x1, y1 (x1, y1 exclusive), the tight box of the drawn pixels (a square box)."""
    area: int
    """Number of drawn pixels."""

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class Scene:
    size: int
    """Image height = width in pixels."""
    background: int
    """Grey level of the background."""
    objects: tuple[SceneObject, ...]

    def box(self, index: int) -> tuple[float, float, float, float]:
        """Object `index`'s box as x0, y0, x1, y1 fractions of the image side, in [0, 1]."""
        return tuple(v / self.size for v in self.objects[index].box)

    def render(self) -> np.ndarray:  # [H, W, 3] uint8
        image = np.full((self.size, self.size, 3), self.background, dtype=np.uint8)
        for obj in self.objects:
            x0, y0, x1, y1 = obj.box
            mask = shape_mask(obj.shape, x1 - x0)
            image[y0:y1, x0:x1][mask] = PALETTE[obj.colour]
        return image


@dataclass(frozen=True)
class Expression:
    """A parsed referring expression; `text` renders it, parse_expression(text) gives it back."""

    shape: str | None = None
    """None reads as 'object' (any shape)."""
    colour: str | None = None
    size: str | None = None
    extreme: str | None = None
    relation: str | None = None
    anchor: Expression | None = None
    """The object the relation is measured from (itself a plain attribute expression)."""

    def __post_init__(self):
        if (self.relation is None) != (self.anchor is None):
            raise ValueError(f"relation={self.relation!r} and anchor={self.anchor!r} must be given together")
        if self.relation is not None and self.extreme is not None:
            raise ValueError(f"got extreme={self.extreme!r} with relation={self.relation!r}; use one of them")
        if self.anchor is not None and (self.anchor.relation or self.anchor.extreme):
            raise ValueError(f"the anchor {self.anchor.text!r} must be a plain attribute expression")

    def _words(self, slots: bool) -> list[str]:
        words = ["the"] + ([self.extreme] if self.extreme else [])
        words += ["{size}" if slots else self.size] if self.size else []
        words += ["{colour}" if slots else self.colour] if self.colour else []
        words += ["{shape}" if slots and self.shape else self.shape or "object"]
        if self.relation:
            words += [self.relation] + self.anchor._words(slots)
        return words

    @property
    def text(self) -> str:
        return " ".join(self._words(slots=False))

    @property
    def template(self) -> str:
        """The text with attribute words as slots ('the leftmost {colour} object'); extremes and relations stay."""
        return " ".join(self._words(slots=True))


def parse_expression(text: str) -> Expression:
    """Text in the grammar above -> Expression; a ValueError names the first word that does not fit."""
    words = text.strip().lower().replace("left of", "left_of").replace("right of", "right_of").split()
    if not words or words[0] != "the":
        raise ValueError(f"expression {text!r} must start with 'the'")
    expr, rest = _parse_phrase(words[1:], text, allow_extreme=True)
    if not rest:
        return expr
    relation = rest[0].replace("_", " ")
    if relation not in RELATIONS:
        raise ValueError(f"unexpected word {relation!r} in expression {text!r}; expected one of {list(RELATIONS)}")
    if rest[1:2] != ["the"]:
        raise ValueError(f"expression {text!r} needs 'the' after {relation!r}")
    anchor, tail = _parse_phrase(rest[2:], text, allow_extreme=False)
    if tail:
        raise ValueError(f"unexpected words {' '.join(tail)!r} at the end of expression {text!r}")
    return replace(expr, relation=relation, anchor=anchor)


def _parse_phrase(words: list[str], text: str, allow_extreme: bool) -> tuple[Expression, list[str]]:
    fields, i = {}, 0
    for field, vocab in (("extreme", EXTREMES if allow_extreme else ()), ("size", SIZE_WORDS), ("colour", PALETTE)):
        if i < len(words) and words[i] in vocab:
            fields[field], i = words[i], i + 1
    if i >= len(words):
        raise ValueError(f"expression {text!r} ends without a noun (one of {list(SHAPES) + ['object']})")
    noun = words[i]
    if noun not in SHAPES and noun != "object":
        raise ValueError(f"unexpected word {noun!r} in expression {text!r}; expected a noun from "
                         f"{list(SHAPES) + ['object']} (after optional extreme, size and colour words)")
    return Expression(shape=None if noun == "object" else noun, **fields), words[i + 1:]


@dataclass(frozen=True)
class Resolution:
    strict: tuple[int, ...]
    """Objects the expression certainly names."""
    loose: tuple[int, ...]
    """Objects a reader might take it to name (a superset of strict)."""

    @property
    def unique(self) -> int | None:
        """The one object both readings agree on, or None."""
        return self.strict[0] if len(self.loose) == 1 and self.strict == self.loose else None


def resolve(scene: Scene, expr: Expression) -> Resolution:
    objs = scene.objects
    cands = [i for i, o in enumerate(objs) if (expr.shape in (None, o.shape) and expr.colour in (None, o.colour)
                                                and expr.size in (None, o.size))]
    if expr.relation is not None:
        anchor = resolve(scene, expr.anchor).unique
        if anchor is None:  # an ambiguous anchor leaves the target open too
            return Resolution((), tuple(cands))
        a = objs[anchor]
        strict = tuple(i for i in cands if _beyond(objs[i], a, expr.relation, strict=True))
        loose = tuple(i for i in cands if _beyond(objs[i], a, expr.relation, strict=False))
        return Resolution(strict, loose)
    if expr.extreme is None or not cands:
        return Resolution(tuple(cands), tuple(cands))
    key, margin = _extreme_key(scene, expr.extreme)
    values = {i: key(objs[i]) for i in cands}  # smaller is more extreme
    best = min(values.values())
    strict = tuple(i for i in cands if all(values[i] + margin <= values[j] for j in cands if j != i))
    loose = tuple(i for i in cands if values[i] < best + margin)
    return Resolution(strict, loose)


def is_unambiguous(scene: Scene, expression: str | Expression) -> bool:
    """True when exactly one object of the scene matches, under both the strict and the loose reading."""
    expr = parse_expression(expression) if isinstance(expression, str) else expression
    return resolve(scene, expr).unique is not None


def _beyond(obj: SceneObject, anchor: SceneObject, relation: str, strict: bool) -> bool:
    """Strict: the whole box lies beyond the anchor's box. Loose: the centre lies beyond the anchor's centre."""
    axis, sign = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}[relation]
    if not strict:
        return sign * (obj.center[axis] - anchor.center[axis]) > 0
    near, far = (obj.box[axis + 2], anchor.box[axis]) if sign < 0 else (anchor.box[axis + 2], obj.box[axis])
    return near <= far


def _extreme_key(scene: Scene, extreme: str):
    """(key, margin) with smaller keys more extreme; sizes compare log areas so the margin is a ratio."""
    if extreme in SIZE_EXTREMES:
        sign = -1.0 if extreme == "largest" else 1.0
        return (lambda o: sign * float(np.log(o.area))), float(np.log(AREA_RATIO))
    axis, sign = {"leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "bottommost": (1, -1)}[extreme]
    return (lambda o: sign * o.center[axis]), POSITION_MARGIN * scene.size
