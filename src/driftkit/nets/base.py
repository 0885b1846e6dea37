"""ChunkNet: the one network contract behind every decoder.

    net(cond, x=None, t=None, cond_mask=None) -> [N, T, out_dim]
        cond:      [N, C] features (query-token states), or [N, L, C] prefix states for nets that attend to them
        x:         [N, T, in_dim] the chunk being generated or refined (None when spec.in_dim == 0)
        t:         [N] flow time in [0, 1] (None when spec.use_time is False)
        cond_mask: [N, L] bool, True at real rows of a [N, L, C] cond (None = every row is real). The only
                   record of padding: a net must not infer it from the values of cond (a real state may be
                   zero, and padding need not be). Decoders validate it (shape, no all-False row) before it
                   reaches the net, and pass it only with a 3-D cond.

Decoders only ever build nets through `make_net(name, spec)`, so a new architecture (for example an
action expert that cross-attends to a VLM prefix) registers a name and every decoder runs on it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


class ChunkNet(nn.Module):
    """Base class: subclasses implement forward(cond, x, t, cond_mask) -> [N, T, out_dim] for their NetSpec."""

    def __init__(self, spec: NetSpec):
        super().__init__()
        self.spec = spec

    def forward(
        self, cond: Tensor, x: Tensor | None = None, t: Tensor | None = None, cond_mask: Tensor | None = None
    ) -> Tensor:
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
