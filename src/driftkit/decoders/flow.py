"""Flow: flow matching from Gaussian noise (the pi0 / SmolVLA action expert), Euler-integrated."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from driftkit.decoders.base import Decoder, DecoderConfig, DecoderLoss
from driftkit.decoders.registry import register_decoder
from driftkit.errors import check_choice, check_positive
from driftkit.flow import (
    PREDICTIONS, TIME_SAMPLERS, PrefixGuide, as_velocity, euler, flow_matching_loss, guided_euler, sample_time,
)
from driftkit.ops import randn
from driftkit.rtc import InpaintTarget


@dataclass
class FlowOptions:
    """Options of flow-matching training and sampling, shared by `flow` and `residual_flow`."""

    steps: int = 10
    """Default Euler steps per sample() call (override per call with `steps=`)."""
    time_sampler: str = "beta"
    """uniform, or beta: pi0/SmolVLA's Beta(1.5, 1) that favours the noisy end."""
    prediction: str = "velocity"
    """What the network outputs: velocity (pi0/SmolVLA) or data (an x_1 estimate, turned into a velocity)."""
    temperature: float = 1.0
    """Default scale of the source noise at sampling (override per call with `temperature=`): 1 samples the
    learned distribution, 0 integrates from the source mean (deterministic; suits targets with one right
    answer, such as boxes and moments)."""

    def check_flow(self):
        check_positive("steps", self.steps)
        check_positive("temperature", self.temperature, allow_zero=True)
        check_choice("time_sampler", self.time_sampler, TIME_SAMPLERS)
        check_choice("prediction", self.prediction, PREDICTIONS)

    def flow_loss(self, model, x_0: Tensor, x_1: Tensor, mask: Tensor) -> Tensor:
        """Flow-matching loss of model(x_t, t) on the path from x_0 to x_1 [N, T, D]."""
        t = sample_time(self.time_sampler, x_1.shape[0], x_1)
        return flow_matching_loss(model, x_0, x_1, t, mask, self.prediction)

    def integrate(self, model, x_0: Tensor, steps: int | None, guide: PrefixGuide | None = None) -> Tensor:
        """Euler-integrate model's field from x_0 [N, T, D] at t = 0 to t = 1; with a guide, RTC's guided
        Euler toward guide.target (driftkit.flow.guidance), in the same coordinates as x_0."""
        field = lambda x, t: as_velocity(model(x, t), x, t, self.prediction)  # noqa: E731
        if guide is None:
            return euler(field, x_0, steps or self.steps)
        return guided_euler(field, x_0, steps or self.steps, guide)


@dataclass
class FlowConfig(FlowOptions, DecoderConfig):
    def __post_init__(self):
        super().__post_init__()
        self.check_flow()


@register_decoder
class FlowDecoder(Decoder):
    name = "flow"
    summary = "flow matching from Gaussian noise, Euler integration (pi0/SmolVLA); NFE = steps (10)"
    supports_inpaint = True  # RTC: guided Euler (driftkit.flow.guidance), one backward pass per step
    config_class = FlowConfig

    def __init__(self, config: FlowConfig):
        super().__init__(config)
        self.net = self._net(in_dim=config.dim, out_dim=config.dim, use_time=True)

    def _loss(self, cond: Tensor, x_1: Tensor, mask: Tensor, cond_mask: Tensor | None = None) -> DecoderLoss:
        model = lambda x, t: self.net(cond, x, t, cond_mask=cond_mask)  # noqa: E731
        loss = self.config.flow_loss(model, randn(x_1.shape, x_1), x_1, mask)
        return DecoderLoss(loss, {"loss": loss.item()})

    def _sample(self, cond: Tensor, k: int, steps, generator, temperature: float, cond_mask=None,
                inpaint: InpaintTarget | None = None) -> Tensor:
        prefix = self.net.prefix(cond, cond_mask)  # projected once, shared by the K samples and every step
        # Noise is drawn even at temperature 0 so the generator's stream does not depend on the temperature.
        x_0 = temperature * randn((cond.shape[0] * k, *self.config.target_shape), cond, generator)
        guide = None if inpaint is None else PrefixGuide(inpaint.repeated(k), inpaint.weights, inpaint.beta)
        x_1 = self.config.integrate(lambda x, t: self.net(prefix, x, t, samples=k), x_0, steps, guide)
        return x_1.view(cond.shape[0], k, *self.config.target_shape)

    def nfe(self, steps: int | None = None) -> int:
        return steps or self.config.steps
