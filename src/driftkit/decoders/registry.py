"""Name -> decoder class, and the factory users call."""

from __future__ import annotations

import dataclasses

from driftkit.decoders.base import Decoder

DECODERS: dict[str, type[Decoder]] = {}


def register_decoder(cls: type[Decoder]) -> type[Decoder]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    DECODERS[cls.name] = cls
    return cls


def list_decoders() -> dict[str, str]:
    """Registry name -> one-line summary."""
    return {name: cls.summary for name, cls in DECODERS.items()}


def decoder_class(name: str) -> type[Decoder]:
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; available: {sorted(DECODERS)}")
    return DECODERS[name]


def decoder_config(name: str, cond_dim: int, target_shape: tuple[int, int], **options):
    """The validated config dataclass of decoder `name` (built without any weights); unknown or bad options
    raise, naming them. Policy configs call this when they are built, before any data loads."""
    cls = decoder_class(name)
    known = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(options) - known)
    if unknown:
        valid = sorted(known - {"cond_dim", "target_shape"})
        raise ValueError(f"unknown option(s) {unknown} for decoder {name!r}; valid options: {valid}")
    options.setdefault("normalization", cls.default_normalization)
    return cls.config_class(cond_dim=cond_dim, target_shape=target_shape, **options)


def make_decoder(name: str, cond_dim: int, target_shape: tuple[int, int], **options) -> Decoder:
    """Build a decoder by registry name. options are fields of its config dataclass."""
    return decoder_class(name)(decoder_config(name, cond_dim, target_shape, **options))
