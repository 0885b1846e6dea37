"""Discrete flow matching over ordered tokens (Gat et al. 2024; Shaul et al. 2024; DFM-VLA).

Same time convention as the continuous flows: t = 0 source, t = 1 data. Two probability paths over V tokens:

- MixturePath (mask source): x_t = x_1 with probability kappa(t) = t^n, else [MASK] (id V).
  Conditional rate toward x_1: u(z | x, x_1) = kappa'(t) / (1 - kappa(t)) * [z = x_1], for x != x_1.
- MetricPath (DFM-VLA's embedding-guided path): p_t(x | x_1) = softmax_x(-beta_t * d(x, x_1)),
  beta_t = c * (t / (1 - t))^alpha; at t = 0 it is uniform. d = |x - x_1| / V for ordered bins, or any [V, V]
  distance table (`embedding_distances` of token embedding rows).
  Kinetic-optimal rate: u(z | x, x_1) = p_t(z | x_1) * beta_t' * max(d(x, x_1) - d(z, x_1), 0).

Both rates factor as u = rate_scale(t) * unit_rates(x, x_1, t): a time factor (kappa' / (1 - kappa), or beta_t')
that diverges at t -> 1 times a bounded part (entries in [0, 1]). A velocity head regresses the bounded part,
and `rate_bregman` is its loss.

Sampling (`ctmc_euler`): each step asks a rate field for the jump rates u(z) out of the current tokens, jumps
with probability 1 - exp(-h * lambda) to z ~ u / lambda, where lambda = sum_z u(z); then `validation_steps`
deterministic steps set x = argmax p_{1|t}. The default field (`posterior_rates`) draws x_1 from the model's
posterior p_{1|t} and takes the path's conditional rate toward it; a velocity head supplies its own field.
The rates are taken at the middle of each step, t + h / 2 (the midpoint rule for the step's integrated rate):
with an exponent below 1 (kappa_power or metric alpha) the rate diverges at t = 0 but its integral stays finite,
so the left end would divide by zero there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from driftkit.errors import check_positive, check_shape

RateField = Callable[[Tensor, float, float], Tensor]
"""rates(x [N, ...] ids, t, h) -> u [N, ..., V] >= 0: jump rates out of x to integrate over the step [t, t + h]."""


def _categorical(probs: Tensor, generator=None) -> Tensor:
    """probs [..., V] -> ids [...] (rows need not be normalised)."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def leaving(x: Tensor, vocab: int) -> Tensor:
    """x [...] ids (id `vocab` = [MASK]) -> [..., vocab] bool, True at every z != x (where a jump may go)."""
    stay = torch.nn.functional.one_hot(x, vocab + 1)[..., :vocab].bool()
    return ~stay


def embedding_distances(rows: Tensor) -> Tensor:
    """rows [V, E] token embeddings -> d [V, V]: Euclidean distances scaled so that the largest is (V - 1) / V,
    the largest bin distance |i - j| / V, so a metric path's c means the same with either distance (and rows on
    a line at equal spacing give exactly the bin distance). Computed without the matmul shortcut, so the
    diagonal is exactly 0; a metric whenever the rows are distinct."""
    if rows.dim() != 2 or rows.shape[0] < 2:
        raise ValueError(f"embedding rows have shape {list(rows.shape)}, expected [V, E] with V >= 2")
    rows = rows.detach().float()
    d = torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist")
    vocab, top = rows.shape[0], d.max()
    if not top > 0:
        raise ValueError(f"all {vocab} embedding rows are equal: they define no distance")
    return (d * ((vocab - 1) / vocab / top)).fill_diagonal_(0.0)


def rate_bregman(log_rate: Tensor, target: Tensor, keep: Tensor) -> Tensor:
    """log_rate [..., V] predicted log rates, target [..., V] >= 0, keep [..., V] bool -> [...] loss.

    The generalised KL (Poisson) Bregman divergence summed over the kept z:
    sum_z r - a log r + a log a - a, with r = exp(log_rate) and a = target. It is >= 0, zero exactly at r = a,
    and, as every Bregman divergence in its second argument, its expectation over a random target is minimised
    at the target's mean; so regressing the conditional rate u(z | x_t, x_1) learns the marginal rate
    u(z | x_t) = E[u(z | x_t, x_1) | x_t].
    """
    rate = log_rate.exp()
    cross = torch.where(target > 0, target * log_rate, torch.zeros_like(target))
    per_z = rate - cross + torch.xlogy(target, target) - target
    return (per_z * keep).sum(-1)


