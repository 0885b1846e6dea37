"""Input checks shared by every public entry point; each error names the bad value."""

from __future__ import annotations

import torch
from torch import Tensor


def check_finite(name: str, x: Tensor) -> None:
    if not torch.is_floating_point(x):
        return
    bad = ~torch.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or inf), first at index {first}: "
            f"{x[first].item()}"
        )


def check_shape(name: str, x: Tensor, expected: tuple, hint: str = "") -> None:
    """expected: ints, or None for any size. Raises with the actual and expected shape."""
    ok = x.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"{name} has shape {list(x.shape)}, expected {want}{hint}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"got {name}={value!r}, must be one of {sorted(choices)}")


def check_positive(name: str, value, allow_zero: bool = False) -> None:
    if value is None or (value < 0 if allow_zero else value <= 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"got {name}={value!r}, must be {bound}")


def check_fraction(name: str, value) -> None:
    """A share in (0, 1], e.g. the image tokens a reduction keeps."""
    if value is None or not 0.0 < value <= 1.0:
        raise ValueError(f"got {name}={value!r}, must be in (0, 1]")
