"""Image preprocessing as tensor operations on the model's device, batched over samples and cameras.

Each TensorPreprocessor reproduces one transformers Pillow image processor (the family's `processor_class`)
from that processor's own settings: the same output sizes, grids and layouts, and pixel values close to
Pillow's (tests/test_preprocess.py states and checks the tolerances).

Resampling is Pillow's separable convolution written as two matrix products: for each axis, output pixel i
takes the normalised weights filter((j + 0.5 - centre_i) / s) over the input pixels j within the filter's
support times s = max(in / out, 1) (so downscaling antialiases), centre_i = (i + 0.5) * in / out, rounded to
Pillow's fixed-point precision; each pass is rounded to uint8, as Pillow's are. Pillow 13 does not always
run the horizontal pass first: measured on random sizes, it starts with the vertical one when the height
shrinks and the intermediate image is smaller that way (w * h_out < w_out * h), except in about 3 % of random
size pairs (all with both sides shrinking) that follow no rule we found; for those the other order gives values up to
~20 levels off in ~30 % of the pixels (about one level on average). With float32 sums about 1 value in 10^4
lands on the neighbouring level (exact .5 ties); float64 sums are bit-exact but 2-3x slower on a CPU.
Images of the same size share one pair of weight matrices, so B * N camera images are two batched matmuls
(cut into bands of output rows to skip most zero weights; a gather over the few taps per pixel is 5-10x
slower on a CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Pillow's resampling filters (PIL.Image.Resampling values) -> (kernel, support in input pixels at scale 1).
LANCZOS, BILINEAR, BICUBIC = 1, 2, 3
BLOCK = 16  # output pixels per band of a resampling matrix (Resizer._blocks)


def _bicubic(x: Tensor) -> Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (Pillow's choice)."""
    a, x = -0.5, x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _lanczos3(x: Tensor) -> Tensor:
    """sinc(x) sinc(x / 3) on [-3, 3)."""
    inside = (x >= -3) & (x < 3)
    return torch.where(inside, torch.sinc(x) * torch.sinc(x / 3), torch.zeros_like(x))


def _triangle(x: Tensor) -> Tensor:
    return (1 - x.abs()).clamp_min(0)


FILTERS = {LANCZOS: (_lanczos3, 3.0), BILINEAR: (_triangle, 1.0), BICUBIC: (_bicubic, 2.0)}


def resample_weights(n_in: int, n_out: int, resample: int) -> Tensor:  # [n_out, n_in] float64
    """Pillow's per-output-pixel weights along one axis: normalised to sum 1 over the taps inside the image,
    then rounded to Pillow's fixed-point precision."""
    kernel, support = FILTERS[resample]
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale  # [n_out]
    reach = support * stretch
    j = torch.arange(n_in, dtype=torch.float64)  # [n_in]
    # taps j in [floor(centre - reach + 0.5), floor(centre + reach + 0.5)), clipped to the image
    first = (centre - reach + 0.5).floor().clamp_min(0)
    last = (centre + reach + 0.5).floor().clamp_max(n_in)
    taps = (j[None] >= first[:, None]) & (j[None] < last[:, None])
    w = kernel((j[None] - centre[:, None] + 0.5) / stretch) * taps
    total = w.sum(1, keepdim=True)
    w = torch.where(total != 0, w / total, w)
    # Pillow rounds uint8-path weights to 22-bit fixed point (half away from zero); the same values here
    return torch.where(w >= 0, (w * 2**22 + 0.5).trunc(), (w * 2**22 - 0.5).trunc()) / 2**22


