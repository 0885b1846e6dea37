"""The action block: S = 1 + T * D positions after a VLM's image + text prefix, refined in place (DFM-VLA).

    [pad.. | images | prompt | q | a_1 .. a_P]     q: one slot carrying the flow time t (and the state)
                                                   a_p: action-bin tokens (ids of the LM-head rows lm_tokens uses)

Attention (4-D additive float masks [N, 1, S_q, S_k]: 0 = attend, the dtype's minimum = not; transformers'
mask builder passes a 4-D mask through unchanged to eager and SDPA attention): the prefix attends as the family's
own prefix pass does (causally over real tokens; PaliGemma's prefix bidirectionally, Family.prefix_lm) and never
sees the block; every block position sees the real prefix and the whole block, in both directions.

Passes (all read the final hidden state, after the LM's norm, which is what the LM head reads):
    uncached_states         one forward over [prefix | block] (differentiable; the reference)
    cached_block_states     block positions only, over a BlockCache holding the prefix keys/values once
    BlockPosterior          p_{1|t} for driftkit.flow.discrete.ctmc_euler, with cache "none" / "prefix" / "adaptive"

Adaptive rule (cache="adaptive", refresh_every = r): a pass runs on the t slot and the block positions whose
token changed since the previous pass (the row with most changes sets the count; other rows fill up with
unchanged positions, which are then refreshed too), writing their keys/values into the cache slots in place;
the unchanged positions keep their keys/values and their posterior from the last pass that ran them. The time
enters through the t slot alone, so an unchanged token's layer-0 keys/values are exact; its deeper keys/values
and its posterior are stale (computed when its neighbours, and t, were different), since bidirectional attention
lets every token reach every position's hidden state. Calls 0, r, 2r, ... (validation steps counted alike) run
the whole block, which removes the staleness; r = 1 is exact. A call where no token of any row changed runs no
pass and returns the previous posterior.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer

from driftkit.backbones.backbone import Backbone, PrefixState
from driftkit.backbones.inputs import PrefixInputs
from driftkit.errors import check_choice, check_positive

CACHE_MODES = ("none", "prefix", "adaptive")


def bin_vocab_ids(backbone: Backbone, num_bins: int, layout: str) -> Tensor:
    """[num_bins] LM vocabulary ids of the bins in class order (Backbone.bin_ids, the rows lm_head_rows reads).
    Ids of special, added or query tokens are refused: a bin fed back as an input would be read as an image
    placeholder or a query token."""
    ids = backbone.bin_ids(num_bins, layout)
    tok = backbone.tokenizer
    reserved = set(tok.all_special_ids) | set(tok.added_tokens_decoder) | set(backbone.special_ids.values())
    clash = sorted(reserved.union(backbone.query_ids).intersection(ids.tolist()))
    if int(ids.min()) < 0 or clash:
        why = f"special/query token ids {clash[:6]}" if clash else "negative ids"
        raise ValueError(f"num_bins={num_bins} with bin_layout={layout!r} puts the bins on {why} of the "
                         f"{backbone.family.name} vocabulary (base_vocab={backbone.base_vocab}, tokenizer "
                         f"vocab_size={tok.vocab_size}); use fewer bins or the other bin_layout")
    return ids


# ---- masks and positions ------------------------------------------------------------------------------------
def _additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def block_rows_mask(prefix_mask: Tensor, queries: int, slots: int, dtype: torch.dtype) -> Tensor:
    """prefix_mask [N, L] bool (True = real) -> [N, 1, queries, L + slots]: block queries see the real prefix
    and every block slot."""
    allowed = torch.cat([prefix_mask, prefix_mask.new_ones(prefix_mask.shape[0], slots)], 1)
    return _additive(allowed[:, None, None, :].expand(-1, 1, queries, -1), dtype)


def full_mask(prefix_mask: Tensor, slots: int, prefix_lm: bool, dtype: torch.dtype) -> Tensor:
    """prefix_mask [N, L] -> [N, 1, L + S, L + S] for one pass over [prefix | block]: prefix rows as the family's
    prefix pass (causal, or bidirectional when prefix_lm), blind to the block; block rows as block_rows_mask.
    Padded prefix rows see nothing (uniform attention, no NaN, and no real row reads them)."""
    n, l = prefix_mask.shape
    i = torch.arange(l, device=prefix_mask.device)
    order = torch.ones(l, l, dtype=torch.bool, device=i.device) if prefix_lm else i[None, :] <= i[:, None]
    prefix_rows = prefix_mask[:, None, :] & order[None] & prefix_mask[:, :, None]  # [N, L, L]
    prefix_rows = torch.cat([prefix_rows, prefix_rows.new_zeros(n, l, slots)], 2)
    block_rows = torch.cat([prefix_mask, prefix_mask.new_ones(n, slots)], 1)[:, None].expand(-1, slots, -1)
    return _additive(torch.cat([prefix_rows, block_rows], 1)[:, None], dtype)


def block_positions(inputs: PrefixInputs, slots: int) -> Tensor:
    """[..., B, S] position ids of the block: the prefix's last position + 1 .. + S ([3, B, S] for mrope)."""
    last = inputs.position_ids[..., inputs.prefix_len - 1:inputs.prefix_len]
    return last + torch.arange(1, slots + 1, device=last.device)


