"""lm_tokens: the VLM's own discrete interface as a decoder (OpenVLA-style action tokens).

Uniform bins over the normalised range [-1, 1] are mapped onto the top N ids of the LM vocabulary. Default
(bin_layout="centres"): N intervals, bin i is id V - N + i with V the LM head's rows before the query tokens
were added. bin_layout="openvla" is OpenVLA's exact layout: N edges (N - 1 intervals) and the descending id
V - 1 - i with V the tokenizer's vocab_size (OpenVLA's head, read without mirroring its actions). The network is
those N rows of the LM head, applied to the query-token states: position p of the flattened chunk (T * D
values, time-major) reads state p of the last T * D states of cond, plus a learned per-position offset
(zero at initialisation, so an untrained decoder is exactly the LM head). All values are decoded in
parallel in one pass, not autoregressively (OpenVLA decodes them one token at a time).

cond: [B, L, H] states whose last T * D rows are the query tokens (a VLM policy's query or context cond), or
[B, H] (one state shared by every position). Only those last T * D rows are read, and they are always real, so
cond_mask (the prefix's padding) changes nothing here; it is accepted like every decoder's, and refused if it
marks one of the rows read as padding. `VLMPolicy` copies the LM head rows in (init_from_lm_head);
the copy then trains with the decoder (the backbone's own head is left as it is).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from driftkit.decoders.registry import register_decoder
from driftkit.decoders.tokens import BinDecoder, TokensConfig
from driftkit.errors import check_shape


@register_decoder
class LMTokensDecoder(BinDecoder):
    name = "lm_tokens"
    summary = "the VLM's LM head over query-token states, bins on the last N vocab ids (OpenVLA), parallel; 1 NFE"

    def __init__(self, config: TokensConfig):
        super().__init__(config)
        positions = config.horizon * config.dim
        self.head = nn.Linear(config.cond_dim, config.num_bins)  # [N, H] rows of the LM head
        self.offset = nn.Parameter(torch.zeros(positions, config.cond_dim))  # [T * D, H]

    def load_lm_head(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """Copy the LM head rows of the bin ids, in class order: weight [N, H], bias [N] or None (see
        vocab_ids for which id each class is)."""
        check_shape("weight", weight, (self.config.num_bins, self.config.cond_dim), " (num_bins, cond_dim)")
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias if bias is not None else torch.zeros_like(self.head.bias))

    def init_from_lm_head(self, lm_head_rows) -> None:
        self.load_lm_head(*lm_head_rows(self.config.num_bins, layout=self.config.bin_layout))

    def vocab_ids(self, bin_ids: Tensor, vocab_size: int) -> Tensor:
        """Bin indices -> LM vocabulary ids: V - N + i ("centres", V = the LM head's rows before the query
        tokens) or V - 1 - i ("openvla", V = the tokenizer's vocab_size, as OpenVLA counts it)."""
        if self.config.bin_layout == "openvla":
            return (vocab_size - 1) - bin_ids
        return bin_ids + (vocab_size - self.config.num_bins)

    def logits(self, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor:
        """cond [B, L, H] or [B, H] (cond_mask [B, L] or None; only the last T * D rows are read) ->
        [B, T, D, num_bins]."""
        t, d = self.config.target_shape
        p = t * d
        if cond.dim() == 2:
            states = cond[:, None].expand(-1, p, -1)
        elif cond.shape[1] >= p:
            states = cond[:, -p:]
            if cond_mask is not None and not bool(cond_mask[:, -p:].all()):
                raise ValueError(f"lm_tokens reads the last T * D = {p} rows of cond {list(cond.shape)} (the query "
                                 f"states), but cond_mask {list(cond_mask.shape)} marks some of them as padding")
        else:
            raise ValueError(f"lm_tokens reads one query state per value: cond has {cond.shape[1]} states, "
                             f"need at least T * D = {p} (use num_query_tokens >= {p})")
        return self.head(states + self.offset).view(cond.shape[0], t, d, self.config.num_bins)