class Resizer:
    """Pillow-equivalent resize of integer-valued float images, with the weight matrices cached per
    (input length, output length, device). dtype: of the sums (float64 reproduces Pillow exactly)."""

    def __init__(self, resample: int, dtype: torch.dtype = torch.float32):
        if resample not in FILTERS:
            raise ValueError(f"got resample={resample!r}; supported Pillow filters: {sorted(FILTERS)}")
        self.resample, self.dtype = int(resample), dtype
        self._weights: dict[tuple, list] = {}

    def _blocks(self, n_in: int, n_out: int, device: torch.device) -> list[tuple[int, int, Tensor]]:
        """The weight matrix [n_out, n_in] cut into bands of BLOCK output rows, each with the input window
        [start, stop) its taps cover: (start, stop, weights [rows, stop - start]); the bands skip the zeros
        of the dense matrix (3-4x fewer multiplies at a 224 -> 64 resize)."""
        key = (n_in, n_out, str(device))
        if key not in self._weights:
            w = resample_weights(n_in, n_out, self.resample)
            bands = []
            for lo in range(0, n_out, BLOCK):
                rows = w[lo:lo + BLOCK]
                used = (rows != 0).any(0).nonzero()
                start, stop = int(used.min()), int(used.max()) + 1
                bands.append((start, stop, rows[:, start:stop].to(device, self.dtype)))
            self._weights[key] = bands
        return self._weights[key]

    def __call__(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """x [N, C, H, W] (of dtype) with integer values in [0, 255] -> [N, C, h, w], rounded like Pillow's uint8
        output after each pass (an unchanged axis is not resampled, as in Pillow)."""
        h, w = size
        h_in, w_in = x.shape[-2:]
        if h < h_in and w_in * h < w * h_in:  # see the module docstring: Pillow 13's pass order
            return self._horizontal(self._vertical(x, h), w)
        return self._vertical(self._horizontal(x, w), h)

    def _horizontal(self, x: Tensor, w: int) -> Tensor:  # [..., H, W_in] -> [..., H, w]
        if x.shape[-1] == w:
            return x
        bands = self._blocks(x.shape[-1], w, x.device)
        x = torch.cat([x[..., start:stop] @ band.T for start, stop, band in bands], -1)
        return x.add_(0.5).floor_().clamp_(0, 255)

    def _vertical(self, x: Tensor, h: int) -> Tensor:  # [..., H_in, W] -> [..., h, W]
        if x.shape[-2] == h:
            return x
        bands = self._blocks(x.shape[-2], h, x.device)
        x = torch.cat([band @ x[..., start:stop, :] for start, stop, band in bands], -2)
        return x.add_(0.5).floor_().clamp_(0, 255)


@dataclass
class SizeGroup:
    """Images of one input size that go to one output size."""

    index: list[int]  # positions in the flat, row-major list of images
    images: Tensor  # [n, 3, H, W] float32
    size: tuple[int, int]  # (h, w) after resizing


def size_groups(flat: list[Tensor], out_size) -> list[SizeGroup]:
    """flat [M] uint8 images [3, H, W] -> groups of equal (input, output) size; out_size(h, w) -> (h', w')."""
    keys: dict[tuple, list[int]] = {}
    for i, im in enumerate(flat):
        h, w = im.shape[-2:]
        keys.setdefault((h, w, *out_size(h, w)), []).append(i)
    return [SizeGroup(index, torch.stack([flat[i] for i in index]).float(), tuple(key[2:]))
            for key, index in keys.items()]


class TensorPreprocessor:
    """Tensor version of one Pillow image processor, built from that processor's settings.

    Subclasses give `processor_class`, `unsupported(processor)` (why the settings cannot be reproduced, or
    None) and `__call__(rows)`: rows [B][N] uint8 images [3, H, W] on the model's device -> the same tensors
    the Pillow processor returns for them (Family.process_images), on that device."""

    processor_class = ""

    def __init__(self, processor):
        reason = self.unsupported(processor)
        if reason is not None:
            raise ValueError(f"{type(self).__name__} cannot reproduce this {type(processor).__name__}: {reason}")
        self.processor = processor
        self.resize = Resizer(int(processor.resample))
        self._stats: dict[str, tuple[Tensor, Tensor]] = {}

    @classmethod
    def unsupported(cls, processor) -> str | None:
        """Why `processor`'s settings are beyond this class, or None when it reproduces them."""
        if type(processor).__name__ != cls.processor_class:
            return f"it reproduces {cls.processor_class}, not {type(processor).__name__}"
        if not processor.do_resize:
            return "do_resize=False"
        resample = processor.resample
        if resample is None or int(resample) not in FILTERS:
            return f"resample={resample!r} (supported: Pillow's LANCZOS, BILINEAR, BICUBIC)"
        if getattr(processor, "do_center_crop", None) or getattr(processor, "do_reduce_labels", None):
            return "center cropping is on"
        return None

    def normalise(self, x: Tensor) -> Tensor:
        """x [n, C, H, W] in [0, 255] -> rescaled and normalised as the processor's flags say."""
        p = self.processor
        if p.do_rescale:
            x = x * p.rescale_factor
        if p.do_normalize:
            key = str(x.device)
            if key not in self._stats:
                mean = torch.as_tensor(p.image_mean, dtype=torch.float32, device=x.device)
                std = torch.as_tensor(p.image_std, dtype=torch.float32, device=x.device)
                self._stats[key] = (mean.expand(x.shape[1]).reshape(-1, 1, 1), std.expand(x.shape[1]).reshape(-1, 1, 1))
            mean, std = self._stats[key]
            x = (x - mean) / std
        return x

    def __call__(self, rows: list[list[Tensor]]) -> dict:
        raise NotImplementedError


def smart_resize(h: int, w: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen-VL's output size: each side rounded to a multiple of factor, then both scaled by one ratio (sides
    floored) when the area exceeds max_pixels, or (sides ceiled) when it falls below min_pixels."""
    if max(h, w) / min(h, w) > 200:
        raise ValueError(f"got a {h}x{w} image; Qwen-VL needs an aspect ratio of at most 200")
    h_out, w_out = round(h / factor) * factor, round(w / factor) * factor
    if h_out * w_out > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        h_out = max(factor, math.floor(h / beta / factor) * factor)
        w_out = max(factor, math.floor(w / beta / factor) * factor)
    elif h_out * w_out < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        h_out, w_out = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return h_out, w_out


class QwenPatches(TensorPreprocessor):
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL: smart_resize to multiples of patch * merge, rescale, normalise, and
    flatten into patches: pixel_values [sum of h * w patches, C * temporal * patch * patch], image_grid_thw
    [B * N, 3] = (1, h, w) in patches. A still image fills every temporal slot of a patch with itself, and
    patches are ordered merge block by merge block (the merge x merge patches that become one LLM token)."""

    processor_class = "Qwen2VLImageProcessorPil"

    @classmethod
    def unsupported(cls, processor) -> str | None:
        reason = super().unsupported(processor)
        if reason is None and not (processor.size.shortest_edge and processor.size.longest_edge):
            return f"size={processor.size} lacks shortest_edge / longest_edge pixel counts"
        return reason

    def _patches(self, x: Tensor) -> Tensor:  # [n, C, H, W] -> [n, gh * gw, C * tp * p * p]
        p = self.processor
        patch, merge, tp = p.patch_size, p.merge_size, p.temporal_patch_size
        n, c, h, w = x.shape
        gh, gw = h // patch, w // patch
        x = x.reshape(n, c, gh // merge, merge, patch, gw // merge, merge, patch)
        x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # [n, gh/m, gw/m, m, m, C, p, p]
        x = x.unsqueeze(6).expand(*x.shape[:6], tp, patch, patch)
        return x.reshape(n, gh * gw, c * tp * patch * patch)

    def __call__(self, rows: list[list[Tensor]]) -> dict:
        p = self.processor
        factor = p.patch_size * p.merge_size
        flat = [im for row in rows for im in row]
        out: list[Tensor | None] = [None] * len(flat)
        grids = [None] * len(flat)
        fit = lambda h, w: smart_resize(h, w, factor, p.size.shortest_edge, p.size.longest_edge)  # noqa: E731
        for group in size_groups(flat, fit):
            patches = self._patches(self.normalise(self.resize(group.images, group.size)))
            for k, i in enumerate(group.index):
                out[i] = patches[k]
                grids[i] = [1, group.size[0] // p.patch_size, group.size[1] // p.patch_size]
        device = flat[0].device
        return {"pixel_values": torch.cat(out), "image_grid_thw": torch.tensor(grids, device=device)}


class Idefics3Images(TensorPreprocessor):
    """SmolVLM / Idefics3 without image splitting: the longest edge to size["longest_edge"] (aspect kept,
    the other side made even), then to a max_image_size square, both resamples rounded like Pillow's;
    pixel_values [B, N, C, S, S] and pixel_attention_mask [B, N, S, S] (all ones: every image is S x S)."""

    processor_class = "Idefics3ImageProcessorPil"

    @classmethod
    def unsupported(cls, processor) -> str | None:
        reason = super().unsupported(processor)
        if reason is None and processor.do_image_splitting:
            return "do_image_splitting=True (tiles need row/column tokens; driftkit's families turn it off)"
        if reason is None and not processor.size.longest_edge:
            return f"size={processor.size} has no longest_edge"
        return reason

    def _longest_edge(self, h: int, w: int) -> tuple[int, int]:
        """Idefics3's first resize: the longest side to L, the other in proportion (truncated, made even),
        then scaled below its 4096-pixel cap."""
        side, ratio = self.processor.size.longest_edge, w / h
        if w >= h:
            h, w = int(side / ratio), side
            h += h % 2
        else:
            h, w = side, int(side * ratio)
            w += w % 2
        h, w = max(h, 1), max(w, 1)
        cap, ratio = 4096, w / h
        if w >= h and w > cap:
            h, w = int(cap / ratio), cap
        elif h > w and h > cap:
            h, w = cap, int(cap * ratio)
        return max(h, 1), max(w, 1)

    def __call__(self, rows: list[list[Tensor]]) -> dict:
        side = self.processor.max_image_size["longest_edge"]
        flat = [im for row in rows for im in row]
        out: list[Tensor | None] = [None] * len(flat)
        for group in size_groups(flat, self._longest_edge):
            x = self.normalise(self.resize(self.resize(group.images, group.size), (side, side)))
            for k, i in enumerate(group.index):
                out[i] = x[k]
        b, n = len(rows), len(rows[0])
        pixels = torch.stack(out).reshape(b, n, *out[0].shape)
        result = {"pixel_values": pixels}
        if self.processor.do_pad:
            result["pixel_attention_mask"] = torch.ones((b, n, side, side), dtype=torch.long, device=pixels.device)
        return result


class SiglipImages(TensorPreprocessor):
    """PaliGemma / SigLIP: resize to size's height x width (aspect not kept), rescale, normalise;
    pixel_values [B * N, C, H, W] in row-major image order."""

    processor_class = "SiglipImageProcessorPil"

    @classmethod
    def unsupported(cls, processor) -> str | None:
        reason = super().unsupported(processor)
        if reason is None and not (processor.size.height and processor.size.width):
            return f"size={processor.size} is not a fixed height x width"
        if reason is None and getattr(processor, "do_pad", None):
            return "do_pad=True"
        return reason

    def __call__(self, rows: list[list[Tensor]]) -> dict:
        size = (self.processor.size.height, self.processor.size.width)
        flat = [im for row in rows for im in row]
        out: list[Tensor | None] = [None] * len(flat)
        for group in size_groups(flat, lambda h, w: size):
            x = self.normalise(self.resize(group.images, group.size))
            for k, i in enumerate(group.index):
                out[i] = x[k]
        return {"pixel_values": torch.stack(out)}
