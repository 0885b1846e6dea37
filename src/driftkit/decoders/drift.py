"""Drift (Drift-VLA): a one-step generator trained with the drifting loss.

The generator is one pass of a network v(cond, x, t) on the source x_0 ~ N(0, I), in one of two forms
(`one_step`):
    skip (default):                        x = x_0 + v(cond, x_0, t=0), one Euler step from the source
    direct (the Drift-VLA reference):      x = v(cond, x_0, t=1), the network's output itself
Skip starts with the source's spread, so a small net does not collapse to the mean (the notes' pitfall),
and a flow checkpoint's network can be fine-tuned into it; direct had the lower error on the demo tasks
but collapsed with a small net (docs/decoders.md). Training draws G samples per observation from one
shared condition and matches them to the demonstration with the drifting loss.

Real-time chunking (no published method for a one-step generator; the Drift-VLA reference refuses RTC):
`inpaint_one_step` draws K' = max(K, candidates) samples in one batched pass and keeps the K closest to the
prefix under RTC's soft mask (driftkit.selection.rank_by_prefix), closest first; with noise_steps > 0 it then
takes that many Adam steps on the kept samples' input noise to lower the same distance. Measured in
benchmarks/results/rtc_offline.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from driftkit.decoders.base import Decoder, DecoderConfig, DecoderLoss
from driftkit.decoders.registry import register_decoder
from driftkit.errors import check_choice, check_positive
from driftkit.losses import GROUPINGS, drifting_loss
from driftkit.losses.drifting import TEMPERATURES
from driftkit.nets import Prefix
from driftkit.ops import randn
from driftkit.rtc import InpaintTarget
from driftkit.selection.prefix import prefix_distance, rank_by_prefix

ONE_STEP = ("skip", "direct")


@dataclass
class DriftOptions:
    """Options of the drifting objective, shared by `drift` and `residual_drift`."""

    train_samples: int = 8
    """G, generated samples per observation in each training step (drawn from one shared condition)."""
    temperatures: tuple[float, ...] = TEMPERATURES
    """Kernel temperatures R of the drift field."""
    grouping: str = "action_dim"
    """Matching problems: action_dim (one per dim over its trajectory), timestep, or chunk."""
    scale_weighting: bool = True
    """Weight each group's loss by its detached scale, so a nearly deterministic group's tiny scale does not
    blow up its gradient. A deviation from the reference code (False reproduces it); measured in
    docs/decoders.md: on the built-in two-mode task it is what lets action_dim grouping learn both modes."""
    fp32_target: bool = True
    """Compute the drift target in float32 with autocast off."""
    temperature: float = 1.0
    """Default scale of the input noise at sampling (override per call with `temperature=`): 1 samples the
    learned distribution, 0 gives the generator's output at the noise mean (deterministic)."""
    one_step: str = "skip"
    """How the network's output becomes the sample. skip (default): x = x_0 + v(x_0, t=0), one Euler step
    from the source, which passes through unchanged; direct: x = v(x_0, t=1), the network's output is the
    sample (the Drift-VLA reference). Measured in docs/decoders.md: direct had the lower error on the demo
    tasks but collapsed to the mean in 2 of 3 seeds with a small net, where skip never did."""

    def check_drift(self):
        check_positive("train_samples", self.train_samples)
        check_positive("temperature", self.temperature, allow_zero=True)
        if self.train_samples < 2:
            raise ValueError(f"got train_samples={self.train_samples}, need >= 2 (siblings repel each other)")
        self.temperatures = tuple(float(r) for r in self.temperatures)
        if not self.temperatures or any(r <= 0 for r in self.temperatures):
            raise ValueError(f"got temperatures={self.temperatures}, need one or more positive values")
        check_choice("grouping", self.grouping, GROUPINGS)
        check_choice("one_step", self.one_step, ONE_STEP)

    def one_step_sample(self, v: Callable[[Tensor, Tensor], Tensor], x_0: Tensor) -> Tensor:
        """v(x [N, T, D], t [N]) -> [N, T, D] the network; x_0 [N, T, D] the source -> the one-step sample."""
        direct = self.one_step == "direct"
        t = torch.full((x_0.shape[0],), float(direct), device=x_0.device, dtype=x_0.dtype)
        return v(x_0, t) if direct else x_0 + v(x_0, t)

    def drift_loss(self, gen: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """gen [B, G, T, D], target [B, T, D], mask [B, T, D] -> scalar."""
        return drifting_loss(
            gen, target, mask, self.grouping, self.temperatures, self.scale_weighting, self.fp32_target
        )


def inpaint_one_step(generate: Callable[[Tensor], Tensor], eps: Tensor, k: int, inpaint: InpaintTarget) -> Tensor:
    """generate(eps [B, n, T, D] standard-normal input noise) -> [B, n, T, D] normalised samples (one batched
    pass; the temperature is generate's business); eps [B, K', T, D] the candidates' noise, K' >= k ->
    [B, k, T, D] the k samples closest to inpaint.prefix (closest first), then refined by noise_steps Adam
    steps on their noise when the request asks for them."""
    x = generate(eps)
    x, index = rank_by_prefix(x, inpaint.prefix, inpaint.weights, keep=k)
    steps = inpaint.request.noise_steps
    if steps == 0:
        return x
    if torch.is_inference_mode_enabled():
        raise RuntimeError("noise_steps need autograd, which torch.inference_mode() forbids (Decoder.sample "
                           "leaves inference mode for them by itself)")
    rows = torch.arange(eps.shape[0], device=eps.device)[:, None]
    with torch.enable_grad():
        z = eps[rows, index].detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=inpaint.request.noise_lr)
        for _ in range(steps):
            # autograd.grad, not backward(): the network's parameters must not collect gradients here.
            (z.grad,) = torch.autograd.grad(prefix_distance(generate(z), inpaint.prefix, inpaint.weights).sum(), z)
            opt.step()
    return generate(z.detach())


