"""Static shapes and compilation of the sampling path: one captured graph for every call.

Opt-in, through BackboneConfig (static_prefix_len, batch_buckets) and VLMPolicy.compile_static():

    batch bucket   B rows -> the smallest bucket >= B, by repeating the last row (outputs sliced back to B);
    prefix length  every prefix left-padded to static_prefix_len columns (padding is masked, positions of the
                   real tokens are unchanged), so the LM always sees [B*, L*] then [B*, Q];
    static cache   a transformers StaticCache of L* + Q slots per bucket, reset and refilled by each prefix
                   pass and rewound after each query pass (its tensors keep their addresses, as CUDA graphs
                   need);
    compile        torch.compile (dynamic=False) of the LM's decoder stack (the prefix and query passes) and
                   of the decoder's ChunkNet (its one step function, shared by every decoder: the Euler loop,
                   the CTMC sampler and the one-step generators all call it), "reduce-overhead" (CUDA graphs)
                   on a GPU and "default" on the CPU unless a mode is given.

The vision tower stays eager (its grids come from Python lists). Compiled and eager sampling agree to float
tolerance (tests/test_compiled_sampling.py).
"""

from __future__ import annotations

import shutil

import torch
from torch import nn

from driftkit.backbones.inputs import PrefixInputs

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def bucket_rows(rows: int, buckets: tuple[int, ...]) -> int:
    """B -> the smallest bucket >= B (B itself when there are no buckets)."""
    if not buckets:
        return rows
    fit = [b for b in buckets if b >= rows]
    if not fit:
        raise ValueError(f"got a batch of {rows} rows, larger than every batch bucket {list(buckets)}; raise the "
                         "largest bucket or split the batch")
    return fit[0]


def pad_rows(images: list, prompts: list[str], rows: int) -> tuple[list, list[str]]:
    """Repeat the last row until there are `rows` (its outputs are discarded)."""
    extra = rows - len(prompts)
    return list(images) + [images[-1]] * extra, list(prompts) + [prompts[-1]] * extra


def pad_prefix(inputs: PrefixInputs, length: int, pad_id: int, position_offset: int | None) -> PrefixInputs:
    """Left-pad every row's prefix to `length` columns (position_offset: None for 3-D positions, which keep
    their values, else the 1-D positions' first value)."""
    if inputs.prefix_len > length:
        raise ValueError(f"a prefix of {inputs.prefix_len} tokens is longer than static_prefix_len={length}; raise "
                         "static_prefix_len (or shorten the prompts / use fewer image tokens)")
    if inputs.prefix_len == length:
        return inputs
    l = inputs.prefix_len
    columns = [row[:l].bool().nonzero().squeeze(-1) for row in inputs.attention_mask]
    return inputs.regather(columns, pad_id, position_offset, length=length)


class StaticCaches:
    """One StaticCache per batch bucket, reused (reset) by every prefix pass of that bucket."""

    def __init__(self, config, slots: int):
        self.config, self.slots, self.caches = config, slots, {}

    def fresh(self, rows: int):
        from transformers import StaticCache

        if rows not in self.caches:
            self.caches[rows] = StaticCache(config=self.config, max_cache_len=self.slots)
        cache = self.caches[rows]
        cache.reset()
        return cache


def compile_unavailable() -> str | None:
    """Why torch.compile cannot run here (None = it can): the CPU backend needs a C++ compiler."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if not torch.cuda.is_available() and shutil.which("g++") is None and shutil.which("c++") is None:
        return "torch.compile's CPU backend needs a C++ compiler (g++), and none is on PATH"
    return None


def default_mode(device: torch.device) -> str:
    return "reduce-overhead" if device.type == "cuda" else "default"


def compile_module(module: nn.Module, mode: str) -> None:
    """Compile module's forward in place (nn.Module.compile: parameter names and state_dict keys unchanged)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"got compile mode={mode!r}, must be one of {COMPILE_MODES}")
    reason = compile_unavailable()
    if reason is not None:
        raise RuntimeError(f"cannot compile: {reason}")
    module.compile(mode=mode, dynamic=False)


def language_model(model: nn.Module) -> nn.Module:
    """The decoder stack of a transformers VLM (what the prefix and query passes spend their time in)."""
    inner = getattr(model, "model", model)
    for name in ("language_model", "text_model"):
        if isinstance(getattr(inner, name, None), nn.Module):
            return getattr(inner, name)
    raise ValueError(f"cannot find the language model of {type(model).__name__} (no model.language_model or "
                     "model.text_model)")


def keep_decoder_layers(model: nn.Module, n: int) -> None:
    """Drop the language model's decoder layers past the first n, in place, config included (num_hidden_layers and
    the per-layer layer_types), so caches, saved configs and rebuilt models agree; a model already n deep is
    left as it is."""
    layers = language_model(model).layers
    text = model.config.get_text_config()
    if not 0 < n <= len(layers):
        raise ValueError(f"got num_layers={n} for a language model of {len(layers)} decoder layers; it must be in "
                         f"[1, {len(layers)}]")
    deepstack = len(getattr(getattr(model.config, "vision_config", None), "deepstack_visual_indexes", None) or ())
    if n < deepstack:
        raise ValueError(f"got num_layers={n}, but the model injects visual features into its first {deepstack} "
                         "decoder layers (deepstack); keep at least those")
    del layers[n:]
    text.num_hidden_layers = n
    if getattr(text, "layer_types", None):
        text.layer_types = list(text.layer_types[:n])


def compile_nets(decoder: nn.Module, mode: str) -> int:
    """Compile every ChunkNet of a decoder in place (its one step function: flow's and drift's net, a residual
    decoder's refiner and base) -> how many."""
    nets = decoder.nets()
    for net in nets:
        compile_module(net, mode)
    return len(nets)


def warm_up(policy, rows: tuple[int, ...] = ()) -> None:
    """One predict per batch size (default: the backbone's batch buckets, else 1) on blank observations of
    the policy config's shapes, so compilation and graph capture happen at load, not on the first request."""
    from driftkit.policy.keys import STATE_KEY, TASK_KEY

    cfg = policy.config
    if not cfg.image_shape:
        raise ValueError("warm_up needs config.image_shape (filled in from the training data)")
    dev = policy.device
    for b in rows or policy.backbone.config.batch_buckets or (1,):
        obs = {key: torch.zeros(b, *cfg.image_shape, device=dev) for key in cfg.cameras}
        obs[TASK_KEY] = ["warm-up"] * b
        if cfg.state_dim:
            obs[STATE_KEY] = torch.zeros(b, cfg.state_dim, device=dev)
        with torch.no_grad():
            policy.predict(obs)
