"""Model inputs from images and prompts: checks, image placeholders, left padding and position ids.

Prompts are left-padded so every row's prefix ends in the same column; the query tokens then sit at the
same columns in every row, which lets one cached suffix pass serve the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch import Tensor

from driftkit.backbones.families import Family


@dataclass
class PrefixInputs:
    """Everything a forward pass over [prefix | queries] needs."""

    input_ids: Tensor  # [B, L + Q] left-padded prefix then the query tokens
    attention_mask: Tensor  # [B, L + Q] 1 = real token
    position_ids: Tensor  # [B, L + Q], or [3, B, L + Q] for Qwen's 3-D rotary positions
    prefix_len: int  # L
    vision: dict  # pixel_values and the family's extra image tensors
    extra: dict  # per-token tensors the model needs (mm_token_type_ids / token_type_ids), [B, L + Q]

    def prefix_kwargs(self) -> dict:
        """Arguments of the prefix pass (columns [0, L))."""
        l = self.prefix_len
        extra = {k: v[:, :l] for k, v in self.extra.items()}
        return dict(input_ids=self.input_ids[:, :l], attention_mask=self.attention_mask[:, :l],
                    position_ids=self.position_ids[..., :l], **self.vision, **extra)

    def full_kwargs(self) -> dict:
        return dict(input_ids=self.input_ids, attention_mask=self.attention_mask,
                    position_ids=self.position_ids, **self.vision, **self.extra)


def to_pil(image, index: int, min_side: int, family: str) -> Image.Image:
    """PIL image, uint8 array [H, W, 3], or tensor [3, H, W] (uint8, or float in [0, 1]) -> RGB PIL image."""
    where = f"images[{index}]"
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
    elif isinstance(image, (np.ndarray, Tensor)):
        arr = image.detach().cpu().numpy() if isinstance(image, Tensor) else image
        if isinstance(image, Tensor) and arr.ndim == 3 and arr.shape[0] == 3:
            arr = arr.transpose(1, 2, 0)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"{where} has shape {list(image.shape)}; expected an array [H, W, 3] or a tensor "
                             "[3, H, W]")
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.floating) or arr.min() < 0 or arr.max() > 1:
                raise ValueError(f"{where} has dtype {arr.dtype}; expected uint8, or floats in [0, 1]")
            arr = (arr * 255).round().astype(np.uint8)
        pil = Image.fromarray(np.ascontiguousarray(arr))
    else:
        raise TypeError(f"{where} has type {type(image).__name__}; expected a PIL.Image.Image, a uint8 numpy array "
                        "[H, W, 3] or a torch tensor [3, H, W]")
    if min(pil.size) < min_side:
        raise ValueError(f"{where} is {pil.size[0]}x{pil.size[1]} pixels; {family} needs at least {min_side} pixels "
                         "per side")
    return pil


def check_batch(images, prompts) -> None:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"images must be a list (one image per prompt), got {type(images).__name__}")
    if len(images) != len(prompts) or not prompts:
        raise ValueError(f"got {len(images)} image(s) and {len(prompts)} prompt(s); need one image per prompt, B >= 1")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] has type {type(p).__name__}, expected str")


def process_images(family: Family, processor, images: list[Image.Image]) -> dict:
    """Family image processor -> model keyword tensors (pixel_values, image_grid_thw, pixel_attention_mask)."""
    if family.name == "smolvlm":
        out = processor(images=[[im] for im in images], return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "pixel_attention_mask": out["pixel_attention_mask"]}
    out = processor(images=images, return_tensors="pt")
    keep = ("pixel_values", "image_grid_thw")
    return {k: out[k] for k in keep if k in out}


def image_token_counts(family: Family, config, vision: dict, batch: int) -> list[int]:
    """Number of placeholder tokens each image occupies in the prompt."""
    if family.mrope:
        merge = config.vision_config.spatial_merge_size
        return [int(g.prod()) // merge**2 for g in vision["image_grid_thw"]]
    if family.name == "smolvlm":
        v = config.vision_config
        n = (v.image_size // v.patch_size) ** 2 // config.scale_factor**2
        return [n * vision["pixel_values"].shape[1]] * batch
    v = config.vision_config
    return [(v.image_size // v.patch_size) ** 2] * batch


def image_block(family: Family, tok_ids: dict[str, int], n: int, bos: int | None) -> list[int]:
    """Token ids of one image in the family's prompt layout (placeholders are filled by the vision tower)."""
    if family.mrope:
        return [tok_ids["start"]] + [tok_ids["image"]] * n + [tok_ids["end"]]
    if family.name == "smolvlm":
        head = [bos] if bos is not None else []
        return head + [tok_ids["start"], tok_ids["global"]] + [tok_ids["image"]] * n + [tok_ids["start"]]
    return [tok_ids["image"]] * n + ([bos] if bos is not None else [])  # PaliGemma: image tokens, then BOS