@dataclass
class MixturePath:
    """Mask source: token id `vocab` is [MASK]."""

    vocab: int
    power: float = 1.0

    @property
    def mask_id(self) -> int:
        return self.vocab

    def source(self, shape, device, generator=None) -> Tensor:
        return torch.full(shape, self.mask_id, dtype=torch.long, device=device)

    def sample_xt(self, x_1: Tensor, t: Tensor, generator=None) -> Tensor:
        """x_1 [N, ...] ids, t [N] -> x_t [N, ...]."""
        kappa = t.view(-1, *([1] * (x_1.dim() - 1))).pow(self.power)
        keep = torch.rand(x_1.shape, generator=generator, device=x_1.device) < kappa
        return torch.where(keep, x_1, torch.full_like(x_1, self.mask_id))

    def rate_scale(self, t: float | Tensor) -> float | Tensor:
        """kappa'(t) / (1 - kappa(t)), for a float t or a tensor of times."""
        rest = 1 - t**self.power
        rest = rest.clamp_min(1e-6) if isinstance(rest, Tensor) else max(rest, 1e-6)
        return self.power * t ** (self.power - 1) / rest

    def unit_rates(self, x: Tensor, x_1: Tensor, t: Tensor | float) -> Tensor:
        """x, x_1 [M] ids, t (unused: the mask path's rate is all time factor) -> [M, V], [z = x_1] for x != x_1."""
        u = torch.nn.functional.one_hot(x_1, self.vocab).float()
        return u * (x != x_1).unsqueeze(-1)

    def rates(self, x: Tensor, x_1: Tensor, t: float) -> Tensor:
        """x, x_1 [M] ids -> u [M, V] (zero at z = x)."""
        return self.unit_rates(x, x_1, t) * self.rate_scale(t)


@dataclass
class MetricPath:
    """Embedding-guided path: d(i, j) = |i - j| / vocab over ordered bins, or `table[i, j]` when given."""

    vocab: int
    c: float = 50.0
    alpha: float = 1.0
    table: Tensor | None = field(default=None, repr=False, compare=False)
    """[V, V] distances (e.g. embedding_distances of token embeddings); None = the bin distance."""

    def __post_init__(self):
        if self.table is not None:
            check_shape("distance table", self.table, (self.vocab, self.vocab), " (vocab, vocab)")

    def source(self, shape, device, generator=None) -> Tensor:
        return torch.randint(0, self.vocab, shape, generator=generator, device=device)

    def beta(self, t: Tensor) -> Tensor:
        return self.c * (t / (1 - t)).pow(self.alpha)

    def beta_dot(self, t: float) -> float:
        return self.c * self.alpha * (t / (1 - t)) ** (self.alpha - 1) / (1 - t) ** 2

    def rate_scale(self, t: float | Tensor) -> float | Tensor:
        """beta_t', for a float t or a tensor of times."""
        return self.beta_dot(t)

    def distance(self, x_1: Tensor) -> Tensor:
        """x_1 [...] -> d [..., V] distance of every token to x_1."""
        if self.table is not None:
            return self.table.to(x_1.device)[x_1]
        z = torch.arange(self.vocab, device=x_1.device)
        return (z - x_1.unsqueeze(-1)).abs().float() / self.vocab

    def sample_xt(self, x_1: Tensor, t: Tensor, generator=None) -> Tensor:
        """x_1 [N, ...] ids, t [N] -> x_t ~ p_t(. | x_1): a softmax draw with a table, else in closed form.

        With the bin distance p_t(z | x_1) is proportional to q^|z - x_1| with q = exp(-beta_t / V) on 0..V-1: a
        two-sided geometric truncated to the vocabulary. Pick the side by its mass, then invert the truncated
        geometric's CDF (O(1) per token instead of a softmax over V).
        """
        shape = (-1, *([1] * (x_1.dim() - 1)))
        if self.table is not None:
            logits = -self.beta(t.float()).view(*shape, 1) * self.distance(x_1)  # [N, ..., V]
            return _categorical(torch.softmax(logits, -1), generator)
        log_q = -(self.beta(t.double()).clamp_min(1e-9) / self.vocab).view(shape).expand(x_1.shape)
        x = x_1.double()
        right_n, left_n = self.vocab - x, x  # offsets 0..V-1-x_1 to the right, 1..x_1 to the left
        right_mass = -torch.expm1(right_n * log_q)
        left_mass = torch.exp(log_q) * -torch.expm1(left_n * log_q)
        u_side, u = (torch.rand(x_1.shape, generator=generator, device=x_1.device, dtype=torch.float64)
                     for _ in range(2))
        go_right = u_side * (right_mass + left_mass) < right_mass
        n = torch.where(go_right, right_n, left_n)
        k = torch.floor(torch.log1p(u * torch.expm1(n * log_q)) / log_q)  # 0..n-1
        k = torch.minimum(k.clamp_min(0), n - 1)
        z = torch.where(go_right, x + k, x - 1 - k)
        return z.long().clamp(0, self.vocab - 1)

    def unit_rates(self, x: Tensor, x_1: Tensor, t: Tensor | float) -> Tensor:
        """x, x_1 [M] ids, t [M] or a float -> u / beta_t' = p_t(z | x_1) * max(d(x, x_1) - d(z, x_1), 0) [M, V]."""
        d = self.distance(x_1)  # [M, V]
        beta = self.beta(torch.as_tensor(t, dtype=d.dtype, device=d.device)).reshape(-1, 1)
        p_t = torch.softmax(-beta * d, dim=-1)
        d_x = d.gather(-1, x.unsqueeze(-1))  # [M, 1]
        return p_t * (d_x - d).clamp_min(0)

    def rates(self, x: Tensor, x_1: Tensor, t: float) -> Tensor:
        """x, x_1 [M] ids -> u [M, V] (zero at z = x)."""
        return self.unit_rates(x, x_1, t) * self.beta_dot(t)


