"""Residual refinement around a base predictor: DRIFT's residual flow, and residual drift (new).

A base decoder (regression or tokens, or any registered decoder) predicts a coarse chunk b from cond.
A refiner generates the target around it, conditioned on cond and b:

    source  x_0 = b + sigma * eps,  eps ~ N(0, I)
    coords  parameterization "residual": c(x) = (x - b) / sigma   (the refiner works on the scaled residual)
            parameterization "absolute": c(x) = x                  (the refiner works in target units)

Both parameterisations share the same probability path in target units; they differ in what the network
sees and predicts. "residual" keeps the refiner's inputs at unit scale whatever the base's precision;
"absolute" measured as good or better on the built-in tasks (benchmarks/results/variants-residual.md), so it
is the default. sigma (per dim) is fixed by `source_std`, or by default ("auto") tracks
the RMS of the base's residual during training: a coarse or mean-collapsed base gets a wide source that can
reach far modes, a precise base a narrow one that refines locally (see docs/decoders.md).

Real-time chunking (sample / sample_with_base with inpaint=): the base predicts unguided; the refiner does
the inpainting around it. residual_flow guides its Euler integration in the refiner's own coordinates (the
prefix Y is mapped to c(Y) around the same base b, and W * (c(Y) - c1_hat) drives the guidance);
residual_drift selects among K' one-step refinements by their distance to Y in normalised target units
(driftkit.decoders.drift.inpaint_one_step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from driftkit.decoders.base import Decoder, DecoderConfig, DecoderLoss
from driftkit.decoders.drift import DriftOptions, inpaint_one_step
from driftkit.decoders.flow import FlowOptions
from driftkit.decoders.registry import make_decoder, register_decoder
from driftkit.errors import check_choice, check_finite, check_positive, check_shape
from driftkit.flow import PrefixGuide
from driftkit.nets import Prefix
from driftkit.normalize import NormStats
from driftkit.ops import masked_mean, randn, repeat_samples
from driftkit.rtc import Inpaint, InpaintTarget


@dataclass
class ResidualOptions:
    """Options of the base predictor and of the residual source."""

    base: str = "regression"
    """Registry name of the base predictor (regression, tokens, lm_tokens; any decoder works), or "external":
    the caller supplies the base prediction (loss_with_base / sample_with_base), e.g. a VLM's decoded
    autoregressive FAST tokens."""
    base_options: dict = field(default_factory=dict)
    """Options for the base decoder (e.g. {"num_bins": 32}); net/hidden_dim/depth default to this decoder's."""
    source_std: float | None = None
    """Source width sigma in normalised units; None = auto (running RMS of the base's residual per dim)."""
    min_source_std: float = 0.02
    """Floor of the automatic sigma."""
    std_momentum: float = 0.99
    """EMA momentum of the automatic sigma."""
    parameterization: str = "absolute"
    """absolute (refiner sees x) or residual (refiner sees (x - b) / sigma); see docs/decoders.md."""
    schedule: str = "joint"
    """joint: base and refiner losses summed every step. staged: base alone for base_steps, then refiner alone."""
    base_steps: int = 1000
    """Training steps of the base stage when schedule = staged."""

    def check_residual(self):
        if self.base in ("residual_flow", "residual_drift"):
            raise ValueError(f"got base={self.base!r}: a residual decoder cannot be its own base")
        if self.source_std is not None:
            check_positive("source_std", self.source_std)
        check_positive("min_source_std", self.min_source_std)
        if not 0 <= self.std_momentum < 1:
            raise ValueError(f"got std_momentum={self.std_momentum}, must be in [0, 1)")
        check_choice("parameterization", self.parameterization, ("residual", "absolute"))
        check_choice("schedule", self.schedule, ("joint", "staged"))
        check_positive("base_steps", self.base_steps, allow_zero=True)


