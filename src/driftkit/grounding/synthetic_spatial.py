"""Procedural referring-box benchmark: shapes on a grey image, one expression, the exact box of its object.

Each example plants the structure its expression kind needs (a same-colour same-shape twin for size and
relation expressions, two of a shape for extremes), fills the scene with random objects, and keeps one
expression of that kind that names exactly one object (synthetic_expressions.is_unambiguous) and whose object
shares its colour or shape with another object. Positions are uniform, so a given expression names objects
all over the image across examples and the text alone does not give the box.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from driftkit.errors import check_choice
from driftkit.grounding.synthetic_common import (
    MIN_SIDE, PALETTE, SHAPES, SPATIAL_TASK, check_int, check_names, check_split_sizes, draw_background, example_rng,
    shape_mask, split_size,
)
from driftkit.grounding.synthetic_expressions import (
    POSITION_EXTREMES, RELATIONS, SIZE_EXTREMES, Expression, Scene, SceneObject, resolve,
)

SPATIAL_KINDS = ("single", "colour", "colour_shape", "size_colour_shape", "size_shape", "relation", "extreme_size", "extreme_position")
SIZE_RANGES = {"small": (0.10, 0.15), "large": (0.22, 0.30)}
"""Object side as a fraction of the image side, per size class (areas differ by more than 2x between classes)."""
GAP = 2
"""Minimum number of background pixels between two objects' boxes."""
MAX_TRIES = 200


@dataclass
class SpatialGroundingConfig:
    image_size: int = 64
    """Side of the square RGB images in pixels (>= 32)."""
    min_objects: int = 3
    """Fewest objects per image (>= 3: a relation needs a target, its twin and an anchor)."""
    max_objects: int = 6
    """Most objects per image (<= 10)."""
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    """Colour names used, from synthetic_common.PALETTE (>= 2)."""
    shapes: tuple[str, ...] = SHAPES
    """Shape names used (>= 2)."""
    kinds: tuple[str, ...] = ("colour_shape", "size_colour_shape", "size_shape", "relation", "extreme_size",
                              "extreme_position")
    """Expression kinds drawn uniformly per example. The default mix needs both attributes, sizes, relations or
    extremes to single out the object; 'colour' (the one object of its colour) is an easier referring kind, and
    'single' (one object, no distractor) a localisation-only warm-up that needs the image but not the text."""
    train_size: int = 512
    val_size: int = 128
    test_size: int = 256
    seed: int = 0
    """Base seed (>= 0); each split and example derives its own stream from it."""

    def __post_init__(self):
        check_int("image_size", self.image_size, 32)
        check_int("min_objects", self.min_objects, 3)
        check_int("max_objects", self.max_objects, self.min_objects, 10)
        self.colours = check_names("colours", self.colours, PALETTE, 2)
        self.shapes = check_names("shapes", self.shapes, SHAPES, 2)
        self.kinds = check_names("kinds", self.kinds, SPATIAL_KINDS, 1)
        check_split_sizes(self)


@dataclass
class SpatialExample:
    image: Image.Image
    """RGB image, image_size x image_size."""
    expression: str
    box: tuple[float, float, float, float]
    """x0, y0, x1, y1 of the named object as fractions of the image side, in [0, 1]."""
    kind: str
    """Expression kind, one of SPATIAL_KINDS."""
    template: str
    """The expression with attribute words as slots, e.g. 'the {size} {colour} {shape}'."""
    scene: Scene = field(repr=False)
    target: int = 0
    """Index of the named object in scene.objects."""

    @property
    def query(self) -> str:
        return self.expression

    def target_array(self) -> np.ndarray:  # [1, 4] float32
        return np.array([self.box], dtype=np.float32)


def make_spatial_split(cfg: SpatialGroundingConfig, split: str) -> list[SpatialExample]:
    """The split's examples, a pure function of (cfg, split); splits draw from disjoint seed streams."""
    return [make_spatial_example(cfg, split, i) for i in range(split_size(cfg, split))]


def make_spatial_example(cfg: SpatialGroundingConfig, split: str, index: int) -> SpatialExample:
    """Example `index` of a split (the same whatever the split's size)."""
    rng = example_rng(cfg.seed, SPATIAL_TASK, split, index)
    kind = cfg.kinds[int(rng.integers(len(cfg.kinds)))]
    for _ in range(MAX_TRIES):
        scene = _sample_scene(cfg, _plant(cfg, kind, rng), rng)
        if scene is None:
            continue
        options = [(e, i) for e, i in _expressions(scene, kind) if kind == "single" or _has_distractor(scene, i)]
        if options:
            expr, target = options[int(rng.integers(len(options)))]
            image = Image.fromarray(scene.render())
            return SpatialExample(image, expr.text, scene.box(target), kind, expr.template, scene, target)
    raise RuntimeError(f"found no unambiguous {kind!r} expression in {MAX_TRIES} scenes for {cfg}; allow more "
                       "objects, colours or shapes, or a larger image_size")


