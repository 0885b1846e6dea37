"""Uniform bins over [-1, 1]: encode to a bin index, decode to the bin centre.

Two layouts of N classes:
- "centres" (driftkit's default): N equal intervals; class i decodes to the centre of interval i.
- "openvla" (OpenVLA's exact layout): N edges linspace(low, high, N), so N - 1 intervals; class i is
  digitize(x, edges) - 1, which is N - 1 only for x >= high, and it decodes to the centre of interval
  min(i, N - 2). OpenVLA maps class i to the descending vocabulary id V - 1 - i (V = the tokenizer's
  vocab_size); the lm_tokens decoder applies that mapping when its layout is "openvla".
"""

from __future__ import annotations

import torch
from torch import Tensor

from driftkit.errors import check_choice, check_positive

LAYOUTS = ("centres", "openvla")


class UniformBins:
    """num_bins classes over [low, high]; quantisation error <= width / 2 inside the range."""

    def __init__(self, num_bins: int = 256, low: float = -1.0, high: float = 1.0, layout: str = "centres"):
        check_positive("num_bins", num_bins)
        check_choice("layout", layout, LAYOUTS)
        if not high > low:
            raise ValueError(f"got low={low}, high={high}: need high > low")
        if layout == "openvla" and num_bins < 2:
            raise ValueError(f"got num_bins={num_bins} with layout='openvla': need at least 2 edges")
        self.num_bins, self.low, self.high, self.layout = num_bins, low, high, layout

    @property
    def intervals(self) -> int:
        return self.num_bins - 1 if self.layout == "openvla" else self.num_bins

    @property
    def width(self) -> float:
        return (self.high - self.low) / self.intervals

    def encode(self, x: Tensor) -> Tensor:
        """Values -> long ids in [0, num_bins); values outside [low, high] go to the edge classes."""
        ids = torch.floor((x - self.low) / self.width).long()
        if self.layout == "openvla":  # digitize puts x >= high past the last edge (rounding can miss it)
            ids = torch.where(x >= self.high, self.num_bins - 1, ids)
        return ids.clamp(0, self.num_bins - 1)

    def decode(self, ids: Tensor) -> Tensor:
        """Ids -> bin centres (float32)."""
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.num_bins):
            raise ValueError(f"token ids must lie in [0, {self.num_bins}), got range [{ids.min()}, {ids.max()}]")
        return self.low + (ids.clamp_max(self.intervals - 1).float() + 0.5) * self.width

    def centres(self, device=None) -> Tensor:
        """[num_bins] the value each class decodes to."""
        return self.decode(torch.arange(self.num_bins, device=device))
