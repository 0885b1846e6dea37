"""The KV cache's names across transformers releases: the keyword a model's forward takes it by, and the key a
model output returns it under (`cache` in transformers 5.x, `past_key_values` before; the old name is deprecated
and goes in 5.40)."""

from __future__ import annotations

import inspect

from torch import nn

_CACHE_ARGUMENT: dict[type, str] = {}  # model class -> name of its forward's KV-cache argument


def cache_kwargs(model: nn.Module, cache) -> dict:
    """The KV cache as the keyword the model's forward takes: `cache` where it exists (transformers 5.x
    deprecates `past_key_values`, to be removed in 5.40), else `past_key_values`. Looked up once per class."""
    cls = type(model)
    if cls not in _CACHE_ARGUMENT:
        params = inspect.signature(cls.forward).parameters
        _CACHE_ARGUMENT[cls] = "cache" if "cache" in params else "past_key_values"
    return {_CACHE_ARGUMENT[cls]: cache}


def returned_cache(out) -> object | None:
    """The KV cache of a model output, under either name (`cache`, or the older `past_key_values`)."""
    keys = out.keys()  # the stored names: `in` / get() translate the old name and warn
    return next((out[k] for k in ("cache", "past_key_values") if k in keys), None)