# ---- the cache -----------------------------------------------------------------------------------------------
class BlockCache(Cache):
    """A transformers Cache holding, per layer, one buffer [N, kv_heads, L + S, head_dim]: the prefix
    keys/values (copied once, rows repeated for K samples) followed by S block slots. The attention layers
    call update(); it writes the block slots of the current pass in place (`index` [N, m]: which slots the m
    queries are; None = all S in order) and returns the whole buffer, so keys line up with the mask's columns
    [prefix | slot 0 .. S - 1]."""

    def __init__(self, prefix: PrefixState, slots: int, repeats: int = 1):
        if prefix.copies != 1:
            raise ValueError(f"the prefix holds {prefix.copies} copies per row; a block cache repeats rows itself")
        layers = []
        for src in prefix.cache.layers:
            layer = DynamicLayer()
            layer.keys, layer.values = (self._buffer(x.repeat_interleave(repeats, 0), slots)
                                        for x in (src.keys, src.values))
            layer.is_initialized = True
            layers.append(layer)
        super().__init__(layers=layers)
        self.prefix_len = prefix.cache.layers[0].keys.shape[2]
        self.slots = slots
        self.index: Tensor | None = None

    @staticmethod
    def _buffer(x: Tensor, slots: int) -> Tensor:
        n, h, l, d = x.shape
        buf = x.new_zeros(n, h, l + slots, d)
        buf[:, :, :l] = x
        return buf

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        layer, l = self.layers[layer_idx], self.prefix_len
        for buf, new in ((layer.keys, key_states), (layer.values, value_states)):
            if self.index is None:
                buf[:, :, l:] = new
            else:
                idx = (l + self.index)[:, None, :, None].expand(-1, new.shape[1], -1, new.shape[3])
                buf.scatter_(2, idx, new)
        return layer.keys, layer.values


# ---- passes --------------------------------------------------------------------------------------------------
def uncached_states(backbone: Backbone, inputs: PrefixInputs, embeds: Tensor) -> Tensor:
    """One forward over [prefix | block]: embeds [B, S, H] block input embeddings -> [B, L + S, H] final states
    (the block's are [:, L:]). The prefix enters as embeddings too (placeholders are found by their
    embedding), with the images."""
    l, s = inputs.prefix_len, embeds.shape[1]
    prefix_embeds = backbone.model.get_input_embeddings()(inputs.input_ids[:, :l])
    x = torch.cat([prefix_embeds, embeds.to(prefix_embeds.dtype)], 1)
    pos = torch.cat([inputs.position_ids[..., :l], block_positions(inputs, s)], -1)
    mask = full_mask(inputs.attention_mask[:, :l].bool(), s, backbone.family.prefix_lm, x.dtype)
    out = backbone.model.model(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=False,
                               **inputs.vision)
    return out.last_hidden_state


def cached_block_states(backbone: Backbone, cache: BlockCache, embeds: Tensor, positions: Tensor,
                        prefix_mask: Tensor, index: Tensor | None = None) -> Tensor:
    """embeds [N, m, H] of block slots `index` [N, m] (None: all S slots in order), positions [..., N, m],
    prefix_mask [N, L] -> [N, m, H] final states; their keys/values are written into the cache's slots."""
    mask = block_rows_mask(prefix_mask, embeds.shape[1], cache.slots, embeds.dtype)
    cache.index = index
    try:
        out = backbone.model.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache,
                                   use_cache=True)
    finally:
        cache.index = None
    return out.last_hidden_state


