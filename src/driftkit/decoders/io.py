"""Save and load a decoder: config.json (registry name + config) and model.safetensors, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_model, save_model

from driftkit.atomic import atomic_dir
from driftkit.decoders.base import Decoder
from driftkit.decoders.registry import make_decoder

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def save_decoder(decoder: Decoder, path: str | os.PathLike) -> Path:
    """Write the decoder to directory `path`. An existing directory is replaced only once the new one is
    complete, so an interrupted save never leaves a half-written decoder in its place."""
    with atomic_dir(path) as tmp:
        config = decoder.config.to_dict()
        (tmp / CONFIG_FILE).write_text(json.dumps({"decoder": type(decoder).name, "config": config}, indent=2))
        save_model(decoder, str(tmp / WEIGHTS_FILE))
    return Path(path)


def load_decoder(path: str | os.PathLike, expect: str | None = None) -> Decoder:
    """Rebuild a decoder saved by save_decoder. expect: the registry name the caller needs (checked)."""
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no decoder at {path}: {cfg_file} is missing")
    try:
        saved = json.loads(cfg_file.read_text())
        name, options = saved["decoder"], dict(saved["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{cfg_file} is not a driftkit decoder config: {err}") from err
    if expect is not None and name != expect:
        raise ValueError(f"{path} holds a {name!r} decoder, expected {expect!r}")
    decoder = make_decoder(name, options.pop("cond_dim"), tuple(options.pop("target_shape")), **options)
    load_model(decoder, str(path / WEIGHTS_FILE))
    return decoder
