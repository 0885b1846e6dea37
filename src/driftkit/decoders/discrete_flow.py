"""Discrete flow (DFM-VLA): iterative refinement of bin tokens with a CTMC sampler, then validation.

Targets are quantile-normalised and binned like `tokens`. The network reads the current tokens (embedded),
the time and the condition, and predicts the clean-token posterior p_{1|t} at every position; it is trained
with cross-entropy against x_1 from x_t drawn on the chosen path (driftkit.flow.discrete).
Sampling: `steps` stochastic CTMC Euler steps then `validation_steps` argmax steps (14 + 2 by default).

Velocity (DFM-VLA studies both):
- posterior (default, embedding-guided): each CTMC step draws x_1 ~ p_{1|t} and follows the path's conditional
  rate u(z | x_t, x_1) toward it.
- head: an auxiliary head, a second output of the same network, predicts the marginal replacement rates
  u(z | x_t) directly. u = rate_scale(t) * r with the known time factor (kappa' / (1 - kappa) or beta_t') and the
  head's r = exp(output) / V >= 0, so the head only regresses the bounded part. Its target is the conditional
  unit rate r(z | x_t, x_1) = u(z | x_t, x_1) / rate_scale(t) of the drawn training pair: an unbiased target,
  since the marginal rate is its expectation given x_t. The loss is the generalised-KL (Poisson) Bregman
  divergence sum_{z != x_t} r - a log r + a log a - a (a = target, flow.discrete.rate_bregman), whose expected
  value is minimised exactly at that expectation; it is added, weighted by head_weight, to the posterior's
  cross-entropy. The CTMC steps use the head's rates (network at each step's midpoint); the validation steps
  are still argmax p_{1|t}. Same NFE as posterior.

Distance of the metric path (config `distance`):
- bins: d(i, j) = |i - j| / V between bin ids.
- embedding: distances between the decoder's own token embedding rows (the first V rows of `embed`), Euclidean,
  scaled so the largest is (V - 1) / V like the bins' (flow.discrete.embedding_distances), detached (no
  gradient through the path) and recomputed from the current weights at every loss() and sample() call.
- external: the same distances between rows handed to `set_distance_rows` (rows [V, H], e.g. a VLM's LM-head
  rows of the bin ids; a VLM policy passes them through init_from_lm_head). Computed once when set, kept in
  the `distance_table` buffer, saved with the weights.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from driftkit.decoders.base import Decoder, DecoderConfig, DecoderLoss
from driftkit.decoders.registry import register_decoder
from driftkit.errors import check_choice, check_positive
from driftkit.flow.discrete import (
    MetricPath, MixturePath, RateField, ctmc_euler, embedding_distances, leaving, rate_bregman,
)
from driftkit.ops import masked_mean
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
    velocity: str = "posterior"
    """posterior: CTMC rates from x_1 ~ p_{1|t} and the path's conditional rate; head: an auxiliary head
    predicts the rates (see the module docstring)."""
    head_weight: float = 1.0
    """velocity=head: weight of the rate loss added to the posterior's cross-entropy."""
    distance: str = "bins"
    """Metric path's d: bins (|i - j| / V), embedding (the decoder's own token embeddings, refreshed every call)
    or external (rows given to set_distance_rows, e.g. a VLM's LM-head rows)."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("num_bins", "steps", "embed_dim", "metric_c", "metric_alpha", "kappa_power", "head_weight"):
            check_positive(name, getattr(self, name))
        check_positive("validation_steps", self.validation_steps, allow_zero=True)
        check_choice("path", self.path, ("metric", "mask"))
        check_choice("velocity", self.velocity, ("posterior", "head"))
        check_choice("distance", self.distance, ("bins", "embedding", "external"))
        if self.distance != "bins" and self.path != "metric":
            raise ValueError(f"got distance={self.distance!r} with path={self.path!r}: only the metric path has a "
                             "distance (use distance='bins' with the mask path)")
        if self.num_bins < 2 and self.distance != "bins":
            raise ValueError(f"got num_bins={self.num_bins} with distance={self.distance!r}: need >= 2 tokens")
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
        v = config.num_bins
        self.bins = UniformBins(v)
        if config.path == "mask":
            self.path = MixturePath(v, config.kappa_power)
        else:
            self.path = MetricPath(v, config.metric_c, config.metric_alpha)
        self.embed = nn.Embedding(v + 1, config.embed_dim)  # + [MASK]
        heads = 2 if config.velocity == "head" else 1  # [posterior logits | head log rates] per position
        self.net = self._net(in_dim=config.dim * config.embed_dim, out_dim=config.dim * v * heads, use_time=True)
        if config.distance == "external":
            self.register_buffer("distance_table", torch.zeros(v, v))  # [V, V], filled by set_distance_rows

    # ---- the metric path's distance -------------------------------------------------------------------
    def set_distance_rows(self, rows: Tensor) -> None:
        """distance='external': fix d from embedding rows [V, H] of the V bin tokens, in class order."""
        if self.config.distance != "external":
            raise ValueError(f"set_distance_rows needs distance='external', this decoder has "
                             f"distance={self.config.distance!r}")
        if rows.dim() != 2 or rows.shape[0] != self.config.num_bins:
            raise ValueError(f"distance rows have shape {list(rows.shape)}, expected [num_bins, H] = "
                             f"[{self.config.num_bins}, H]")
        self.distance_table.copy_(embedding_distances(rows).to(self.distance_table))

    def init_from_lm_head(self, lm_head_rows) -> None:
        if self.config.distance == "external":
            self.set_distance_rows(lm_head_rows(self.config.num_bins, layout="centres")[0])

    def current_path(self) -> MixturePath | MetricPath:
        """The path with the distance as it stands now (see the module docstring for when it changes)."""
        if self.config.distance == "bins":
            return self.path
        if self.config.distance == "embedding":
            table = embedding_distances(self.embed.weight[: self.config.num_bins])
        else:
            table = self.distance_table
            if not bool(table.any()):
                raise RuntimeError("discrete_flow has distance='external' but no distance rows yet: call "
                                   "set_distance_rows(rows [num_bins, H]) (a VLM policy does it from its LM head)")
        return dataclasses.replace(self.path, table=table)

    # ---- network --------------------------------------------------------------------------------------
    def _outputs(self, cond: Tensor, x_t: Tensor, t: Tensor, cond_mask: Tensor | None = None,
                 samples: int = 1) -> Tensor:
        """-> [N, T, D, V * heads]: posterior logits, then (velocity=head) log unit rates + log V. With
        samples = S, x_t and t hold N = B * S rows for the B rows of cond (or of the net's Prefix)."""
        n, horizon, dim = x_t.shape
        h = self.embed(x_t).view(n, horizon, dim * self.config.embed_dim)
        return self.net(cond, h, t, cond_mask=cond_mask, samples=samples).view(n, horizon, dim, -1)

    def logits(self, cond: Tensor, x_t: Tensor, t: Tensor, cond_mask: Tensor | None = None,
               samples: int = 1) -> Tensor:
        """cond [B, C] or [B, L, C] (or the net's Prefix), x_t [B * S, T, D] ids, t [B * S], cond_mask [B, L] or
        None -> [B * S, T, D, V]."""
        return self._outputs(cond, x_t, t, cond_mask, samples)[..., : self.config.num_bins]

    def _log_unit_rates(self, out: Tensor) -> Tensor:
        """[N, T, D, 2V] outputs -> log r [N, T, D, V]; the - log V makes an untrained head's total rate ~1."""
        return out[..., self.config.num_bins:] - math.log(self.config.num_bins)

    # ---- the contract ---------------------------------------------------------------------------------
    def _loss(self, cond: Tensor, x_1: Tensor, mask: Tensor, cond_mask: Tensor | None = None) -> DecoderLoss:
        v, path = self.config.num_bins, self.current_path()
        ids = self.bins.encode(x_1)
        t = torch.rand(ids.shape[0], device=ids.device) * self.config.t_max
        x_t = path.sample_xt(ids, t)
        out = self._outputs(cond, x_t, t.to(x_1.dtype), cond_mask)
        ce = F.cross_entropy(out[..., :v].flatten(0, 2), ids.flatten(), reduction="none").view_as(x_1)
        loss = masked_mean(ce, mask)
        metrics = {"ce": loss.item()}
        if self.config.velocity == "head":
            t_pos = t.view(-1, 1, 1).expand(ids.shape).reshape(-1)
            target = path.unit_rates(x_t.reshape(-1), ids.reshape(-1), t_pos).view(*ids.shape, v)
            rate = rate_bregman(self._log_unit_rates(out).float(), target, leaving(x_t, v))
            metrics["rate_loss"] = masked_mean(rate, mask).item()
            loss = loss + self.config.head_weight * masked_mean(rate, mask)
        metrics["loss"] = loss.item()
        return DecoderLoss(loss, metrics)

    def _head_rates(self, cond: Tensor, cond_mask: Tensor | None, path, samples: int = 1) -> RateField:
        """The velocity head as a CTMC rate field: the network and the time factor at each step's midpoint."""

        def rates(x: Tensor, t: float, h: float) -> Tensor:
            t_mid = torch.full((x.shape[0],), t + h / 2, device=x.device, dtype=cond.dtype)
            out = self._outputs(cond, x, t_mid, cond_mask, samples)
            return self._log_unit_rates(out).float().exp() * path.rate_scale(t + h / 2)

        return rates

    def _sample(self, cond: Tensor, k: int, steps, generator, temperature: None, cond_mask=None) -> Tensor:
        prefix = self.net.prefix(cond, cond_mask)  # projected once, shared by the K samples and every step
        path = self.current_path()
        shape = (cond.shape[0] * k, *self.config.target_shape)
        x_0 = path.source(shape, cond.device, generator)
        posterior = lambda x, t: self.logits(prefix, x, t.to(cond.dtype), samples=k).softmax(-1)  # noqa: E731
        rates = self._head_rates(prefix, None, path, k) if self.config.velocity == "head" else None
        ids = ctmc_euler(
            posterior, x_0, path, steps or self.config.steps, self.config.validation_steps,
            self.config.t_max, generator, rates=rates,
        )
        return self.bins.decode(ids).to(cond.dtype).view(cond.shape[0], k, *self.config.target_shape)

    def nfe(self, steps: int | None = None) -> int:
        return (steps or self.config.steps) + self.config.validation_steps