def posterior_rates(
    posterior: Callable[[Tensor, Tensor], Tensor], path: MixturePath | MetricPath, generator=None
) -> RateField:
    """The embedding-guided field: draw x_1 ~ posterior(x, t) at the step's start, then the path's conditional
    rate toward x_1 at the step's midpoint (one posterior evaluation per step)."""

    def rates(x: Tensor, t: float, h: float) -> Tensor:
        probs = posterior(x, torch.full((x.shape[0],), t, device=x.device))
        x_1 = _categorical(probs, generator)
        return path.rates(x.reshape(-1), x_1.reshape(-1), t + h / 2).view(*x.shape, path.vocab)

    return rates


def ctmc_euler(
    posterior: Callable[[Tensor, Tensor], Tensor] | None,
    x_0: Tensor,
    path: MixturePath | MetricPath,
    steps: int,
    validation_steps: int = 2,
    t_max: float = 0.999,
    generator: torch.Generator | None = None,
    rates: RateField | None = None,
) -> Tensor:
    """posterior(x [N, ...] ids, t [N]) -> p_{1|t} [N, ..., V]; x_0 [N, ...] source ids -> final ids.

    rates: the jump rates of the stochastic steps (RateField, e.g. a velocity head's); None = posterior_rates
    of `posterior`. The posterior always serves the validation steps (it may be None when there are none and
    `rates` is given). Rates at z = x are ignored. Costs steps + validation_steps network evaluations when each
    rate-field call costs one.
    """
    check_positive("steps", steps)
    check_positive("validation_steps", validation_steps, allow_zero=True)
    if posterior is None and (rates is None or validation_steps > 0):
        raise ValueError(f"ctmc_euler needs a posterior (got None) for validation_steps={validation_steps} or "
                         "when no rates field is given")
    field_ = rates if rates is not None else posterior_rates(posterior, path, generator)
    x, h = x_0.clone(), t_max / steps
    n = x.shape[0]
    for i in range(steps):
        u = (field_(x, i * h, h) * leaving(x, path.vocab)).reshape(-1, path.vocab)  # [M, V]
        flat_x = x.reshape(-1)
        lam = u.sum(-1)
        jump = torch.rand(lam.shape, generator=generator, device=x.device) < 1 - torch.exp(-h * lam)
        if jump.any():
            flat_x = flat_x.clone()
            flat_x[jump] = _categorical(u[jump], generator)
        x = flat_x.view_as(x)
    for _ in range(validation_steps):
        x = posterior(x, torch.full((n,), t_max, device=x.device)).argmax(-1)
    if isinstance(path, MixturePath):  # no [MASK] may survive when there are no validation steps:
        still = x == path.mask_id  # take the last step's likeliest jump (its x_1 for the posterior field)
        if still.any():
            x = torch.where(still, u.argmax(-1).view_as(x), x)
    return x
