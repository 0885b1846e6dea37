"""Decoder: the two-method contract every continuous decoder keeps.

    out = dec.loss(cond, target, mask=None, cond_mask=None)    -> DecoderLoss(.loss, .metrics)
    y   = dec.sample(cond, num_samples=K, steps=None, generator=None, temperature=None, cond_mask=None,
                     inpaint=None)                             -> [B, K, T, D]
    n   = dec.nfe(steps=None)                                  network evaluations per sample() call

cond is [B, C] (or [B, L, C] prefix states for nets that attend to them); target is [B, T, D] in the user's
units; mask [B, T, D] is True where the target is real (False = padding). The base class validates inputs,
normalises targets once (driftkit.normalize) and repeats the condition for K samples; subclasses implement
`_loss` and `_sample` in the normalised space. Flow time follows driftkit.flow: t = 0 noise, t = 1 data.

Condition padding: cond_mask [B, L] bool is True at the real rows of a [B, L, C] cond (a VLM prefix is left
padded). It is the only record of padding: nothing is inferred from the values of cond, so a padded row may
hold anything finite and a real row may be zero. It travels with cond to the network (repeated with cond for
K samples) and is refused, naming the shapes, with a 2-D cond, with the wrong shape, or with a row that has
no real position. None = every row is real.

Temperature: a decoder has one exactly when its config has a `temperature` field (flow, drift, tokens,
lm_tokens, residual_flow, residual_drift); that field is the default, and `sample(..., temperature=x)`
overrides it for one call without touching the config. x must be >= 0. A decoder without one (regression,
discrete_flow) accepts only temperature=None and raises on any value, 0 included: it has no knob to set,
and silently ignoring a value would hide a caller's mistake.

Real-time chunking: inpaint (driftkit.rtc.Inpaint, prefix [B, T, D] in action units) asks the K samples of
each row to follow the previous chunk's prefix where its soft mask W is high. The base class checks it,
normalises the prefix once with this decoder's normaliser and hands `_sample` an InpaintTarget (normalised
prefix [B, T, D] + W [T]; the subclass repeats it over K like cond). Only decoders with
`supports_inpaint = True` receive one (flow, residual_flow: guided Euler; drift, residual_drift: prefix-
distance selection); any other raises a ValueError naming itself. Guidance needs autograd, so under
torch.inference_mode() the inpainted call runs outside inference mode on clones of its inputs.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch
from torch import Tensor, nn

from driftkit.errors import check_choice, check_finite, check_positive, check_shape
from driftkit.nets import NET_REGISTRY, ChunkNet, NetSpec, make_net
from driftkit.normalize import KINDS, NormStats, Normalizer
from driftkit.rtc import Inpaint, InpaintTarget


@dataclass
class DecoderConfig:
    """Options every decoder shares. Subclasses add their own fields with defaults."""

    cond_dim: int
    """C, width of the condition features handed to the decoder."""
    target_shape: tuple[int, int]
    """(T, D): (1, 2) for an interval, (1, 4) for a box, (horizon, action_dim) for an action chunk."""
    normalization: str = "mean_std"
    """How targets are normalised before the decoder sees them: none | mean_std | quantile."""
    net: str = "mlp"
    """Registered network architecture (driftkit.nets)."""
    hidden_dim: int = 256
    """Hidden width of the network."""
    depth: int = 3
    """Number of hidden blocks of the network."""

    def __post_init__(self):
        check_positive("cond_dim", self.cond_dim)
        shape = tuple(self.target_shape) if isinstance(self.target_shape, (tuple, list)) else None
        if shape is None or len(shape) != 2 or not all(isinstance(s, int) and s > 0 for s in shape):
            raise ValueError(f"got target_shape={self.target_shape!r}, must be two positive ints (T, D)")
        self.target_shape = shape
        check_choice("normalization", self.normalization, KINDS)
        check_choice("net", self.net, NET_REGISTRY)
        check_positive("hidden_dim", self.hidden_dim)
        check_positive("depth", self.depth)

    @property
    def horizon(self) -> int:
        return self.target_shape[0]

    @property
    def dim(self) -> int:
        return self.target_shape[1]

    def net_spec(self, in_dim: int, out_dim: int, use_time: bool) -> NetSpec:
        return NetSpec(self.cond_dim, self.horizon, in_dim, out_dim, use_time, self.hidden_dim, self.depth)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_cond_mask(cond_mask: Tensor | None, cond: Tensor) -> Tensor | None:
    """cond_mask [B, L] bool (True = real row of cond [B, L, C]) -> itself on cond's device; None stays None.
    Raises, naming the shapes, for a 2-D cond or a wrong shape, and naming the rows for a row of the batch
    with no real position (attention over nothing is NaN)."""
    if cond_mask is None:
        return None
    if not isinstance(cond_mask, Tensor):
        raise TypeError(f"cond_mask must be a torch.Tensor (bool, True = real), got {type(cond_mask).__name__}")
    if cond.dim() != 3:
        raise ValueError(
            f"cond_mask has shape {list(cond_mask.shape)} but cond has shape {list(cond.shape)}: cond_mask marks "
            "the rows of [B, L, C] prefix states and has no meaning for a pooled cond [B, C] (pass None)"
        )
    if tuple(cond_mask.shape) != tuple(cond.shape[:2]):
        raise ValueError(
            f"cond_mask has shape {list(cond_mask.shape)}, expected [B, L] = {list(cond.shape[:2])} "
            f"(cond has shape {list(cond.shape)})"
        )
    if cond_mask.dtype != torch.bool:
        raise TypeError(f"cond_mask must be a bool tensor (True = real), got dtype {cond_mask.dtype}")
    empty = ~cond_mask.any(dim=-1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(
            f"cond_mask row(s) {rows} of shape {list(cond_mask.shape)} are all False: every row of the batch "
            "needs at least one real condition position"
        )
    return cond_mask.to(cond.device)


def _ordinary(x: Tensor | None) -> Tensor | None:
    """x, or a clone that autograd can save when x is an inference tensor (None stays None)."""
    return x.clone() if x is not None and x.is_inference() else x


_NAME_BYTES = 32


def _encode_name(name: str) -> Tensor:
    """A registry name as a fixed-size uint8 tensor [32] (zero padded)."""
    raw = name.encode()[:_NAME_BYTES]
    return torch.tensor(list(raw) + [0] * (_NAME_BYTES - len(raw)), dtype=torch.uint8)


def _decode_name(code: Tensor) -> str:
    return bytes(int(b) for b in code.tolist() if b).decode(errors="replace")


@dataclass
class DecoderLoss:
    """A training loss and the scalars worth logging next to it."""

    loss: Tensor
    """Scalar to backpropagate."""
    metrics: dict[str, float] = field(default_factory=dict)


class Decoder(nn.Module):
    """Base class. Subclasses set `name`, `config_class`, and implement `_loss`, `_sample`, `nfe`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    config_class: ClassVar[type[DecoderConfig]] = DecoderConfig
    default_normalization: ClassVar[str] = "mean_std"
    supports_inpaint: ClassVar[bool] = False
    """Whether sample() takes an Inpaint request (real-time chunking); _sample then gets `inpaint=`."""
    zero_steps_is_base: ClassVar[bool] = False
    """True for decoders around a base prediction (the residual ones): steps=0 skips the refiner and returns
    the base itself, so one checkpoint also measures its own base."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.normalizer = Normalizer(config.dim, config.normalization)
        # The registry name travels inside every state dict, so weights of another decoder whose tensors
        # happen to have the same names and shapes (flow and drift, say) are refused on load.
        self.register_buffer("kind", _encode_name(self.name))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "kind")
        if saved is not None and _decode_name(saved) != self.name:
            raise ValueError(f"these weights hold a {_decode_name(saved)!r} decoder, not {self.name!r}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- the contract ----------------------------------------------------------------------------
    def loss(
        self, cond: Tensor, target: Tensor, mask: Tensor | None = None, cond_mask: Tensor | None = None
    ) -> DecoderLoss:
        """cond [B, C] or [B, L, C]; target [B, T, D]; mask [B, T, D] bool (True = real);
        cond_mask [B, L] bool (True = real row of cond) -> DecoderLoss."""
        x_1, mask, cond_mask = self._prepare(cond, target, mask, cond_mask)
        return self._checked(self._loss(cond, x_1, mask, cond_mask=cond_mask))

    def _prepare(
        self, cond: Tensor, target: Tensor, mask: Tensor | None, cond_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Validate a training batch -> (x_1 [B, T, D] normalised, 0 where padded; mask [B, T, D] bool;
        cond_mask [B, L] bool or None)."""
        cond_mask = self._check_cond(cond, cond_mask)
        check_shape("target", target, (cond.shape[0], *self.config.target_shape), " (batch of cond, *target_shape)")
        check_finite("target", target)
        mask = self._check_mask(mask, target)
        return self.normalizer.normalize(target).masked_fill(~mask, 0.0), mask, cond_mask

    def _checked(self, out: DecoderLoss) -> DecoderLoss:
        if not torch.isfinite(out.loss):
            raise FloatingPointError(f"{self.name} loss is {out.loss.item()} (non-finite); inputs were finite")
        return out

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        num_samples: int = 1,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        temperature: float | None = None,
        cond_mask: Tensor | None = None,
        inpaint: Inpaint | None = None,
    ) -> Tensor:
        """cond [B, C] or [B, L, C] -> [B, K, T, D] samples in the target's units; K samples share one batched
        pass. temperature: None = the config's own; see the module docstring for decoders without one.
        cond_mask [B, L] bool: True at real rows of a 3-D cond (None = all real). inpaint: real-time chunking
        toward a prefix [B, T, D] in the target's units (driftkit.rtc; decoders with supports_inpaint only)."""
        cond_mask = self._check_cond(cond, cond_mask)
        check_positive("num_samples", num_samples)
        if steps is not None:
            check_positive("steps", steps, allow_zero=self.zero_steps_is_base)
        temp = self.resolve_temperature(temperature)
        if inpaint is None:
            x = self._sample(cond, num_samples, steps, generator, temp, cond_mask=cond_mask)  # normalised
        else:
            x = self._inpainted(inpaint, cond, cond_mask, lambda c, m, target: self._sample(
                c, num_samples, steps, generator, temp, cond_mask=m, inpaint=target))
        return self.normalizer.unnormalize(x)

    def _inpainted(self, inpaint: Inpaint, cond: Tensor, cond_mask: Tensor | None, run, *more: Tensor):
        """run(cond, cond_mask, InpaintTarget, *more) with the prefix checked and normalised once. Under
        torch.inference_mode() it runs outside inference mode, on clones of the inference tensors it is given
        (autograd cannot save inference tensors), so guided integration can take its vector-Jacobian products."""
        self.check_inpaint(inpaint, cond)
        region = torch.inference_mode(False) if torch.is_inference_mode_enabled() else nullcontext()
        with region:
            cond, cond_mask, *more = (_ordinary(x) for x in (cond, cond_mask, *more))
            prefix = self.normalizer.normalize(inpaint.prefix.to(cond.device, torch.float32)).to(cond.dtype)
            target = InpaintTarget(_ordinary(prefix), inpaint.weights().to(prefix), inpaint)
            return run(cond, cond_mask, target, *more)

    def check_inpaint(self, inpaint: Inpaint, cond: Tensor) -> None:
        """Raise unless this decoder can inpaint and inpaint's prefix is [B, T, D] for cond's B."""
        if not self.supports_inpaint:
            from driftkit.decoders.registry import DECODERS

            able = sorted(name for name, cls in DECODERS.items() if cls.supports_inpaint)
            raise ValueError(f"decoder {self.name!r} cannot inpaint a prefix (real-time chunking); decoders that "
                             f"can: {able}")
        if not isinstance(inpaint, Inpaint):
            raise TypeError(f"inpaint must be a driftkit.rtc.Inpaint, got {type(inpaint).__name__}")
        check_shape("inpaint prefix", inpaint.prefix, (cond.shape[0], *self.config.target_shape),
                    " (batch of cond, *target_shape)")

    @property
    def has_temperature(self) -> bool:
        """Whether this decoder's sampler has a temperature (its config has a `temperature` field)."""
        return any(f.name == "temperature" for f in fields(self.config))

    def resolve_temperature(self, temperature: float | None) -> float | None:
        """A per-call temperature -> the value sampling uses: the config's when None; None for a decoder
        without one. Raises on a negative or non-finite value, or on any value for a decoder without one."""
        if not self.has_temperature:
            if temperature is not None:
                raise ValueError(
                    f"decoder {self.name!r} has no sampling temperature; got temperature={temperature!r} "
                    "(pass None)"
                )
            return None
        if temperature is None:
            return float(self.config.temperature)
        check_positive("temperature", temperature, allow_zero=True)
        # inf would turn the source noise into inf/NaN samples; NaN slips past the >= 0 comparison.
        if not math.isfinite(temperature):
            raise ValueError(f"got temperature={temperature!r}, must be finite")
        return float(temperature)

    def nfe(self, steps: int | None = None) -> int:
        """Network evaluations one sample() call costs (K samples are batched into each evaluation)."""
        raise NotImplementedError

    def nets(self) -> list[ChunkNet]:
        """The networks sample() evaluates (its step functions: what compiling a decoder compiles), a
        residual decoder's base's included."""
        return [m for m in self.modules() if isinstance(m, ChunkNet)]

    # ---- subclass hooks ----------------------------------------------------------------------------
    def _loss(self, cond: Tensor, x_1: Tensor, mask: Tensor, cond_mask: Tensor | None = None) -> DecoderLoss:
        """cond [B, C] or [B, L, C]; x_1 [B, T, D] normalised target (0 where padded); mask [B, T, D] bool;
        cond_mask [B, L] bool or None, already validated: hand it to every net call that sees cond (repeated
        like cond wherever cond is repeated)."""
        raise NotImplementedError

    def _sample(
        self,
        cond: Tensor,
        k: int,
        steps: int | None,
        generator: torch.Generator | None,
        temperature: float | None,
        cond_mask: Tensor | None = None,
    ) -> Tensor:
        """cond [B, C] or [B, L, C] -> [B, K, T, D] in normalised space. temperature is resolved
        (resolve_temperature): a float >= 0 for decoders with one, None for those without. cond_mask as in
        _loss. Decoders with supports_inpaint also take `inpaint: InpaintTarget | None` (normalised prefix
        [B, T, D], repeated over K like cond by the subclass)."""
        raise NotImplementedError

    def init_from_lm_head(self, lm_head_rows) -> None:
        """Hook for decoders that start from a VLM's LM head: lm_head_rows(n, layout) -> (weight [n, H], bias or
        None) of n bin ids of its vocabulary (Backbone.lm_head_rows). Most decoders have nothing to take from it."""

    # ---- normalisation -------------------------------------------------------------------------------
    def set_stats(self, stats: NormStats) -> None:
        """Use dataset statistics (e.g. from LeRobot's meta/stats.json) for target normalisation."""
        self.normalizer.set_stats(stats)

    def fit_normalizer(self, target: Tensor, mask: Tensor | None = None) -> NormStats:
        """Fit normalisation statistics on training targets [N, T, D]; returns them."""
        check_shape("target", target, (None, *self.config.target_shape))
        check_finite("target", target)
        stats = NormStats.from_data(target, self._check_mask(mask, target))
        self.set_stats(stats)
        return stats

    # ---- checks ------------------------------------------------------------------------------------------
    def _check_cond(self, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor | None:
        """Validate cond and its cond_mask -> cond_mask on cond's device (None stays None)."""
        if not isinstance(cond, Tensor):
            raise TypeError(f"cond must be a torch.Tensor, got {type(cond).__name__}")
        if cond.dim() not in (2, 3) or cond.shape[-1] != self.config.cond_dim or cond.shape[0] == 0:
            raise ValueError(
                f"cond has shape {list(cond.shape)}, expected [B, {self.config.cond_dim}] "
                f"(or [B, L, {self.config.cond_dim}] prefix states) with B >= 1"
            )
        check_finite("cond", cond)
        return check_cond_mask(cond_mask, cond)

    @staticmethod
    def _check_mask(mask: Tensor | None, target: Tensor) -> Tensor:
        if mask is None:
            return torch.ones_like(target, dtype=torch.bool)
        check_shape("mask", mask, tuple(target.shape), " (same as target)")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = real), got dtype {mask.dtype}")
        return mask

    def _net(self, in_dim: int, out_dim: int, use_time: bool) -> nn.Module:
        return make_net(self.config.net, self.config.net_spec(in_dim, out_dim, use_time))
