"""Tokens: per-position classification over uniform bins (OpenVLA), decoded to bin centres.

Targets are quantile-normalised to [-1, 1] by default, so the bins cover the data's 1st-99th percentile.
All positions are predicted in parallel from one network evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from driftkit.decoders.base import Decoder, DecoderConfig, DecoderLoss
from driftkit.decoders.registry import register_decoder
from driftkit.errors import check_choice, check_positive
from driftkit.ops import masked_mean
from driftkit.tokenizers import UniformBins
from driftkit.tokenizers.bins import LAYOUTS


@dataclass
class TokensConfig(DecoderConfig):
    num_bins: int = 256
    """Classes over the normalised range [-1, 1]."""
    bin_layout: str = "centres"
    """centres (default): num_bins equal intervals; openvla: OpenVLA's num_bins edges (num_bins - 1 intervals),
    and for lm_tokens its descending vocabulary ids V - 1 - i with V the tokenizer's vocab_size
    (driftkit.tokenizers.bins)."""
    temperature: float = 0.0
    """Default (override per call with `temperature=`): 0 decodes the most likely bin; > 0 samples bins
    independently per position at this temperature."""

    def __post_init__(self):
        super().__post_init__()
        check_positive("num_bins", self.num_bins)
        check_choice("bin_layout", self.bin_layout, LAYOUTS)
        check_positive("temperature", self.temperature, allow_zero=True)


class BinDecoder(Decoder):
    """Per-position classification over uniform bins; subclasses define
    `logits(cond, cond_mask=None) -> [B, T, D, num_bins]`."""

    config_class = TokensConfig
    default_normalization = "quantile"

    def __init__(self, config: TokensConfig):
        super().__init__(config)
        self.bins = UniformBins(config.num_bins, layout=config.bin_layout)

    def logits(self, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def _loss(self, cond: Tensor, x_1: Tensor, mask: Tensor, cond_mask: Tensor | None = None) -> DecoderLoss:
        logits, ids = self.logits(cond, cond_mask), self.bins.encode(x_1)
        ce = F.cross_entropy(logits.flatten(0, 2), ids.flatten(), reduction="none").view_as(x_1)
        loss = masked_mean(ce, mask)
        acc = masked_mean((logits.argmax(-1) == ids).float(), mask)
        return DecoderLoss(loss, {"loss": loss.item(), "token_acc": acc.item()})

    def _sample(self, cond: Tensor, k: int, steps, generator, temperature: float, cond_mask=None) -> Tensor:
        logits = self.logits(cond, cond_mask)  # [B, T, D, V], computed once for the K samples
        if temperature == 0:
            ids = logits.argmax(-1).unsqueeze(1).expand(-1, k, -1, -1)
        else:
            probs = F.softmax(logits.float() / temperature, dim=-1)
            flat = probs.unsqueeze(1).expand(-1, k, -1, -1, -1).reshape(-1, probs.shape[-1])
            ids = torch.multinomial(flat, 1, generator=generator).view(cond.shape[0], k, *logits.shape[1:3])
        return self.bins.decode(ids).to(logits.dtype)

    def nfe(self, steps: int | None = None) -> int:
        return 1


@register_decoder
class TokensDecoder(BinDecoder):
    name = "tokens"
    summary = "classification over uniform bins (OpenVLA), decoded to bin centres; 1 NFE"

    def __init__(self, config: TokensConfig):
        super().__init__(config)
        self.net = self._net(in_dim=0, out_dim=config.dim * config.num_bins, use_time=False)

    def logits(self, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor:
        """cond [B, C] or [B, L, C] (cond_mask [B, L] or None) -> [B, T, D, num_bins]."""
        t, d = self.config.target_shape
        return self.net(cond, cond_mask=cond_mask).view(cond.shape[0], t, d, self.config.num_bins)
