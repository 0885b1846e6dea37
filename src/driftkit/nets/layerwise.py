"""Layer-wise action expert (SmolVLA-style): block i attends to the keys and values VLM layer i cached for the prefix.

The condition is a LayerCache: for each VLM layer the expert reads, the prefix keys and values as the VLM's
attention computed them ([B, kv_heads, L, head_dim], keys already rotated with their positions), plus the
prefix mask. It reaches the decoder packed into one tensor (`LayerCache.packed()`, [B, L, 2 * n * kv_width]
with kv_width = kv_heads * head_dim, per position the layers' [keys | values] in order), so every decoder
validates, masks and shares it like any other [B, L, C] cond; this net unpacks it with the layer count it was
built for (spec.depth = n: block i reads packed layer i).

    block i:  h += self_attention(norm(h))                 (even i: among each sample's T action tokens)
              h += cross_attention(norm(h), K_i', V_i')    K_i' = k_proj_i(K_i), V_i' = v_proj_i(V_i)
              h += mlp(norm(h))

Re-projection: as in SmolVLA, each block maps the VLM's keys and values (flattened over kv heads) through
its own linear maps to the expert's width, so the expert may be narrower than the VLM (0.75x in SmolVLA) and
needs none of the VLM's head layout. `project` does this once per observation; the S samples of an
observation then cross-attend as one query sequence of S * T tokens (as in driftkit.nets.expert).

Positions: the prefix keys keep the rotation the VLM gave them; the action tokens get learned step
embeddings and no rotation. After the re-projection mixes the rotated pairs, a rotation of the expert's
queries would no longer meet the keys' rotation in a relative-position form, so it would carry no exact
meaning (SmolVLA applies one anyway, from position 0); learned steps are family-independent and are what the
light expert uses, so both experts share one convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from driftkit.nets.attention import StepTokenExpert, folded_cross_attention, split_heads
from driftkit.nets.base import NetSpec, register_net


@dataclass(frozen=True, eq=False)
class LayerCache:
    """The prefix keys and values of the VLM layers an expert reads, for B observations."""

    keys: tuple[Tensor, ...]
    """Per layer read, [B, kv_heads, L, head_dim] (rotated with their positions, as the VLM cached them)."""
    values: tuple[Tensor, ...]
    """Per layer read, [B, kv_heads, L, head_dim]."""
    mask: Tensor
    """[B, L] bool, True at real prefix positions (the prefix is left padded)."""

    def __post_init__(self):
        if not self.keys or len(self.keys) != len(self.values):
            raise ValueError(f"a LayerCache needs one value tensor per key tensor and at least one layer, got "
                             f"{len(self.keys)} keys and {len(self.values)} values")
        shape = tuple(self.keys[0].shape)
        bad = [tuple(x.shape) for x in (*self.keys, *self.values) if tuple(x.shape) != shape]
        if len(shape) != 4 or bad:
            raise ValueError(f"LayerCache keys and values must all be [B, kv_heads, L, head_dim] of one shape; got "
                             f"{shape} and {bad[:2]}")
        if tuple(self.mask.shape) != (shape[0], shape[2]) or self.mask.dtype != torch.bool:
            raise ValueError(f"LayerCache mask must be [B, L] = {[shape[0], shape[2]]} bool, got shape "
                             f"{list(self.mask.shape)} dtype {self.mask.dtype}")

    @property
    def rows(self) -> int:
        """B, the observations."""
        return self.keys[0].shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype

    @property
    def device(self) -> torch.device:
        return self.keys[0].device

    @property
    def width(self) -> int:
        """Channels per position of packed(): 2 * layers * kv_heads * head_dim."""
        _, heads, _, dim = self.keys[0].shape
        return 2 * len(self.keys) * heads * dim

    def packed(self) -> Tensor:
        """-> [B, L, width]: per position, each layer's keys then values, flattened over kv heads."""
        flat = lambda x: x.transpose(1, 2).flatten(2)  # noqa: E731  [B, kvh, L, hd] -> [B, L, kvh * hd]
        return torch.cat([flat(x) for kv in zip(self.keys, self.values) for x in kv], dim=-1)


