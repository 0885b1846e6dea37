"""lm_tokens: the VLM's own discrete interface as a decoder (OpenVLA-style action tokens).

Uniform bins over the normalised range [-1, 1] are mapped onto the last N ids of the LM vocabulary: bin i is
vocabulary id V - N + i (V = the model's vocabulary before the query tokens were added). The network is
those N rows of the LM head, applied to the query-token states: position p of the flattened chunk (T * D
values, time-major) reads state p of the last T * D states of cond, plus a learned per-position offset
(zero at initialisation, so an untrained decoder is exactly the LM head). All values are decoded in
parallel in one pass, not autoregressively (OpenVLA decodes them one token at a time).

cond: [B, L, H] states whose last T * D rows are the query tokens (VLMFeatures.query or .context), or
[B, H] (one state shared by every position). `VLMPolicy` copies the LM head rows in with `load_lm_head`;
the copy then trains with the decoder (the backbone's own head is left as it is).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from driftkit.decoders.base import Decoder, DecoderConfig, DecoderLoss
from driftkit.decoders.registry import register_decoder
from driftkit.errors import check_positive, check_shape
from driftkit.ops import masked_mean
from driftkit.tokenizers import UniformBins


@dataclass
class LMTokensConfig(DecoderConfig):
    num_bins: int = 256
    """N uniform bins over [-1, 1], i.e. the last N ids of the LM vocabulary."""
    temperature: float = 0.0
    """0 decodes the most likely bin; > 0 samples each position's bin at this temperature."""

    def __post_init__(self):
        super().__post_init__()
        check_positive("num_bins", self.num_bins)
        check_positive("temperature", self.temperature, allow_zero=True)


@register_decoder
class LMTokensDecoder(Decoder):
    name = "lm_tokens"
    summary = "the VLM's LM head over query-token states, bins on the last N vocab ids (OpenVLA), parallel; 1 NFE"
    config_class = LMTokensConfig
    default_normalization = "quantile"

    def __init__(self, config: LMTokensConfig):
        super().__init__(config)
        self.bins = UniformBins(config.num_bins)
        positions = config.horizon * config.dim
        self.head = nn.Linear(config.cond_dim, config.num_bins)  # [N, H] rows of the LM head
        self.offset = nn.Parameter(torch.zeros(positions, config.cond_dim))  # [T * D, H]

    def load_lm_head(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """Copy the LM head rows of the bin ids: weight [N, H] (ids V - N .. V - 1), bias [N] or None."""
        check_shape("weight", weight, (self.config.num_bins, self.config.cond_dim), " (num_bins, cond_dim)")
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias if bias is not None else torch.zeros_like(self.head.bias))

    def vocab_ids(self, bin_ids: Tensor, vocab_size: int) -> Tensor:
        """Bin indices -> LM vocabulary ids (V - N + i)."""
        return bin_ids + (vocab_size - self.config.num_bins)

    def logits(self, cond: Tensor) -> Tensor:
        """cond [B, L, H] or [B, H] -> [B, T, D, num_bins]."""
        t, d = self.config.target_shape
        p = t * d
        if cond.dim() == 2:
            states = cond[:, None].expand(-1, p, -1)
        elif cond.shape[1] >= p:
            states = cond[:, -p:]
        else:
            raise ValueError(f"lm_tokens reads one query state per value: cond has {cond.shape[1]} states, "
                             f"need at least T * D = {p} (use num_query_tokens >= {p})")
        return self.head(states + self.offset).view(cond.shape[0], t, d, self.config.num_bins)

    def _loss(self, cond: Tensor, x_1: Tensor, mask: Tensor) -> DecoderLoss:
        logits, ids = self.logits(cond), self.bins.encode(x_1)
        ce = F.cross_entropy(logits.flatten(0, 2), ids.flatten(), reduction="none").view_as(x_1)
        loss = masked_mean(ce, mask)
        acc = masked_mean((logits.argmax(-1) == ids).float(), mask)
        return DecoderLoss(loss, {"loss": loss.item(), "token_acc": acc.item()})

    def _sample(self, cond: Tensor, k: int, steps, generator) -> Tensor:
        logits = self.logits(cond)  # [B, T, D, N]
        if self.config.temperature == 0:
            ids = logits.argmax(-1).unsqueeze(1).expand(-1, k, -1, -1)
        else:
            probs = F.softmax(logits.float() / self.config.temperature, dim=-1)
            flat = probs.unsqueeze(1).expand(-1, k, -1, -1, -1).reshape(-1, probs.shape[-1])
            ids = torch.multinomial(flat, 1, generator=generator).view(cond.shape[0], k, *logits.shape[1:3])
        return self.bins.decode(ids).to(logits.dtype)

    def nfe(self, steps: int | None = None) -> int:
        return 1
