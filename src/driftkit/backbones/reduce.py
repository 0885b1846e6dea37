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
(the Backbone applies both; see Backbone.reduce_visual).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from driftkit.errors import check_choice, check_positive

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
        if not 0.0 < self.keep <= 1.0:
            raise ValueError(f"got keep={self.keep}, must be in (0, 1]")
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
        n = features.shape[0]
        k, m = self.counts(n)
        if k == n:
            return Reduced(torch.arange(n, device=features.device), features, n)
        order = self.scores(features).argsort(descending=True, stable=True)
        dominant, rest = order[:k].sort().values, order[k:].sort().values  # [k], [N - k] in raster order
        index, tokens = dominant, features[dominant]
        if m:
            targets = rest[torch.linspace(0, len(rest) - 1, m, device=features.device).round().long()]
            unit = F.normalize(features.float(), dim=-1)
            group = (unit[rest] @ unit[targets].T).argmax(-1)  # [N - k] -> which target
            group[torch.searchsorted(rest, targets)] = torch.arange(m, device=features.device)  # a target is its own
            sums = torch.zeros(m, features.shape[1], device=features.device).index_add_(0, group, features[rest].float())
            means = sums / torch.bincount(group, minlength=m).clamp_min(1)[:, None]
            index, tokens = torch.cat([dominant, targets]), torch.cat([tokens, means.to(features.dtype)])
            index, where = index.sort()
            tokens = tokens[where]
        return Reduced(index, tokens, k)


def place_reduced(inputs, features: list[Tensor], reduction: TokenReduction, image_id: int,
                  embed) -> tuple[Tensor, list[Tensor]]:
    """Reduce every image of a PrefixInputs and put its tokens in the embedded rows.

    inputs: PrefixInputs in the full layout (N_i placeholders for image i); features: one [N_i, H] per image,
    row-major (row 0's cameras first); embed: ids [B, L + Q] -> [B, L + Q, H] (the LM's input embedding).
    -> (inputs_embeds [B, L + Q, H] with each image's reduced tokens at the columns they stand at, and per
    row the prefix columns that remain: real text and the kept/merged image columns, in order)."""
    ids, l = inputs.input_ids, inputs.prefix_len
    b, chunks = ids.shape[0], iter(features)
    per_row = len(features) // b
    embeds, rows, columns = embed(ids), [], []
    for r in range(b):
        image_cols = (ids[r, :l] == image_id).nonzero().squeeze(-1)
        mine = [next(chunks) for _ in range(per_row)]
        if sum(len(f) for f in mine) != len(image_cols):
            raise ValueError(f"row {r} has {len(image_cols)} image placeholders but its images gave "
                             f"{[len(f) for f in mine]} features")
        cols, values, start = [], [], 0
        for f in mine:
            out = reduction(f)
            cols.append(image_cols[start:start + len(f)][out.index])
            values.append(out.tokens)
            start += len(f)
        cols = torch.cat(cols)
        rows.append(embeds[r].index_put((cols,), torch.cat(values).to(embeds.dtype)))
        keep = inputs.attention_mask[r, :l].bool() & (ids[r, :l] != image_id)
        keep[cols] = True
        columns.append(keep.nonzero().squeeze(-1))
    return torch.stack(rows), columns