def unpack_layers(cond: Tensor, layers: int) -> Tensor:
    """packed cond [B, L, 2 * layers * kv_width] -> [B, L, layers, 2, kv_width] (index 0 keys, 1 values)."""
    b, l, c = cond.shape
    return cond.view(b, l, layers, 2, c // (2 * layers))


class LayerwiseBlock(nn.Module):
    def __init__(self, width: int, kv_width: int, heads: int, self_attention: bool):
        super().__init__()
        self.heads = heads
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True) if self_attention else None
        self.norm_self = nn.LayerNorm(width) if self_attention else None
        self.norm_cross, self.norm_ff = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q_proj, self.o_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.k_proj, self.v_proj = nn.Linear(kv_width, width), nn.Linear(kv_width, width)  # VLM K/V -> expert
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def keys_values(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """The VLM layer's keys, values [B, L, kv_width] -> re-projected [B, heads, L, W / heads] each."""
        return split_heads(self.k_proj(keys), self.heads), split_heads(self.v_proj(values), self.heads)

    def cross(self, x: Tensor, keys: Tensor, values: Tensor, keep: Tensor | None, samples: int) -> Tensor:
        """x [B * S, T, W] normed queries; keys, values [B, heads, L, W / heads]; keep [B, 1, 1, L] bool or None
        -> [B * S, T, W]. The S samples of an observation form one query sequence against the shared keys."""
        return self.o_proj(folded_cross_attention(self.q_proj(x), keys, values, keep, samples))

    def forward(self, h: Tensor, keys: Tensor, values: Tensor, keep: Tensor | None, samples: int) -> Tensor:
        """h [B * S, T, W]; keys, values [B, heads, L, W / heads]; keep [B, 1, 1, L] bool or None."""
        if self.self_attn is not None:
            x = self.norm_self(h)
            h = h + self.self_attn(x, x, x, need_weights=False)[0]
        h = h + self.cross(self.norm_cross(h), keys, values, keep, samples)
        return h + self.ff(self.norm_ff(h))


@register_net("layerwise_expert")
class LayerwiseExpertNet(StepTokenExpert):
    """T step tokens; block i cross-attends to VLM layer i's prefix keys/values (cond = LayerCache.packed())."""

    name = "layerwise_expert"

    def __init__(self, spec: NetSpec):
        if spec.cond_dim % (2 * spec.depth):
            raise ValueError(f"net 'layerwise_expert' reads one VLM layer's keys and values per block: cond_dim="
                             f"{spec.cond_dim} must be 2 * depth * kv_width with depth={spec.depth} "
                             "(cond = LayerCache.packed() of depth layers)")
        self.kv_width = spec.cond_dim // (2 * spec.depth)  # a plain int: set before Module.__init__
        super().__init__(spec)

    def build_blocks(self, width: int, heads: int) -> nn.ModuleList:
        # self-attention among the action tokens in every second block, from the first (SmolVLA's interleaving)
        return nn.ModuleList([LayerwiseBlock(width, self.kv_width, heads, i % 2 == 0)
                              for i in range(self.spec.depth)])

    def project(self, cond: Tensor, cond_mask: Tensor | None) -> tuple:
        """cond [B, L, 2 * depth * kv_width] packed layer cache, cond_mask [B, L] bool or None -> (keep
        [B, 1, 1, L] bool or None, then each block's re-projected keys and values [B, heads, L, W / heads])."""
        spec = self.spec
        if cond.dim() != 3 or cond.shape[-1] != spec.cond_dim:
            raise ValueError(f"net 'layerwise_expert' takes a packed layer cache cond [N, L, C] with C={spec.cond_dim}"
                             f" (2 * {spec.depth} layers * kv_width {self.kv_width}), got shape {list(cond.shape)}")
        if cond_mask is not None and (cond_mask.shape != cond.shape[:2] or cond_mask.dtype != torch.bool):
            raise ValueError(f"net 'layerwise_expert' takes cond_mask [N, L] = {list(cond.shape[:2])} bool, got shape"
                             f" {list(cond_mask.shape)} dtype {cond_mask.dtype}")
        layers = unpack_layers(cond, spec.depth)  # [B, L, depth, 2, kv_width]
        keep = None if cond_mask is None else cond_mask[:, None, None, :]
        kv = [block.keys_values(layers[:, :, i, 0], layers[:, :, i, 1]) for i, block in enumerate(self.blocks)]
        return (keep, *(x for pair in kv for x in pair))
