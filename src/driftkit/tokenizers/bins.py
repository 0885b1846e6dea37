"""Uniform bins over [-1, 1] (OpenVLA): encode to a bin index, decode to the bin centre."""

from __future__ import annotations

import torch
from torch import Tensor

from driftkit.errors import check_positive


class UniformBins:
    """num_bins equal bins over [low, high]; quantisation error <= width / 2 inside the range."""

    def __init__(self, num_bins: int = 256, low: float = -1.0, high: float = 1.0):
        check_positive("num_bins", num_bins)
        if not high > low:
            raise ValueError(f"got low={low}, high={high}: need high > low")
        self.num_bins, self.low, self.high = num_bins, low, high

    @property
    def width(self) -> float:
        return (self.high - self.low) / self.num_bins

    def encode(self, x: Tensor) -> Tensor:
        """Values -> long ids in [0, num_bins); values outside [low, high] go to the edge bins."""
        ids = torch.floor((x - self.low) / self.width).long()
        return ids.clamp(0, self.num_bins - 1)

    def decode(self, ids: Tensor) -> Tensor:
        """Ids -> bin centres (float32)."""
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.num_bins):
            raise ValueError(f"token ids must lie in [0, {self.num_bins}), got range [{ids.min()}, {ids.max()}]")
        return self.low + (ids.float() + 0.5) * self.width

    def centres(self, device=None) -> Tensor:
        """[num_bins] bin centres."""
        return self.decode(torch.arange(self.num_bins, device=device))