# ---- the posterior -------------------------------------------------------------------------------------------
@dataclass
class BlockContext:
    """What a refinement of N = B * K rows runs over: the repeated prefix, cached or not."""

    prefix_mask: Tensor  # [N, L] bool
    positions: Tensor  # [..., N, S] block position ids
    inputs: PrefixInputs | None = None  # cache="none": the N rows laid out for uncached passes
    cache: BlockCache | None = None  # otherwise


@dataclass
class RefinementStats:
    """Work done by one refinement (positions counted over all N rows' slots, t slot included)."""

    calls: int = 0
    """Posterior evaluations ctmc_euler asked for (steps + validation steps)."""
    passes: int = 0
    """LM passes run (a call where nothing changed runs none under the adaptive cache)."""
    full_passes: int = 0
    """Passes over the whole block."""
    slots_run: int = 0
    """Block slots computed per row, summed over passes (S per full pass)."""
    trace: list[Tensor] = field(default_factory=list, repr=False)
    """The posterior of every call ([N, T, D, V]), when recorded."""


class BlockPosterior:
    """posterior(x [N, T, D] ids, t [N]) -> p_{1|t} [N, T, D, V] for ctmc_euler (see the module docstring).

    embed(x [N, P] ids, t [N]) -> [N, S, H] block input embeddings (t slot first); head(states [N, m, H]) ->
    [N, m, V] bin logits."""

    def __init__(self, backbone: Backbone, context: BlockContext, embed: Callable, head: Callable,
                 cache: str = "prefix", refresh_every: int = 1, record: bool = False):
        check_choice("cache", cache, CACHE_MODES)
        check_positive("refresh_every", refresh_every)
        if (cache == "none") != (context.inputs is not None):
            raise ValueError(f"cache={cache!r} needs a context {'with' if cache == 'none' else 'without'} inputs")
        self.backbone, self.context, self.embed, self.head = backbone, context, embed, head
        self.mode, self.refresh_every, self.record = cache, refresh_every, record
        self.stats = RefinementStats()
        self.last: Tensor | None = None  # [N, P] tokens of the last pass
        self.logits: Tensor | None = None  # [N, P, V] the posterior's logits of every position

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        flat = x.flatten(1)
        full = self.mode != "adaptive" or self.stats.calls % self.refresh_every == 0
        self.logits = self._full(flat, t) if full else self._changed(flat, t)
        self.last = flat
        self.stats.calls += 1
        probs = self.logits.float().softmax(-1).view(*x.shape, -1)
        if self.record:
            self.stats.trace.append(probs)
        return probs

    def _full(self, flat: Tensor, t: Tensor) -> Tensor:
        ctx, embeds = self.context, self.embed(flat, t)
        if ctx.inputs is not None:
            states = uncached_states(self.backbone, ctx.inputs, embeds)[:, ctx.inputs.prefix_len:]
        else:
            states = cached_block_states(self.backbone, ctx.cache, embeds, ctx.positions, ctx.prefix_mask)
        self._count(embeds.shape[1], full=True)
        return self.head(states[:, 1:])

    def _changed(self, flat: Tensor, t: Tensor) -> Tensor:
        changed = flat != self.last  # [N, P]
        m = int(changed.sum(1).max())
        if m == 0:
            return self.logits
        order = torch.sort(changed.int(), dim=1, descending=True, stable=True).indices[:, :m]  # changed first
        slots = torch.cat([order.new_zeros(order.shape[0], 1), order + 1], 1)  # the t slot always runs
        embeds = self.embed(flat, t)
        sub = embeds.gather(1, slots[..., None].expand(-1, -1, embeds.shape[-1]))
        ctx = self.context
        pos = ctx.positions.gather(-1, slots.expand(*ctx.positions.shape[:-1], -1))
        states = cached_block_states(self.backbone, ctx.cache, sub, pos, ctx.prefix_mask, index=slots)
        self._count(m + 1, full=False)
        new = self.head(states[:, 1:]).to(self.logits.dtype)
        return self.logits.scatter(1, order[..., None].expand(-1, -1, new.shape[-1]), new)

    def _count(self, slots: int, full: bool) -> None:
        self.stats.passes += 1
        self.stats.full_passes += int(full)
        self.stats.slots_run += slots