@dataclass
class DriftConfig(DriftOptions, DecoderConfig):
    def __post_init__(self):
        super().__post_init__()
        self.check_drift()


@register_decoder
class DriftDecoder(Decoder):
    name = "drift"
    summary = "one-step generator trained with the drifting loss (Drift-VLA), action-dim grouping; 1 NFE"
    config_class = DriftConfig
    supports_inpaint = True  # RTC: prefix-distance selection over K' one-step samples (inpaint_one_step)

    def __init__(self, config: DriftConfig):
        super().__init__(config)
        self.net = self._net(in_dim=config.dim, out_dim=config.dim, use_time=True)

    def generate(self, cond: Tensor | Prefix, x_0: Tensor, cond_mask: Tensor | None = None, samples: int = 1) -> Tensor:
        """cond [B, C] or [B, L, C] (or the net's Prefix of it), x_0 [B * S, T, D] noise for S samples per row of
        cond, cond_mask [B, L] or None -> [B * S, T, D] one-step samples (config.one_step: x_0 + v(x_0, 0) or
        v(x_0, 1))."""
        return self.config.one_step_sample(lambda x, t: self.net(cond, x, t, cond_mask=cond_mask, samples=samples), x_0)

    def _draw(self, cond: Tensor, k: int, generator=None, temperature: float = 1.0, cond_mask=None) -> Tensor:
        """cond [B, C] (cond_mask [B, L] with a 3-D cond) -> [B, K, T, D] one-step samples from noise scaled by
        temperature."""
        # The K samples share cond unrepeated (the net broadcasts its projection of it).
        x_0 = temperature * randn((cond.shape[0] * k, *self.config.target_shape), cond, generator)
        x = self.generate(cond, x_0, cond_mask, samples=k)
        return x.view(cond.shape[0], k, *self.config.target_shape)

    def _loss(self, cond: Tensor, x_1: Tensor, mask: Tensor, cond_mask: Tensor | None = None) -> DecoderLoss:
        loss = self.config.drift_loss(self._draw(cond, self.config.train_samples, cond_mask=cond_mask), x_1, mask)
        return DecoderLoss(loss, {"loss": loss.item()})

    def _sample(self, cond: Tensor, k: int, steps, generator, temperature: float, cond_mask=None,
                inpaint: InpaintTarget | None = None) -> Tensor:
        if inpaint is None:
            return self._draw(cond, k, generator, temperature, cond_mask)
        b, k_all = cond.shape[0], max(k, inpaint.request.candidates)
        # The same draw as _draw's for k_all samples, so candidates = 1 with K = 1 reproduces sample().
        eps = randn((b * k_all, *self.config.target_shape), cond, generator).view(b, k_all, *self.config.target_shape)

        prefix = self.net.prefix(cond, cond_mask)  # projected once for every candidate and noise step

        def generate(e: Tensor) -> Tensor:
            n = e.shape[1]
            x = self.generate(prefix, temperature * e.flatten(0, 1), samples=n)
            return x.view(b, n, *self.config.target_shape)

        return inpaint_one_step(generate, eps, k, inpaint)

    def nfe(self, steps: int | None = None) -> int:
        return 1
