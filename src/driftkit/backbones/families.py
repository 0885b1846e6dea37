"""VLM families: which transformers class loads them, how an image becomes placeholder tokens, and the
configs of the randomly initialised presets.

A Family knows what the backbone cannot infer: the model class, the image processor, and the token layout
of a row (one block per image, in camera order, then the prompt). Preset configs are built in code (no
download); `tiny` presets (~64 hidden, 2 layers) are for tests, `mid` presets (hundreds of millions of random
parameters) for GPU latency.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from driftkit.backbones.preprocess import Idefics3Images, QwenPatches, SiglipImages, TensorPreprocessor

# Special tokens each family's prompts use, with the strings of the released checkpoints.
QWEN_TOKENS = {"start": "<|vision_start|>", "image": "<|image_pad|>", "end": "<|vision_end|>"}
IDEFICS3_TOKENS = {"start": "<fake_token_around_image>", "global": "<global-img>", "image": "<image>"}
PALIGEMMA_TOKENS = {"image": "<image>"}
BOS_PLACES = ("none", "first", "after_images")


@dataclass(frozen=True)
class Family:
    """One VLM family behind a common interface."""

    name: str
    """Registry name (e.g. "qwen2_5_vl")."""
    model_class: str
    """transformers class name, e.g. "Qwen2_5_VLForConditionalGeneration"."""
    processor_class: str
    """Pillow image processor class (works without torchvision)."""
    model_types: tuple[str, ...]
    """config.model_type values that identify the family in a local checkpoint."""
    special_tokens: dict[str, str]
    """Role -> token string used to lay out an image in the prompt."""
    patch_multiple: int
    """Smallest image side (pixels) the vision tower accepts."""
    position_offset: int = 0
    """First text position id (PaliGemma counts from 1)."""
    mrope: bool = False
    """Qwen-style 3-D rotary positions that need mm_token_type_ids."""
    block_head: tuple[str, ...] = ()
    """Roles (keys of special_tokens) of the tokens before one image's placeholders."""
    block_tail: tuple[str, ...] = ()
    """Roles of the tokens after one image's placeholders."""
    bos: str = "none"
    """Where the tokenizer's BOS goes in a row: "none", "first" (before the images, Idefics3's tokenizer adds
    it) or "after_images" (PaliGemma: image tokens, BOS, prompt)."""
    prompt_suffix: str = ""
    """Text appended to every prompt (PaliGemma's prompts end with a newline)."""
    nested_images: bool = False
    """The image processor takes one list of images per row (Idefics3: pixel_values [B, N, 3, H, W]); otherwise
    one flat, row-major list of the B * N images."""
    vision_keys: tuple[str, ...] = ("pixel_values",)
    """Image processor outputs the model takes."""
    prefix_lm: bool = False
    """token_type_ids 0 on the prefix (attended bidirectionally) and 1 on the query tokens (PaliGemma)."""
    tensor_preprocessor: type[TensorPreprocessor] | None = None
    """The TensorPreprocessor subclass that reproduces processor_class with tensor operations on the model's
    device (None = the Pillow processor only)."""
    visual_features: Callable[[object, dict], list] | None = field(default=None, compare=False)
    """function(model, image tensors) -> one [N_i, H] tensor per image (row-major): the encoder + connector
    output in the LM's width, for visual token reduction; None = reduction is not supported."""
    deepstack: bool = False
    """The model also adds features of intermediate vision layers at the image positions of its first decoder
    layers (Qwen3-VL); a reduction then reduces those levels the same way and hands all of them to the model
    (mm_encoder_outputs) instead of placing the features itself."""
    presets: dict[str, Callable[[dict[str, int], int], object]] = field(default_factory=dict, compare=False)
    """Preset size ("tiny", "mid") -> function(token ids, image side) -> transformers config."""

    def __post_init__(self):
        if self.bos not in BOS_PLACES:
            raise ValueError(f"family {self.name!r} has bos={self.bos!r}; must be one of {BOS_PLACES}")

    def load_class(self):
        import transformers

        return getattr(transformers, self.model_class)

    def check_image_size(self, size: int) -> int:
        """A preset's input side, checked: at least one patch, and a whole number of patches where the vision
        tower has a fixed grid (Qwen's processors round any size down to whole merged patches)."""
        if size < self.patch_multiple or (not self.mrope and size % self.patch_multiple):
            rule = "at least" if self.mrope else "a multiple of"
            raise ValueError(f"got image_size={size} for {self.name}; it must be {rule} {self.patch_multiple}")
        return size

    def image_block(self, ids: dict[str, int], n: int) -> list[int]:
        """Token ids of one image with n placeholders (the vision tower fills the placeholders)."""
        head = [ids[role] for role in self.block_head]
        return head + [ids["image"]] * n + [ids[role] for role in self.block_tail]

    def row_tokens(self, ids: dict[str, int], counts: list[int], bos: int | None, text: list[int],
                   labels: list[list[int]] | None = None) -> list[int]:
        """One row's prefix: the image blocks in camera order (counts[j] placeholders for image j), each after
        its label's ids labels[j] when labels are given, BOS where the family puts it, then the prompt's ids."""
        labels = labels or [[] for _ in counts]
        blocks = [t for n, label in zip(counts, labels, strict=True) for t in label + self.image_block(ids, n)]
        first = [bos] if bos is not None and self.bos == "first" else []
        after = [bos] if bos is not None and self.bos == "after_images" else []
        return first + blocks + after + text

    def process_images(self, processor, rows: list[list]) -> dict:
        """rows [B][N] PIL images -> the model's image tensors (vision_keys): pixel_values in row-major image
        order ([B * N, 3, H, W], Qwen's patches [sum of patches, D], or Idefics3's [B, N, 3, H, W])."""
        images = rows if self.nested_images else [im for row in rows for im in row]
        out = processor(images=images, return_tensors="pt")
        return {k: out[k] for k in self.vision_keys if k in out}

    def tensor_pipeline(self, processor) -> TensorPreprocessor | None:
        """The tensor preprocessor for `processor` when its class and settings are ones this family reproduces;
        otherwise None, with one warning saying that the (slower, CPU) Pillow processor stays in use."""
        cls = self.tensor_preprocessor
        reason = "the family has no tensor preprocessor" if cls is None else cls.unsupported(processor)
        if reason is None:
            return cls(processor)
        warnings.warn(f"{self.name}: images go through the Pillow {type(processor).__name__} on the CPU, not tensor "
                      f"preprocessing on the model's device: {reason}", stacklevel=3)
        return None

    def image_token_counts(self, config, vision: dict, num_images: int) -> list[int]:
        """Placeholder tokens of each of the num_images images (row-major), from the model config and the
        processed images: Qwen's vary with each image's grid, the others have a fixed grid."""
        if self.mrope:
            merge = config.vision_config.spatial_merge_size
            return [int(g.prod()) // merge**2 for g in vision["image_grid_thw"]]
        v = config.vision_config
        shuffle = getattr(config, "scale_factor", 1)  # Idefics3 merges shuffle x shuffle patches into one token
        return [(v.image_size // v.patch_size) ** 2 // shuffle**2] * num_images

    def image_processor(self, size: int | None = None, path: str | None = None):
        """The family's image processor; from a local checkpoint if path is given, else sized for presets."""
        import transformers

        cls = getattr(transformers, self.processor_class)
        if path is not None:
            processor = cls.from_pretrained(path)
            if self.name == "smolvlm":
                processor.do_image_splitting = False  # one global image; crops would need row/column markers
            return processor
        if self.mrope:
            patch = 16 if self.name == "qwen3_vl" else 14
            pixels = (size // (2 * patch)) * (2 * patch)
            return cls(patch_size=patch, merge_size=2, size={"shortest_edge": pixels**2, "longest_edge": pixels**2})
        if self.name == "smolvlm":
            return cls(do_image_splitting=False, size={"longest_edge": size}, max_image_size={"longest_edge": size})
        return cls(size={"height": size, "width": size})


def _qwen_features(model, vision: dict) -> list:
    out = model.model.get_image_features(vision["pixel_values"], vision["image_grid_thw"], return_dict=True)
    return list(out.pooler_output)  # one [N_i, H] per image, in the merged patches' raster order


def _idefics3_features(model, vision: dict) -> list:
    pixels = vision["pixel_values"]  # [B, N, 3, H, W]
    out = model.model.get_image_features(pixels, vision.get("pixel_attention_mask"), return_dict=True)
    return [image for row in out.pooler_output for image in row.chunk(pixels.shape[1])]


# ---- preset configs ------------------------------------------------------------------------------------
# Sizes: (text hidden, layers, heads, kv heads, mlp, vocab floor, vision hidden, vision layers, vision heads)
SIZES = {
    "tiny": dict(h=64, n=2, heads=4, kv=2, mlp=128, vocab=0, vh=32, vn=2, vheads=2),
    "mid": dict(h=1024, n=16, heads=16, kv=4, mlp=2816, vocab=32000, vh=768, vn=12, vheads=12),
}
IMAGE_SIZE = {"tiny": 64, "mid": 224}


def _text(s: dict, ids: dict[str, int], **extra) -> dict:
    return dict(
        hidden_size=s["h"], num_hidden_layers=s["n"], num_attention_heads=s["heads"], num_key_value_heads=s["kv"],
        intermediate_size=s["mlp"], vocab_size=max(ids["vocab"], s["vocab"]), max_position_embeddings=4096,
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], **extra,
    )


def _qwen_config(version: str, size: str):
    def build(ids: dict[str, int], image_size: int):  # Qwen's vision tower takes any size: image_size unused
        import transformers

        s = SIZES[size]
        head_dim = s["h"] // s["heads"]
        # mrope_section (temporal, height, width) must sum to head_dim / 2.
        sections = [head_dim // 2 - 2 * (head_dim // 6), head_dim // 6, head_dim // 6]
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sections}
        text = _text(s, ids, rope_parameters=rope, **({"head_dim": head_dim} if version == "3" else {}))
        vision = dict(depth=s["vn"], num_heads=s["vheads"], spatial_merge_size=2, temporal_patch_size=2)
        if version == "2":
            cls = transformers.Qwen2VLConfig
            vision.update(embed_dim=s["vh"], hidden_size=s["h"], mlp_ratio=2, patch_size=14)
        elif version == "2.5":
            cls = transformers.Qwen2_5_VLConfig
            vision.update(hidden_size=s["vh"], intermediate_size=2 * s["vh"], out_hidden_size=s["h"], patch_size=14,
                          fullatt_block_indexes=[s["vn"] - 1], window_size=56)
        else:
            cls = transformers.Qwen3VLConfig
            vision.update(hidden_size=s["vh"], intermediate_size=2 * s["vh"], out_hidden_size=s["h"], patch_size=16,
                          num_position_embeddings=256, deepstack_visual_indexes=[s["vn"] - 1])
        return cls(
            text_config=text, vision_config=vision, image_token_id=ids["image"], video_token_id=ids["image"],
            vision_start_token_id=ids["start"], vision_end_token_id=ids["end"], tie_word_embeddings=False,
        )

    return build


def _idefics3_config(size: str):
    def build(ids: dict[str, int], image_size: int):
        import transformers

        s = SIZES[size]
        vision = dict(hidden_size=s["vh"], intermediate_size=2 * s["vh"], num_hidden_layers=s["vn"],
                      num_attention_heads=s["vheads"], image_size=image_size, patch_size=16)
        text = _text(s, ids, model_type="llama", pad_token_id=ids["pad"], head_dim=s["h"] // s["heads"])
        return transformers.Idefics3Config(
            text_config=text, vision_config=vision, image_token_id=ids["image"], scale_factor=2,
            pad_token_id=ids["pad"], tie_word_embeddings=False,
        )

    return build


def _paligemma_config(size: str):
    def build(ids: dict[str, int], image_size: int):
        import transformers

        s = SIZES[size]
        image, patch = image_size, 16
        vision = dict(model_type="siglip_vision_model", hidden_size=s["vh"], intermediate_size=2 * s["vh"],
                      num_hidden_layers=s["vn"], num_attention_heads=s["vheads"], image_size=image, patch_size=patch,
                      projection_dim=s["h"], vision_use_head=False)
        text = _text(s, ids, model_type="gemma", head_dim=s["h"] // s["heads"], pad_token_id=ids["pad"],
                     num_image_tokens=(image // patch) ** 2)
        text["num_key_value_heads"] = 1
        return transformers.PaliGemmaConfig(
            text_config=text, vision_config=vision, image_token_index=ids["image"], projection_dim=s["h"],
            hidden_size=s["h"], pad_token_id=ids["pad"],
        )

    return build


def _qwen(name: str, version: str, cls: str) -> Family:
    return Family(
        name, f"{cls}ForConditionalGeneration", "Qwen2VLImageProcessorPil", (name,), QWEN_TOKENS,
        patch_multiple=28 if version != "3" else 32, mrope=True, block_head=("start",), block_tail=("end",),
        vision_keys=("pixel_values", "image_grid_thw"), tensor_preprocessor=QwenPatches,
        presets={size: _qwen_config(version, size) for size in SIZES},
        visual_features=_qwen_features, deepstack=version == "3",
    )


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        _qwen("qwen2_vl", "2", "Qwen2VL"),
        _qwen("qwen2_5_vl", "2.5", "Qwen2_5_VL"),
        _qwen("qwen3_vl", "3", "Qwen3VL"),
        Family("smolvlm", "Idefics3ForConditionalGeneration", "Idefics3ImageProcessorPil", ("idefics3", "smolvlm"),
               IDEFICS3_TOKENS, patch_multiple=32, block_head=("start", "global"), block_tail=("start",),
               bos="first", nested_images=True, vision_keys=("pixel_values", "pixel_attention_mask"),
               tensor_preprocessor=Idefics3Images, presets={s: _idefics3_config(s) for s in SIZES},
               visual_features=_idefics3_features),
        Family("paligemma", "PaliGemmaForConditionalGeneration", "SiglipImageProcessorPil", ("paligemma",),
               PALIGEMMA_TOKENS, patch_multiple=16, position_offset=1, bos="after_images", prompt_suffix="\n",
               prefix_lm=True, tensor_preprocessor=SiglipImages, presets={s: _paligemma_config(s) for s in SIZES}),
    )
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown VLM family {name!r}; known families: {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of_model_type(model_type: str, path: str) -> Family:
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise ValueError(f"checkpoint {path!r} has model_type={model_type!r}, which is not a known VLM family; "
                     f"known model types: {known} (or pass family= one of {sorted(FAMILIES)})")


def list_presets() -> list[str]:
    return [f"{name}-{size}" for name, fam in FAMILIES.items() for size in fam.presets]


def torch_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"got dtype={name!r}, must be one of {sorted(dtypes)}")
    return dtypes[name]
