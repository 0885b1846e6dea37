"""Discrete flow matching over ordered tokens (Gat et al. 2024; Shaul et al. 2024; DFM-VLA).

Same time convention as the continuous flows: t = 0 source, t = 1 data. Two probability paths over V tokens:

- MixturePath (mask source): x_t = x_1 with probability kappa(t) = t^n, else [MASK] (id V).
  Conditional rate toward x_1: u(z | x, x_1) = kappa'(t) / (1 - kappa(t)) * [z = x_1], for x != x_1.
- MetricPath (DFM-VLA's embedding-guided path): p_t(x | x_1) = softmax_x(-beta_t * d(x, x_1)),
  beta_t = c * (t / (1 - t))^alpha, d = |x - x_1| / V for ordered bins; at t = 0 it is uniform.
  Kinetic-optimal rate: u(z | x, x_1) = p_t(z | x_1) * beta_t' * max(d(x, x_1) - d(z, x_1), 0).

Sampling (`ctmc_euler`): draw x_1 from the model's posterior p_{1|t}, jump with probability 1 - exp(-h * lambda)
to z ~ u / lambda, where lambda = sum_z u(z); then `validation_steps` deterministic steps set x = argmax p_{1|t}.
The rates are taken at the middle of each step, t + h / 2 (the midpoint rule for the step's integrated rate):
with an exponent below 1 (kappa_power or metric alpha) the rate diverges at t = 0 but its integral stays finite,
so the left end would divide by zero there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from driftkit.errors import check_positive


def _categorical(probs: Tensor, generator=None) -> Tensor:
    """probs [..., V] -> ids [...] (rows need not be normalised)."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


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

    def rates(self, x: Tensor, x_1: Tensor, t: float) -> Tensor:
        """x, x_1 [M] ids -> u [M, V] (zero at z = x)."""
        rate = self.power * t ** (self.power - 1) / max(1 - t**self.power, 1e-6)
        u = torch.zeros(x.shape[0], self.vocab, device=x.device)
        u[torch.arange(x.shape[0], device=x.device), x_1] = rate
        return u * (x != x_1).unsqueeze(-1)


@dataclass
class MetricPath:
    """Embedding-guided path over ordered bins with d(i, j) = |i - j| / vocab."""

    vocab: int
    c: float = 50.0
    alpha: float = 1.0

    def source(self, shape, device, generator=None) -> Tensor:
        return torch.randint(0, self.vocab, shape, generator=generator, device=device)

    def beta(self, t: Tensor) -> Tensor:
        return self.c * (t / (1 - t)).pow(self.alpha)

    def beta_dot(self, t: float) -> float:
        return self.c * self.alpha * (t / (1 - t)) ** (self.alpha - 1) / (1 - t) ** 2

    def distance(self, x_1: Tensor) -> Tensor:
        """x_1 [...] -> d [..., V] distance of every token to x_1."""
        z = torch.arange(self.vocab, device=x_1.device)
        return (z - x_1.unsqueeze(-1)).abs().float() / self.vocab

    def sample_xt(self, x_1: Tensor, t: Tensor, generator=None) -> Tensor:
        """x_1 [N, ...] ids, t [N] -> x_t ~ p_t(. | x_1), drawn in closed form.

        p_t(z | x_1) is proportional to q^|z - x_1| with q = exp(-beta_t / V) on 0..V-1: a two-sided geometric
        truncated to the vocabulary. Pick the side by its mass, then invert the truncated geometric's CDF
        (O(1) per token instead of a softmax over V).
        """
        shape = (-1, *([1] * (x_1.dim() - 1)))
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

    def rates(self, x: Tensor, x_1: Tensor, t: float) -> Tensor:
        d = self.distance(x_1)  # [M, V]
        p_t = torch.softmax(-self.beta(torch.tensor(t)) * d, dim=-1)
        d_x = d.gather(-1, x.unsqueeze(-1))  # [M, 1]
        return p_t * self.beta_dot(t) * (d_x - d).clamp_min(0)


def ctmc_euler(
    posterior: Callable[[Tensor, Tensor], Tensor],
    x_0: Tensor,
    path: MixturePath | MetricPath,
    steps: int,
    validation_steps: int = 2,
    t_max: float = 0.999,
    generator: torch.Generator | None = None,
) -> Tensor:
    """posterior(x [N, ...] ids, t [N]) -> p_{1|t} [N, ..., V]; x_0 [N, ...] source ids -> final ids.

    Costs steps + validation_steps posterior evaluations.
    """
    check_positive("steps", steps)
    check_positive("validation_steps", validation_steps, allow_zero=True)
    x, h = x_0.clone(), t_max / steps
    n = x.shape[0]
    for i in range(steps):
        t = i * h
        probs = posterior(x, torch.full((n,), t, device=x.device))
        x_1 = _categorical(probs, generator)
        flat_x, flat_x1 = x.reshape(-1), x_1.reshape(-1)
        u = path.rates(flat_x, flat_x1, t + h / 2)  # [M, V], at the step's midpoint
        lam = u.sum(-1)
        jump = torch.rand(lam.shape, generator=generator, device=x.device) < 1 - torch.exp(-h * lam)
        if jump.any():
            flat_x = flat_x.clone()
            flat_x[jump] = _categorical(u[jump], generator)
        x = flat_x.view_as(x)
    for _ in range(validation_steps):
        x = posterior(x, torch.full((n,), t_max, device=x.device)).argmax(-1)
    if isinstance(path, MixturePath):  # no [MASK] may survive when there are no validation steps
        still = x == path.mask_id
        if still.any():
            x = torch.where(still, x_1, x)
    return x
