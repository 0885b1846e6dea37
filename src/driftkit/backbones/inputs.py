"""Model inputs from images and prompts: checks, camera lists, the PrefixInputs of a batch.

Prompts are left-padded so every row's prefix ends in the same column; the query tokens then sit at the
same columns in every row, which lets one cached suffix pass serve the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor


@dataclass
class PrefixInputs:
    """Everything a forward pass over [prefix | queries] needs."""

    input_ids: Tensor  # [B, L + Q] left-padded prefix then the query tokens
    attention_mask: Tensor  # [B, L + Q] 1 = real token
    position_ids: Tensor  # [B, L + Q], or [3, B, L + Q] for Qwen's 3-D rotary positions
    prefix_len: int  # L
    vision: dict  # pixel_values and the family's extra image tensors ({} once inputs_embeds holds the images)
    extra: dict  # per-token tensors the model needs (mm_token_type_ids / token_type_ids), [B, L + Q]
    inputs_embeds: Tensor | None = None  # [B, L + Q, H] with the image features in place (visual reduction)

    def _tokens(self, cols: slice) -> dict:
        if self.inputs_embeds is None:
            return dict(input_ids=self.input_ids[:, cols], **self.vision)
        return dict(inputs_embeds=self.inputs_embeds[:, cols])

    def prefix_kwargs(self) -> dict:
        """Arguments of the prefix pass (columns [0, L))."""
        l = self.prefix_len
        extra = {k: v[:, :l] for k, v in self.extra.items()}
        return dict(**self._tokens(slice(0, l)), attention_mask=self.attention_mask[:, :l],
                    position_ids=self.position_ids[..., :l], **extra)

    def full_kwargs(self) -> dict:
        return dict(**self._tokens(slice(None)), attention_mask=self.attention_mask,
                    position_ids=self.position_ids, **self.extra)

    def regather(self, columns: list[Tensor], pad_id: int, position_offset: int | None,
                 length: int | None = None) -> "PrefixInputs":
        """A new left-padded layout: row r's prefix is its columns columns[r] (old indices, in order), then the
        same query tokens. length: the new L (None = the longest row). Positions are gathered with the
        columns (3-D ones; padding gets 1) or, with position_offset given, renumbered from the new mask."""
        b, l, q = self.input_ids.shape[0], self.prefix_len, self.input_ids.shape[1] - self.prefix_len
        new_l = max(len(c) for c in columns) if length is None else length
        if max(len(c) for c in columns) > new_l:
            raise ValueError(f"a prefix of {max(len(c) for c in columns)} tokens does not fit length={new_l}")
        dev = self.input_ids.device
        src = torch.full((b, new_l + q), -1, dtype=torch.long, device=dev)  # old column per new one, -1 = pad
        for r, c in enumerate(columns):
            src[r, new_l - len(c):new_l] = c
        src[:, new_l:] = torch.arange(l, l + q, device=dev)
        real, at = src >= 0, src.clamp_min(0)

        def take(x: Tensor, fill) -> Tensor:  # x [B, L + Q, ...] -> [B, new_l + Q, ...]
            index = at.view(b, -1, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
            keep = real.view(b, -1, *([1] * (x.dim() - 2)))
            return torch.where(keep, x.gather(1, index), torch.as_tensor(fill, dtype=x.dtype, device=dev))

        mask = real.to(self.attention_mask.dtype)
        if position_offset is None:
            pos = torch.stack([take(p, 1) for p in self.position_ids])  # [3, B, new_l + Q]
        else:
            pos = (mask.cumsum(-1) - 1).clamp_min(0) + position_offset
        embeds = None if self.inputs_embeds is None else take(self.inputs_embeds, 0.0)
        return PrefixInputs(take(self.input_ids, pad_id), mask, pos, new_l, self.vision,
                            {k: take(v, 0) for k, v in self.extra.items()}, embeds)


def to_uint8(image, where: str, min_side: int, family: str, device=None) -> Tensor:
    """PIL image, uint8 array [H, W, 3], or tensor [3, H, W] / [H, W, 3] (uint8, or float in [0, 1]) ->
    uint8 tensor [3, H, W] on `device` (None = where a tensor already is; arrays and PIL images start on the
    CPU and travel as uint8). Floats become round(x * 255). `where` names the image in errors."""
    if isinstance(image, Image.Image):
        t = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).to(device)
    elif isinstance(image, (np.ndarray, Tensor)):
        t = image.detach() if isinstance(image, Tensor) else torch.from_numpy(np.ascontiguousarray(image))
        if isinstance(image, Tensor) and t.ndim == 3 and t.shape[0] == 3:
            pass  # [3, H, W] already
        elif t.ndim == 3 and t.shape[-1] == 3:
            t = t.permute(2, 0, 1)
        else:
            raise ValueError(f"{where} has shape {list(image.shape)}; expected an array [H, W, 3] or a tensor "
                             "[3, H, W]")
        t = t.to(device) if device is not None else t
        if t.dtype != torch.uint8:
            if not t.is_floating_point() or bool(t.min() < 0) or bool(t.max() > 1):
                dtype = str(image.dtype).removeprefix("torch.")
                raise ValueError(f"{where} has dtype {dtype}; expected uint8, or floats in [0, 1]")
            t = (t * 255).round().to(torch.uint8)
    else:
        raise TypeError(f"{where} has type {type(image).__name__}; expected a PIL.Image.Image, a uint8 numpy array "
                        "[H, W, 3] or a torch tensor [3, H, W]")
    _check_side(t.shape[-1], t.shape[-2], where, min_side, family)
    return t


def to_pil(image, where: str, min_side: int, family: str) -> Image.Image:
    """The same inputs and checks as to_uint8 -> an RGB PIL image (the Pillow image processors' input)."""
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
        _check_side(*pil.size, where, min_side, family)
        return pil
    t = to_uint8(image, where, min_side, family, device="cpu")
    return Image.fromarray(t.permute(1, 2, 0).contiguous().numpy())


def _check_side(width: int, height: int, where: str, min_side: int, family: str) -> None:
    if min(width, height) < min_side:
        raise ValueError(f"{where} is {width}x{height} pixels; {family} needs at least {min_side} pixels per side")


def check_batch(images, prompts) -> None:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"images must be a list (one image, or one list of camera images, per prompt), got "
                        f"{type(images).__name__}")
    if len(images) != len(prompts) or not prompts:
        raise ValueError(f"got {len(images)} image(s) and {len(prompts)} prompt(s); need one image (or one list of "
                         "camera images) per prompt, B >= 1")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] has type {type(p).__name__}, expected str")


def camera_rows(images: list) -> tuple[list[list], list[list[str]]]:
    """images[i]: one image, or a list/tuple of N images (one per camera) -> ([B][N] images, [B][N] names for
    errors). Every row must hold the same N: the cameras are one set for the whole batch, and Idefics3 would
    silently pad a short row with blank images."""
    rows, names = [], []
    for i, im in enumerate(images):
        if isinstance(im, (list, tuple)):
            rows.append(list(im))
            names.append([f"images[{i}][{j}]" for j in range(len(im))])
        else:
            rows.append([im])
            names.append([f"images[{i}]"])
    counts = [len(r) for r in rows]
    if 0 in counts:
        raise ValueError(f"images[{counts.index(0)}] is an empty list; each row needs at least one image")
    odd = next((i for i, c in enumerate(counts) if c != counts[0]), None)
    if odd is not None:
        raise ValueError(f"images[{odd}] has {counts[odd]} image(s) but images[0] has {counts[0]}; every row needs the "
                         f"same number of images (one per camera), got counts {counts}")
    return rows, names
