"""Real-time chunking (Black, Galliker, Levine 2025): the next chunk is computed while the current one runs, so
its first d actions (the delay) are already committed. The new chunk is asked to agree with the previous
chunk's not-yet-executed actions there, and to blend into its own plan after.

    inpaint = Inpaint.from_previous(prev_remaining, horizon=T, delay=d, execution_horizon=s)
    chunk = policy.predict(obs, inpaint=inpaint)             # [B, T, D]

Index i of the new chunk (0-based), T actions, delay d, execution horizon s (d <= s <= T - d); the soft mask
    W_i = 1                                         i < d
    W_i = c_i (e^{c_i} - 1) / (e - 1),  c_i = (T - s - i) / (T - s - d + 1)      d <= i < T - s
    W_i = 0                                         i >= T - s
("linear" drops the exponential factor, "zeros" keeps only the hard prefix i < d).

How decoders honour it (`Decoder.sample(..., inpaint=)`; the prefix is normalised once by the base class):
- iterative decoders (flow, residual_flow) follow the paper's guided velocity at every Euler step
  (driftkit.flow.guidance); residual_flow guides in its refiner's coordinates around the base;
- one-step decoders (drift, residual_drift) have no integrator to guide (nothing published applies RTC to
  them): they draw K' = max(K, candidates) samples in one batched pass and keep the K with the smallest
  W-weighted squared distance to the prefix (driftkit.selection.prefix_distance), closest first; optionally
  `noise_steps` gradient steps on those samples' input noise then lower ||W (G(z) - Y)||^2 further;
- any other decoder (regression, tokens, lm_tokens, discrete_flow) raises a ValueError naming itself.
Guidance needs autograd: a call under torch.inference_mode() leaves inference mode for the decoder's
integration (on clones of its inputs) and returns ordinary tensors, so serving code may keep inference_mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from driftkit.errors import check_choice, check_finite, check_positive

SCHEDULES = ("exp", "linear", "zeros")


@dataclass
class Inpaint:
    """What the previous chunk asks of the next one."""

    prefix: Tensor
    """[B, T, D] in action units: the previous chunk's remaining actions, aligned so prefix[:, i] is the action
    it planned for index i of the new chunk; positions it has no plan for repeat its last planned action
    (zeros would decode to the dataset mean)."""
    delay: int
    """d, actions of the new chunk that execute before it arrives (held to the prefix)."""
    execution_horizon: int
    """s, actions executed from each chunk; the weights reach 0 at index T - s."""
    beta: float = 10.0
    """Clip of the guidance weight (LeRobot uses 10 for 10-step flow, the paper 5 for 5 steps)."""
    schedule: str = "exp"
    """Soft mask over the overlap: exp, linear or zeros (hard prefix only)."""
    candidates: int = 8
    """One-step decoders: candidates drawn per batch row, K' = max(K, candidates), in one pass; the K
    closest to the prefix are kept. Iterative decoders ignore it."""
    noise_steps: int = 0
    """One-step decoders: gradient steps on the kept samples' input noise toward the prefix after selection
    (0 = selection only, the default: 10 steps cost 15-25x the selection route on CPU; see
    benchmarks/results/rtc_offline.md). Iterative decoders ignore it."""
    noise_lr: float = 0.1
    """Step size (Adam) of those noise steps."""

    def __post_init__(self):
        if not isinstance(self.prefix, Tensor):
            raise TypeError(f"inpaint prefix must be a torch.Tensor, got {type(self.prefix).__name__}")
        if self.prefix.dim() != 3 or 0 in self.prefix.shape:
            raise ValueError(f"inpaint prefix has shape {list(self.prefix.shape)}, expected [B, T, D] (none empty)")
        if not torch.is_floating_point(self.prefix):
            raise TypeError(f"inpaint prefix must be a float tensor (action units), got dtype {self.prefix.dtype}")
        check_finite("inpaint prefix", self.prefix)
        for name in ("delay", "execution_horizon", "candidates", "noise_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not hasattr(value, "__index__"):
                raise TypeError(f"got {name}={value!r}, must be an int")
            setattr(self, name, int(value))
        t = self.prefix.shape[1]
        check_positive("delay", self.delay, allow_zero=True)
        check_positive("beta", self.beta)
        if not math.isfinite(self.beta) or not math.isfinite(self.noise_lr):
            raise ValueError(f"got beta={self.beta!r}, noise_lr={self.noise_lr!r}; both must be finite")
        check_choice("schedule", self.schedule, SCHEDULES)
        check_positive("candidates", self.candidates)
        check_positive("noise_steps", self.noise_steps, allow_zero=True)
        check_positive("noise_lr", self.noise_lr)
        if not self.delay <= self.execution_horizon <= t - self.delay:
            raise ValueError(f"got delay={self.delay}, execution_horizon={self.execution_horizon} for a chunk of "
                             f"T={t}; need delay <= execution_horizon <= T - delay")

    @property
    def horizon(self) -> int:
        return self.prefix.shape[1]

    def weights(self) -> Tensor:
        """[T] the soft mask W (float, on the prefix's device)."""
        return soft_mask(self.horizon, self.delay, self.execution_horizon, self.schedule).to(self.prefix)

    @classmethod
    def from_previous(cls, remaining: Tensor, horizon: int, delay: int, execution_horizon: int,
                      **options) -> "Inpaint":
        """remaining [B, R, D] (or [R, D]): the previous chunk's actions not yet executed when the new
        observation was taken, in order. Pads to T by repeating the last one; caps d at R (the new chunk cannot
        be held to actions the previous one never planned)."""
        if remaining.dim() == 2:
            remaining = remaining[None]
        if remaining.dim() != 3 or remaining.shape[1] == 0:
            raise ValueError(f"remaining has shape {list(remaining.shape)}, expected [B, R, D] with R >= 1")
        r = min(remaining.shape[1], horizon)
        pad = remaining[:, r - 1:r].expand(-1, horizon - r, -1)
        prefix = torch.cat([remaining[:, :r], pad], dim=1).float()
        d = min(delay, r)
        return cls(prefix, d, max(execution_horizon, d), **options)


@dataclass
class InpaintTarget:
    """An Inpaint request as a decoder sees it: the prefix in the decoder's normalised units (the base class
    normalises it once), with its soft mask. Decoders that guide in other coordinates (residual_flow's
    refiner) map `prefix` into them."""

    prefix: Tensor
    """[B, T, D] normalised prefix Y."""
    weights: Tensor
    """[T] the soft mask W."""
    request: Inpaint
    """The caller's request (beta, candidates, noise_steps, ...)."""

    @property
    def beta(self) -> float:
        return float(self.request.beta)

    def repeated(self, k: int) -> Tensor:
        """[B * k, T, D]: the prefix repeated for K samples exactly as cond is (driftkit.ops.repeat_samples)."""
        return self.prefix.repeat_interleave(k, dim=0)


def soft_mask(horizon: int, delay: int, execution_horizon: int, schedule: str = "exp") -> Tensor:
    """[T] RTC's weights over the new chunk's indices (see the module docstring)."""
    t, d, s = horizon, delay, execution_horizon
    i = torch.arange(t, dtype=torch.float64)
    w = torch.zeros(t, dtype=torch.float64)
    w[:d] = 1.0
    if schedule != "zeros":
        mid = (i >= d) & (i < t - s)
        c = (t - s - i[mid]) / (t - s - d + 1)
        w[mid] = c * (torch.exp(c) - 1) / (math.e - 1) if schedule == "exp" else c
    return w.float()