class ResidualDecoder(Decoder):
    """Shared plumbing: the base decoder, sigma, the coordinates, the training schedule."""

    supports_inpaint = True  # both refiners inpaint: residual_flow by guidance, residual_drift by selection
    zero_steps_is_base = True  # steps=0: the base prediction, unrefined (K identical copies)

    def __init__(self, config):
        super().__init__(config)
        opts = {"net": config.net, "hidden_dim": config.hidden_dim, "depth": config.depth, **config.base_options}
        self.base = None
        if config.base != "external":
            self.base = make_decoder(config.base, config.cond_dim, config.target_shape, **opts)
        self.register_buffer("sigma", torch.full((config.dim,), float(config.source_std or 1.0)))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.refiner = self._net(in_dim=2 * config.dim, out_dim=config.dim, use_time=True)

    # ---- base predictor ------------------------------------------------------------------------------
    def set_stats(self, stats: NormStats) -> None:
        super().set_stats(stats)
        if self.base is None:
            return
        q01, q99 = self.normalizer.normalize(stats.q01), self.normalizer.normalize(stats.q99)
        zeros, ones = torch.zeros_like(q01), torch.ones_like(q01)
        # The base sees targets already normalised by this decoder.
        self.base.set_stats(NormStats(mean=zeros, std=ones, q01=q01, q99=q99))

    def fit_normalizer(self, target: Tensor, mask: Tensor | None = None) -> NormStats:
        stats = super().fit_normalizer(target, mask)
        if self.base is not None:
            self.base.fit_normalizer(self.normalizer.normalize(target), mask)
        return stats

    def init_from_lm_head(self, lm_head_rows) -> None:
        if self.base is not None:
            self.base.init_from_lm_head(lm_head_rows)

    def base_prediction(self, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor:
        """cond [B, C] or [B, L, C] (cond_mask [B, L] or None) -> [B, T, D] the base's (detached) prediction in
        normalised units, sampled at the base's own temperature: a per-call temperature is the refiner's, not
        the base's."""
        return self._own_base().sample(cond, 1, cond_mask=cond_mask)[:, 0]

    def _own_base(self) -> Decoder:
        if self.base is None:
            raise ValueError(
                f"{self.name} with base='external' refines a base prediction the caller supplies: use "
                "loss_with_base(cond, target, base) and sample_with_base(cond, base, num_samples)"
            )
        return self.base

    # ---- an external base (e.g. a VLM's decoded tokens) -------------------------------------------------
    def _check_base(self, cond: Tensor, base: Tensor) -> Tensor:
        check_shape("base", base, (cond.shape[0], *self.config.target_shape), " (batch of cond, *target_shape)")
        check_finite("base", base)
        return self.normalizer.normalize(base.detach())

    def loss_with_base(
        self, cond: Tensor, target: Tensor, base: Tensor, mask: Tensor | None = None, cond_mask: Tensor | None = None
    ) -> DecoderLoss:
        """The refiner's loss around base [B, T, D] (target units, no gradient flows into it); cond_mask [B, L]
        marks the real rows of a 3-D cond, as in loss()."""
        x_1, mask, cond_mask = self._prepare(cond, target, mask, cond_mask)
        b = self._check_base(cond, base)
        out = self._refine_step(cond, b, x_1, mask, x_1.new_zeros(()), {}, refine=True, cond_mask=cond_mask)
        return self._checked(out)

    @torch.no_grad()
    def sample_with_base(
        self,
        cond: Tensor,
        base: Tensor,
        num_samples: int = 1,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        temperature: float | None = None,
        cond_mask: Tensor | None = None,
        inpaint: Inpaint | None = None,
    ) -> Tensor:
        """Refine base [B, T, D] (target units) into [B, K, T, D] samples; temperature None = the config's;
        cond_mask [B, L] marks the real rows of a 3-D cond, as in sample(); inpaint: real-time chunking toward
        a prefix in target units, as in sample()."""
        cond_mask = self._check_cond(cond, cond_mask)
        check_positive("num_samples", num_samples)
        if steps is not None:
            check_positive("steps", steps, allow_zero=True)
        temp = self.resolve_temperature(temperature)
        b = self._check_base(cond, base)
        if inpaint is None:
            x = self._sample_around(cond, b, num_samples, steps, generator, temp, cond_mask)
        else:
            x = self._inpainted(inpaint, cond, cond_mask, lambda c, m, target, b_: self._sample_around(
                c, b_, num_samples, steps, generator, temp, m, inpaint=target), b)
        return self.normalizer.unnormalize(x)

    def base_nfe(self) -> int:
        return 0 if self.base is None else self.base.nfe()

    # ---- coordinates ----------------------------------------------------------------------------------
    def to_coords(self, x: Tensor, b: Tensor) -> Tensor:
        return (x - b) / self.sigma if self.config.parameterization == "residual" else x

    def from_coords(self, c: Tensor, b: Tensor) -> Tensor:
        return b + self.sigma * c if self.config.parameterization == "residual" else c

    def source(self, b: Tensor, generator=None, temperature: float = 1.0) -> Tensor:
        """x_0 = b + temperature * sigma * eps in target units, [N, T, D]."""
        return b + temperature * self.sigma * randn(b.shape, b, generator)

    def _update_sigma(self, b: Tensor, x_1: Tensor, mask: Tensor) -> None:
        if self.config.source_std is not None or not self.training:
            return
        m = mask.to(x_1.dtype)
        ms = ((x_1 - b).square() * m).sum(dim=(0, 1)) / m.sum(dim=(0, 1)).clamp_min(1.0)  # [D]
        rms = ms.sqrt().clamp_min(self.config.min_source_std)
        self.sigma.mul_(self.config.std_momentum).add_((1 - self.config.std_momentum) * rms)

    # ---- training -------------------------------------------------------------------------------------
    def stage(self) -> str:
        """Which parts train at the current step: joint, base or refiner."""
        if self.config.schedule == "joint":
            return "joint"
        return "base" if int(self.step) < self.config.base_steps else "refiner"

    def _loss(self, cond: Tensor, x_1: Tensor, mask: Tensor, cond_mask: Tensor | None = None) -> DecoderLoss:
        stage, metrics = self.stage(), {}
        loss = x_1.new_zeros(())
        if stage in ("joint", "base"):
            base_out = self._own_base().loss(cond, x_1, mask, cond_mask=cond_mask)
            loss = loss + base_out.loss
            metrics["base_loss"] = base_out.loss.item()
        b = self.base_prediction(cond, cond_mask)
        refine = stage in ("joint", "refiner")
        return self._refine_step(cond, b, x_1, mask, loss, metrics, refine=refine, cond_mask=cond_mask)

    def _refine_step(
        self, cond, b, x_1, mask, loss: Tensor, metrics: dict, refine: bool, cond_mask: Tensor | None = None
    ) -> DecoderLoss:
        """Add the refiner's loss around base b (normalised, detached) to loss; track sigma and the step."""
        self._update_sigma(b, x_1, mask)
        metrics["base_mae"] = masked_mean((b - x_1).abs(), mask).item()
        metrics["sigma"] = self.sigma.mean().item()
        if refine:
            refine_loss = self._refine_loss(cond, b, x_1, mask, cond_mask)
            loss = loss + refine_loss
            metrics["refine_loss"] = refine_loss.item()
        if self.training:
            self.step += 1
        metrics["loss"] = loss.item()
        return DecoderLoss(loss, metrics)

    def _sample(self, cond: Tensor, k: int, steps, generator, temperature: float, cond_mask=None,
                inpaint: InpaintTarget | None = None) -> Tensor:
        b = self.base_prediction(cond, cond_mask)
        return self._sample_around(cond, b, k, steps, generator, temperature, cond_mask, inpaint)

    def _sample_around(
        self, cond: Tensor, b: Tensor, k: int, steps, generator, temperature: float, cond_mask: Tensor | None = None,
        inpaint: InpaintTarget | None = None,
    ) -> Tensor:
        """b [B, T, D] normalised base -> [B, K, T, D] normalised refined samples (toward inpaint's prefix
        when given)."""
        if steps == 0:
            return b[:, None].expand(-1, k, *b.shape[1:]).clone()
        if inpaint is not None:
            return self._inpaint_around(cond, b, k, steps, generator, temperature, cond_mask, inpaint)
        # The base is an input of each sample (repeated); cond is shared unrepeated by the K samples.
        x = self._refine_sample(cond, repeat_samples(b, k), steps, generator, temperature, cond_mask, samples=k)
        return x.view(cond.shape[0], k, *self.config.target_shape)

    def _inpaint_around(
        self, cond: Tensor, b: Tensor, k: int, steps, generator, temperature: float, cond_mask: Tensor | None,
        inpaint: InpaintTarget,
    ) -> Tensor:
        """As _sample_around, inpainting toward inpaint.prefix (normalised, [B, T, D])."""
        raise NotImplementedError

    def _refine_loss(
        self, cond: Tensor, b: Tensor, x_1: Tensor, mask: Tensor, cond_mask: Tensor | None = None
    ) -> Tensor:
        raise NotImplementedError

    def _refine_sample(
        self, cond: Tensor, b: Tensor, steps, generator, temperature: float, cond_mask: Tensor | None = None,
        samples: int = 1,
    ) -> Tensor:
        """cond [B, C] or [B, L, C], b [B * S, T, D] normalised base repeated for S samples per row of cond,
        cond_mask [B, L] or None -> [B * S, T, D] one refined sample per row of b."""
        raise NotImplementedError

    def _refiner_fn(self, cond: Tensor | Prefix, b: Tensor, cond_mask: Tensor | None = None, samples: int = 1):
        """The refiner as a function of coordinates: (c [B * S, T, D], t [B * S]) -> [B * S, T, D], for b
        [B * S, T, D] and cond's B rows (projected here once for every call, unless already a Prefix)."""
        if not isinstance(cond, Prefix):
            cond, cond_mask = self.refiner.prefix(cond, cond_mask), None
        return lambda c, t: self.refiner(cond, torch.cat([c, b], dim=-1), t, cond_mask=cond_mask, samples=samples)


@dataclass
class ResidualFlowConfig(FlowOptions, ResidualOptions, DecoderConfig):
    def __post_init__(self):
        super().__post_init__()
        self.check_flow()
        self.check_residual()


@register_decoder
class ResidualFlowDecoder(ResidualDecoder):
    name = "residual_flow"
    summary = "DRIFT: base predictor + flow-matching refiner of the residual; NFE = base + steps"
    config_class = ResidualFlowConfig

    def _refine_loss(self, cond, b, x_1, mask, cond_mask=None):
        c_0, c_1 = self.to_coords(self.source(b), b), self.to_coords(x_1, b)
        return self.config.flow_loss(self._refiner_fn(cond, b, cond_mask), c_0, c_1, mask)

    def _refine_sample(self, cond, b, steps, generator, temperature: float, cond_mask=None,
                       guide: PrefixGuide | None = None, samples: int = 1):
        """guide: RTC guidance in the refiner's coordinates (its target already mapped by to_coords)."""
        c_0 = self.to_coords(self.source(b, generator, temperature), b)
        field = self._refiner_fn(cond, b, cond_mask, samples)
        return self.from_coords(self.config.integrate(field, c_0, steps, guide), b)

    def _inpaint_around(self, cond, b, k, steps, generator, temperature, cond_mask, inpaint):
        b_k = repeat_samples(b, k)
        # Guide in the refiner's coordinates: the prefix as the refiner would see it around the same base.
        guide = PrefixGuide(self.to_coords(inpaint.repeated(k), b_k), inpaint.weights, inpaint.beta)
        x = self._refine_sample(cond, b_k, steps, generator, temperature, cond_mask, guide, samples=k)
        return x.view(cond.shape[0], k, *self.config.target_shape)

    def nfe(self, steps: int | None = None) -> int:
        """Base evaluations (none for an external base) plus the refiner's steps."""
        return self.base_nfe() + (self.config.steps if steps is None else steps)


@dataclass
class ResidualDriftConfig(DriftOptions, ResidualOptions, DecoderConfig):
    def __post_init__(self):
        super().__post_init__()
        self.check_drift()
        self.check_residual()


@register_decoder
class ResidualDriftDecoder(ResidualDecoder):
    name = "residual_drift"
    summary = "new: base predictor + one-step drifting refiner of the residual; NFE = base + 1"
    config_class = ResidualDriftConfig

    def _generate(self, cond, b, generator=None, temperature: float = 1.0, cond_mask=None, samples: int = 1):
        """One step from the source in coordinates (config.one_step: c_0 + v(c_0, 0) or v(c_0, 1)); b [B * S, T, D]."""
        return self._generate_from(cond, b, randn(b.shape, b, generator), temperature, cond_mask, samples)

    def _generate_from(self, cond, b, eps: Tensor, temperature: float = 1.0, cond_mask=None, samples: int = 1):
        """_generate from given standard-normal noise eps [B * S, T, D] (source x_0 = b + temperature sigma eps)."""
        c_0 = self.to_coords(b + temperature * self.sigma * eps, b)
        return self.config.one_step_sample(self._refiner_fn(cond, b, cond_mask, samples), c_0)  # as drift's

    def _inpaint_around(self, cond, b, k, steps, generator, temperature, cond_mask, inpaint):
        n_rows, k_all, shape = cond.shape[0], max(k, inpaint.request.candidates), self.config.target_shape
        eps = randn((n_rows * k_all, *shape), b, generator).view(n_rows, k_all, *shape)  # as _generate draws it

        prefix = self.refiner.prefix(cond, cond_mask)  # projected once for every candidate and noise step

        def generate(e: Tensor) -> Tensor:  # [B, n, T, D] noise -> [B, n, T, D] normalised refinements
            n = e.shape[1]
            b_n = repeat_samples(b, n)
            c = self._generate_from(prefix, b_n, e.flatten(0, 1), temperature, samples=n)
            return self.from_coords(c, b_n).view(n_rows, n, *shape)

        return inpaint_one_step(generate, eps, k, inpaint)

    def _refine_loss(self, cond, b, x_1, mask, cond_mask=None):
        g = self.config.train_samples
        c = self._generate(cond, repeat_samples(b, g), cond_mask=cond_mask, samples=g)
        c = c.view(x_1.shape[0], g, *x_1.shape[1:])  # [B, G, T, D]
        return self.config.drift_loss(c, self.to_coords(x_1, b), mask)

    def _refine_sample(self, cond, b, steps, generator, temperature: float, cond_mask=None, samples: int = 1):
        return self.from_coords(self._generate(cond, b, generator, temperature, cond_mask, samples), b)

    def nfe(self, steps: int | None = None) -> int:
        return self.base_nfe() + (0 if steps == 0 else 1)
