"""Discrete flow (DFM-VLA): iterative refinement of bin tokens with a CTMC sampler, then validation.

Targets are quantile-normalised and binned like `tokens`. The network reads the current tokens (embedded),
the time and the condition, and predicts the clean-token posterior p_{1|t} at every position; it is trained
with cross-entropy against x_1 from x_t drawn on the chosen path (driftkit.flow.discrete).
Sampling: `steps` stochastic CTMC Euler steps then `validation_steps` argmax steps (14 + 2 by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from driftkit.decoders.base import Decoder, DecoderConfig, DecoderLoss
from driftkit.decoders.registry import register_decoder
from driftkit.errors import check_choice, check_positive
from driftkit.flow.discrete import MetricPath, MixturePath, ctmc_euler
from driftkit.ops import masked_mean, repeat_samples
from driftkit.tokenizers import UniformBins


@dataclass
class DiscreteFlowConfig(DecoderConfig):
    num_bins: int = 256
    """Uniform bins over the normalised range [-1, 1]."""
    path: str = "metric"
    """metric (embedding-guided, uniform source) or mask (mixture path from [MASK])."""
    steps: int = 14
    """Stochastic CTMC steps (override per call with `steps=`)."""
    validation_steps: int = 2
    """Deterministic argmax steps after the stochastic ones."""
    embed_dim: int = 16
    """Width of the token embedding fed to the network."""
    metric_c: float = 50.0
    """Metric path: beta_t = c * (t / (1 - t))^alpha."""
    metric_alpha: float = 1.0
    kappa_power: float = 1.0
    """Mask path: kappa(t) = t^power."""
    t_max: float = 0.999
    """Training times are U(0, t_max); sampling integrates to t_max, where the rates stay finite."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("num_bins", "steps", "embed_dim", "metric_c", "metric_alpha", "kappa_power"):
            check_positive(name, getattr(self, name))
        check_positive("validation_steps", self.validation_steps, allow_zero=True)
        check_choice("path", self.path, ("metric", "mask"))
        if not 0 < self.t_max < 1:
            raise ValueError(f"got t_max={self.t_max}, must be in (0, 1)")


@register_decoder
class DiscreteFlowDecoder(Decoder):
    name = "discrete_flow"
    summary = "discrete flow matching over bin tokens (DFM-VLA), CTMC + validation; NFE = 14 + 2"
    config_class = DiscreteFlowConfig
    default_normalization = "quantile"

    def __init__(self, config: DiscreteFlowConfig):
        super().__init__(config)
        self.bins = UniformBins(config.num_bins)
        if config.path == "mask":
            self.path = MixturePath(config.num_bins, config.kappa_power)
        else:
            self.path = MetricPath(config.num_bins, config.metric_c, config.metric_alpha)
        self.embed = nn.Embedding(config.num_bins + 1, config.embed_dim)  # + [MASK]
        self.net = self._net(in_dim=config.dim * config.embed_dim, out_dim=config.dim * config.num_bins, use_time=True)

    def logits(self, cond: Tensor, x_t: Tensor, t: Tensor, cond_mask: Tensor | None = None) -> Tensor:
        """cond [N, C] or [N, L, C], x_t [N, T, D] ids, t [N], cond_mask [N, L] or None -> [N, T, D, V]."""
        n, horizon, dim = x_t.shape
        h = self.embed(x_t).view(n, horizon, dim * self.config.embed_dim)
        return self.net(cond, h, t, cond_mask=cond_mask).view(n, horizon, dim, self.config.num_bins)

    def _loss(self, cond: Tensor, x_1: Tensor, mask: Tensor, cond_mask: Tensor | None = None) -> DecoderLoss:
        ids = self.bins.encode(x_1)
        t = torch.rand(ids.shape[0], device=ids.device) * self.config.t_max
        logits = self.logits(cond, self.path.sample_xt(ids, t), t.to(x_1.dtype), cond_mask)
        ce = F.cross_entropy(logits.flatten(0, 2), ids.flatten(), reduction="none").view_as(x_1)
        loss = masked_mean(ce, mask)
        return DecoderLoss(loss, {"loss": loss.item()})

    def _sample(self, cond: Tensor, k: int, steps, generator, temperature: None, cond_mask=None) -> Tensor:
        cond_k, cond_mask_k = repeat_samples(cond, k), repeat_samples(cond_mask, k)
        shape = (cond_k.shape[0], *self.config.target_shape)
        x_0 = self.path.source(shape, cond_k.device, generator)
        posterior = lambda x, t: self.logits(cond_k, x, t.to(cond_k.dtype), cond_mask_k).softmax(-1)  # noqa: E731
        ids = ctmc_euler(
            posterior, x_0, self.path, steps or self.config.steps, self.config.validation_steps,
            self.config.t_max, generator,
        )
        return self.bins.decode(ids).to(cond.dtype).view(cond.shape[0], k, *self.config.target_shape)

    def nfe(self, steps: int | None = None) -> int:
        return (steps or self.config.steps) + self.config.validation_steps
