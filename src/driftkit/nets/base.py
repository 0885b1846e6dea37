"""ChunkNet: the one network contract behind every decoder.

    net(cond, x=None, t=None, cond_mask=None, samples=1) -> [B * S, T, out_dim]
        cond:      [B, C] features (query-token states), or [B, L, C] prefix states for nets that attend to them;
                   or a Prefix, the same condition already prepared by `net.prefix(cond, cond_mask)`
        x:         [B * S, T, in_dim] the chunk being generated or refined (None when spec.in_dim == 0)
        t:         [B * S] flow time in [0, 1] (None when spec.use_time is False)
        cond_mask: [B, L] bool, True at real rows of a [B, L, C] cond (None = every row is real). The only
                   record of padding: a net must not infer it from the values of cond (a real state may be
                   zero, and padding need not be). Decoders validate it (shape, no all-False row) before it
                   reaches the net, and pass it only with a 3-D cond. Inside a Prefix when cond is one.
        samples:   S, rows of x per observation: rows b * S .. b * S + S - 1 of x and t are S samples that all
                   read cond row b (the layout of driftkit.ops.repeat_samples).

The condition is never copied per sample by a decoder. `prefix(cond, cond_mask)` projects it once per
observation (the expert's cross-attention keys and values; the MLP keeps cond as it is) into a Prefix; every
sample and every step that reads it is evaluated against the same projections, broadcast. A decoder that calls
the net several times with one condition (the Euler loop, the CTMC sampler, noise refinement) builds the
Prefix once and passes it as cond; a single call may pass cond itself. The output is what the same net gives
on cond repeated S times, to float tolerance (tests/test_shared_prefix.py compares them).

Decoders only ever build nets through `make_net(name, spec)`, so a new architecture (for example an
action expert that cross-attends to a VLM prefix) registers a name and every decoder runs on it unchanged.
A subclass implements `project(cond, cond_mask) -> tuple of tensors` and `evaluate(prefix, x, t, samples)`;
the base class checks the rows of cond, x and t once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn

from driftkit.errors import check_positive


@dataclass(frozen=True)
class NetSpec:
    """What a decoder needs from its network."""

    cond_dim: int
    """C, the width of the condition features."""
    horizon: int
    """T, the number of chunk steps (1 for an interval or a box)."""
    in_dim: int
    """Channels per step of the chunk input x (0: the net sees only cond)."""
    out_dim: int
    """Channels per step of the output."""
    use_time: bool
    """Whether the net takes a flow time t."""
    hidden_dim: int = 256
    """Width of hidden layers."""
    depth: int = 3
    """Number of hidden blocks."""

    def __post_init__(self):
        for name in ("cond_dim", "horizon", "out_dim", "hidden_dim", "depth"):
            check_positive(name, getattr(self, name))
        check_positive("in_dim", self.in_dim, allow_zero=True)


@dataclass(frozen=True, eq=False)
class Prefix:
    """A condition as one net prepared it (ChunkNet.prefix): projected once per observation and then read,
    unrepeated, by every sample and every step evaluated against it."""

    cond: Tensor
    """[B, C] or [B, L, C], the condition as given."""
    cond_mask: Tensor | None
    """[B, L] bool, True at real rows of a 3-D cond (None = all real)."""
    memory: tuple
    """The net's own projections of cond (e.g. the expert's per-block cross-attention keys and values)."""
    owner: int
    """id() of the net that built it: a Prefix is only valid for that net's weights."""

    @property
    def rows(self) -> int:
        """B, the observations."""
        return self.cond.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.cond.dtype

    @property
    def device(self) -> torch.device:
        return self.cond.device


class ChunkNet(nn.Module):
    """Base class: subclasses implement `project` and `evaluate` for their NetSpec (see the module docstring)."""

    name: ClassVar[str] = ""

    def __init__(self, spec: NetSpec):
        super().__init__()
        self.spec = spec

    def prefix(self, cond: Tensor, cond_mask: Tensor | None = None) -> Prefix:
        """cond [B, C] or [B, L, C], cond_mask [B, L] or None -> the Prefix every later call can share."""
        return Prefix(cond, cond_mask, self.project(cond, cond_mask), id(self))

    def forward(
        self, cond: Tensor | Prefix, x: Tensor | None = None, t: Tensor | None = None,
        cond_mask: Tensor | None = None, samples: int = 1,
    ) -> Tensor:
        if isinstance(cond, Prefix):
            if cond_mask is not None:
                raise ValueError(f"net {self.name!r} got cond_mask with a Prefix: the Prefix carries its own mask")
            if cond.owner != id(self):
                raise ValueError(f"net {self.name!r} got a Prefix built by another net: build it with this net's "
                                 "prefix(cond, cond_mask)")
            prefix = cond
        else:
            prefix = self.prefix(cond, cond_mask)
        self._check_rows(prefix.rows, x, t, samples)
        return self.evaluate(prefix, x, t, samples)

    def _check_rows(self, b: int, x: Tensor | None, t: Tensor | None, samples: int) -> None:
        """x [B * S, T, in_dim] and t [B * S] for B observations of S samples each."""
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ValueError(f"net {self.name!r} got samples={samples!r}, must be an int >= 1")
        n, spec = b * samples, self.spec
        why = f" (cond holds B={b} observations, samples={samples}: B * S = {n} rows)"
        if spec.in_dim:
            if x is None:
                raise ValueError(f"net {self.name!r} needs x [B * S, T, {spec.in_dim}] (spec.in_dim = {spec.in_dim})")
            if tuple(x.shape) != (n, spec.horizon, spec.in_dim):
                raise ValueError(f"net {self.name!r} got x of shape {list(x.shape)}, expected "
                                 f"[{n}, {spec.horizon}, {spec.in_dim}]{why}")
        if spec.use_time:
            if t is None or tuple(t.shape) != (n,):
                got = None if t is None else list(t.shape)
                raise ValueError(f"net {self.name!r} got t of shape {got}, expected [{n}]{why}")

    def project(self, cond: Tensor, cond_mask: Tensor | None) -> tuple:
        """Validate cond (and cond_mask) and compute what every sample shares, once per observation."""
        raise NotImplementedError

    def evaluate(self, prefix: Prefix, x: Tensor | None, t: Tensor | None, samples: int) -> Tensor:
        """-> [B * S, T, out_dim] for the rows of x and t (already checked against prefix.rows * samples)."""
        raise NotImplementedError


NET_REGISTRY: dict[str, Callable[[NetSpec], ChunkNet]] = {}


def register_net(name: str):
    def wrap(factory):
        NET_REGISTRY[name] = factory
        return factory

    return wrap


def make_net(name: str, spec: NetSpec) -> ChunkNet:
    if name not in NET_REGISTRY:
        raise ValueError(f"unknown net {name!r}; registered nets: {sorted(NET_REGISTRY)}")
    return NET_REGISTRY[name](spec)