def _plant(cfg: SpatialGroundingConfig, kind: str, rng) -> list[tuple]:
    """(colour, shape, size) of the objects the kind needs; None fields are drawn at random."""
    c, c2 = rng.choice(len(cfg.colours), 2, replace=False)
    s, s2 = rng.choice(len(cfg.shapes), 2, replace=False)
    c, c2, s, s2 = cfg.colours[c], cfg.colours[c2], cfg.shapes[s], cfg.shapes[s2]
    return {
        "single": [(c, s, None)],
        "colour": [(c, s, None), (c2, s, None)],
        "colour_shape": [(c, s, None), (c, s2, None), (c2, s, None)],
        "size_colour_shape": [(c, s, "small"), (c, s, "large"), (c2, s, None)],
        "size_shape": [(c, s, "small"), (c2, s, "large")],
        "relation": [(c, s, None), (c, s, None), (c2, s2, None)],
        "extreme_size": [(c, s, None), (c2, s, None), (c, s2, None)],
        "extreme_position": [(c, s, None), (c2, s, None), (c, s2, None)],
    }[kind]


def _sample_scene(cfg: SpatialGroundingConfig, planted: list[tuple], rng) -> Scene | None:
    n = 1 if len(planted) == 1 else max(len(planted), int(rng.integers(cfg.min_objects, cfg.max_objects + 1)))
    specs = list(planted) + [(None, None, None)] * (n - len(planted))
    objects = []
    for i in rng.permutation(n):
        colour, shape, size = specs[i]
        colour = colour or cfg.colours[int(rng.integers(len(cfg.colours)))]
        shape = shape or cfg.shapes[int(rng.integers(len(cfg.shapes)))]
        size = size or ("small", "large")[int(rng.integers(2))]
        lo, hi = SIZE_RANGES[size]
        side = max(MIN_SIDE, int(round(rng.uniform(lo, hi) * cfg.image_size)))
        box = _place(side, cfg.image_size, [o.box for o in objects], rng)
        if box is None:
            return None
        objects.append(SceneObject(shape, colour, size, box, int(shape_mask(shape, side).sum())))
    return Scene(cfg.image_size, draw_background(rng), tuple(objects))


def _place(side: int, image_size: int, boxes: list[tuple], rng) -> tuple[int, int, int, int] | None:
    for _ in range(50):
        x, y = (int(v) for v in rng.integers(0, image_size - side + 1, size=2))
        box = (x, y, x + side, y + side)
        if all(box[0] >= b[2] + GAP or b[0] >= box[2] + GAP or box[1] >= b[3] + GAP or b[1] >= box[3] + GAP
               for b in boxes):
            return box
    return None


def _expressions(scene: Scene, kind: str) -> list[tuple[Expression, int]]:
    """Every unambiguous expression of the kind in the scene, with the object it names."""
    objs, found = scene.objects, []
    for i, o in enumerate(objs):
        twins = [j for j, p in enumerate(objs) if j != i and (p.colour, p.shape) == (o.colour, o.shape)]
        same_shape = [j for j, p in enumerate(objs) if j != i and p.shape == o.shape]
        same_colour = [j for j, p in enumerate(objs) if j != i and p.colour == o.colour]
        if kind == "single":
            cands = [Expression(o.shape, o.colour)]
        elif kind == "colour":
            cands = [Expression(colour=o.colour)]
        elif kind == "colour_shape":
            cands = [Expression(o.shape, o.colour)]
        elif kind == "size_colour_shape":
            cands = [Expression(o.shape, o.colour, o.size)] if twins else []
        elif kind == "size_shape":
            cands = [Expression(o.shape, size=o.size)] if same_shape else []
        elif kind == "relation":
            cands = [Expression(o.shape, o.colour, relation=r, anchor=Expression(p.shape, p.colour))
                     for p in objs if twins and (p.colour, p.shape) != (o.colour, o.shape) for r in RELATIONS]
        else:
            extremes = SIZE_EXTREMES if kind == "extreme_size" else POSITION_EXTREMES
            cands = [Expression(o.shape, extreme=x) for x in extremes if same_shape]
            cands += [Expression(colour=o.colour, extreme=x) for x in extremes if same_colour]
        found += [(e, i) for e in cands if resolve(scene, e).unique == i]
    return found


def _has_distractor(scene: Scene, target: int) -> bool:
    """Another object shares the target's colour or shape, so neither word alone finds it."""
    t = scene.objects[target]
    return any(j != target and (o.colour == t.colour or o.shape == t.shape) for j, o in enumerate(scene.objects))


def spatial_kind_counts(examples: list[SpatialExample]) -> dict[str, int]:
    """How many examples of each expression kind (for reports)."""
    counts = {k: 0 for k in SPATIAL_KINDS}
    for ex in examples:
        check_choice("kind", ex.kind, SPATIAL_KINDS)
        counts[ex.kind] += 1
    return counts
