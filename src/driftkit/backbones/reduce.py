"""Fewer visual tokens, training-free: keep each image's dominant tokens, merge the rest by similarity.

After the vision encoder (and its connector) an image is N feature vectors in the LM's width, one per
placeholder token. VisionZip's recipe, adapted to encoders without a [CLS] token:

    dominant:   the k = round(keep * N) tokens with the highest score (max(1, .)), where the score is the
                feature's L2 norm ("norm") or the mean attention the token receives in one parameter-free
                softmax(F F^T / sqrt(H)) over the image's own features ("attention"; the encoders' attention
                weights are not returned by SDPA);
    contextual: the N - k others are split among m = min(merged, N - k) targets, evenly spaced through
                them in raster order; each other token joins the target it is most cosine-similar to, and a
                target becomes the mean of its group.

The k + m tokens leave in raster order, each standing at the column of one original token (a kept token at
its own, a merged token at its target's), so the LM's positions are read off the original layout:
Qwen's 3-D (t, h, w) positions of every kept token are unchanged and a merged token takes its target's.
Text after the image keeps its positions too; 1-D families renumber the shortened row contiguously
(the Backbone applies both; see Backbone.reduce_visual). Other features of the same tokens are reduced with
the same groups (Reduced.apply): Qwen3-VL's deepstack levels, which its first decoder layers add at the
image positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from driftkit.errors import check_choice, check_fraction, check_positive

SCORES = ("norm", "attention")


@dataclass(frozen=True)
class Reduced:
    """One image's tokens after reduction."""

    index: Tensor
    """[M] long, increasing: the original token (0..N-1) each output token stands at."""
    tokens: Tensor
    """[M, H] the output features (kept ones as they were, merged ones averaged)."""
    kept: int
    """k, the dominant tokens among the M (M - k were merged)."""
    group: Tensor
    """[N] long: the output token each original token went into (-1 = dropped)."""

    def apply(self, features: Tensor) -> Tensor:
        """The same reduction of other features of the same N tokens, [N, H'] -> [M, H'] (each output row the
        mean of the rows that went into it): e.g. Qwen3-VL's deepstack levels, reduced as the main features."""
        if features.shape[0] != len(self.group):
            raise ValueError(f"got {features.shape[0]} feature rows for a reduction of {len(self.group)} tokens")
        return _pool(features, self.group, len(self.index))


def _pool(features: Tensor, group: Tensor, m: int) -> Tensor:
    """features [N, H], group [N] (output row of each, -1 = dropped) -> [M, H] means per output row."""
    used = group >= 0
    rows = group[used]
    sums = features.new_zeros(m, features.shape[1], dtype=torch.float32).index_add_(0, rows, features[used].float())
    return (sums / torch.bincount(rows, minlength=m).clamp_min(1)[:, None]).to(features.dtype)


@dataclass(frozen=True)
class TokenReduction:
    """Keep ratio, merged count and score of a visual token reduction."""

    keep: float
    """Share of an image's N tokens kept as they are: k = max(1, round(keep * N)) (Python's round)."""
    merged: int = 4
    """Merged tokens built from the N - k others (at most N - k; 0 = drop the others)."""
    score: str = "norm"
    """"norm" or "attention" (module docstring)."""

    def __post_init__(self):
        check_fraction("keep", self.keep)
        check_positive("merged", self.merged, allow_zero=True)
        check_choice("score", self.score, SCORES)

    def counts(self, n: int) -> tuple[int, int]:
        """N tokens -> (kept k, merged m)."""
        k = min(n, max(1, round(self.keep * n)))
        return k, min(self.merged, n - k)

    def scores(self, features: Tensor) -> Tensor:
        """features [N, H] -> [N] dominance scores."""
        f = features.float()
        if self.score == "norm":
            return f.norm(dim=-1)
        attn = torch.softmax(f @ f.T / f.shape[-1] ** 0.5, dim=-1)  # [N, N], rows = queries
        return attn.mean(0)

    def __call__(self, features: Tensor) -> Reduced:
        """features [N, H] of one image -> its Reduced tokens."""
        n, dev = features.shape[0], features.device
        k, m = self.counts(n)
        if k == n:
            every = torch.arange(n, device=dev)
            return Reduced(every, features, n, every)
        order = self.scores(features).argsort(descending=True, stable=True)
        dominant, rest = order[:k].sort().values, order[k:].sort().values  # [k], [N - k] in raster order
        owner = torch.full((n,), -1, dtype=torch.long, device=dev)  # the original token each one goes into
        owner[dominant], index = dominant, dominant
        if m:
            targets = rest[torch.linspace(0, len(rest) - 1, m, device=dev).round().long()]
            unit = F.normalize(features.float(), dim=-1)
            owner[rest] = targets[(unit[rest] @ unit[targets].T).argmax(-1)]  # the most similar target
            owner[targets] = targets  # a target is its own
            index = torch.cat([dominant, targets]).sort().values
        group = torch.where(owner >= 0, torch.searchsorted(index, owner.clamp_min(0)), -1)
        return Reduced(index, _pool(features, group, len(index)), k, group)


def reduce_images(inputs, features: list[Tensor], reduction: TokenReduction, image_id: int
                  ) -> tuple[list[Reduced], list[Tensor], list[Tensor]]:
    """Reduce every image of a PrefixInputs in the full layout (N_i placeholders for image i); features: one
    [N_i, H] per image, row-major (row 0's cameras first).
    -> (per image its Reduced, per row the columns its images' output tokens stand at, per row the prefix
    columns that remain: real text and those image columns, in order)."""
    ids, l = inputs.input_ids, inputs.prefix_len
    b, chunks = ids.shape[0], iter(features)
    per_row = len(features) // b
    reduced, image_columns, columns = [], [], []
    for r in range(b):
        image_cols = (ids[r, :l] == image_id).nonzero().squeeze(-1)
        mine = [next(chunks) for _ in range(per_row)]
        if sum(len(f) for f in mine) != len(image_cols):
            raise ValueError(f"row {r} has {len(image_cols)} image placeholders but its images gave "
                             f"{[len(f) for f in mine]} features")
        cols, start = [], 0
        for f in mine:
            reduced.append(reduction(f))
            cols.append(image_cols[start:start + len(f)][reduced[-1].index])
            start += len(f)
        cols = torch.cat(cols)
        keep = inputs.attention_mask[r, :l].bool() & (ids[r, :l] != image_id)
        keep[cols] = True
        image_columns.append(cols)
        columns.append(keep.nonzero().squeeze(-1))
    return reduced, image_columns, columns


def place_reduced(inputs, features: list[Tensor], reduction: TokenReduction, image_id: int,
                  embed) -> tuple[Tensor, list[Tensor]]:
    """Reduce every image (reduce_images) and put its tokens in the embedded rows; embed: ids [B, L + Q] ->
    [B, L + Q, H] (the LM's input embedding).
    -> (inputs_embeds [B, L + Q, H] with each image's reduced tokens at the columns they stand at, and per
    row the prefix columns that remain)."""
    reduced, image_columns, columns = reduce_images(inputs, features, reduction, image_id)
    embeds, per_row = embed(inputs.input_ids), len(features) // inputs.input_ids.shape[0]
    rows = []
    for r, (row, cols) in enumerate(zip(embeds, image_columns)):
        tokens = torch.cat([x.tokens for x in reduced[r * per_row:(r + 1) * per_row]])
        rows.append(row.index_put((cols,), tokens.to(row.dtype)))
    return torch.stack(rows), columns
