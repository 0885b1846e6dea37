"""A VLM to pretrain from scratch, written as a checkpoint directory, and the export of a trained one.

    init_checkpoint("runs/init", ModelSize(family="qwen2_5_vl", width=192, depth=4), image_size=112)
    policy = TextPolicy(TextPolicyConfig(backbone="runs/init", ...))     # loads like a downloaded model
    ... train through driftkit.train ...
    export_checkpoint(policy, "assets/tiny-grounder", dtype="bfloat16")
    Backbone.from_pretrained("assets/tiny-grounder")                  # config.json, model.safetensors,
                                                                      # tokenizer, preprocessor config

The architecture starts from the family's tiny preset config (driftkit.backbones) with the widths and depths
of ModelSize swapped in; the tokenizer is the presets' offline byte-level one. The export drops the rows the
backbone added for its query tokens (embedding rows and tokenizer entries), so the directory holds the LM's
own vocabulary only, as a released checkpoint does; Backbone.from_pretrained adds query tokens back itself.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from driftkit.atomic import atomic_dir
from driftkit.errors import check_choice, check_positive
from driftkit.grounding.text_answers import QUESTIONS, TEXT_ANSWERS

ANSWERS_FILE = "driftkit_text_answers.json"
VISION_FIELDS = {
    # family -> (vision width field, vision output field = the LM width, extra index-list fields)
    "qwen2_vl": ("embed_dim", "hidden_size", ()),
    "qwen2_5_vl": ("hidden_size", "out_hidden_size", ("fullatt_block_indexes",)),
    "qwen3_vl": ("hidden_size", "out_hidden_size", ("deepstack_visual_indexes",)),
}
"""Where each Qwen family's vision config keeps its widths (the presets live in backbones.families)."""


@dataclass
class ModelSize:
    """Widths and depths of a from-scratch VLM."""

    family: str = "qwen2_5_vl"
    """A Qwen family (its answer convention is in grounding.text_answers)."""
    width: int = 192
    """LM hidden size."""
    depth: int = 4
    """LM layers."""
    heads: int = 6
    """LM attention heads (width / heads must be even, and at least 6 for the 3-D rotary sections)."""
    kv_heads: int = 2
    """LM key-value heads (divides heads)."""
    mlp: int = 512
    """LM MLP hidden size."""
    vision_width: int = 96
    """Vision tower hidden size."""
    vision_depth: int = 2
    """Vision tower layers."""
    vision_heads: int = 4
    """Vision tower heads."""

    def __post_init__(self):
        check_choice("family", self.family, tuple(VISION_FIELDS))
        for name in ("width", "depth", "heads", "kv_heads", "mlp", "vision_width", "vision_depth", "vision_heads"):
            check_positive(name, getattr(self, name))
        head_dim = self.width // self.heads
        if self.width % self.heads or head_dim % 2 or head_dim < 6:
            raise ValueError(f"got width={self.width}, heads={self.heads}: the head size must be a whole, even "
                             "number >= 6")
        if self.heads % self.kv_heads:
            raise ValueError(f"got heads={self.heads}, kv_heads={self.kv_heads}; kv_heads must divide heads")
        if self.vision_width % self.vision_heads:
            raise ValueError(f"got vision_width={self.vision_width}, vision_heads={self.vision_heads}; the heads "
                             "must divide the width")

    def to_dict(self) -> dict:
        return asdict(self)


def model_config(size: ModelSize, ids: dict[str, int], image_size: int):
    """The family's tiny preset config with the sizes of `size` in it."""
    from driftkit.backbones.families import get_family

    config = get_family(size.family).presets["tiny"](ids, image_size)
    text, vision = config.text_config, config.vision_config
    head_dim = size.width // size.heads
    text.hidden_size, text.num_hidden_layers, text.intermediate_size = size.width, size.depth, size.mlp
    text.num_attention_heads, text.num_key_value_heads = size.heads, size.kv_heads
    if getattr(text, "layer_types", None):  # one entry per layer, fixed when the config was built
        text.layer_types = [text.layer_types[0]] * size.depth
    if hasattr(text, "head_dim"):
        text.head_dim = head_dim
    third = head_dim // 6  # (temporal, height, width) sections sum to head_dim / 2
    text.rope_parameters = {**text.rope_parameters, "mrope_section": [head_dim // 2 - 2 * third, third, third]}
    width_field, out_field, index_fields = VISION_FIELDS[size.family]
    setattr(vision, width_field, size.vision_width)
    setattr(vision, out_field, size.width)
    if hasattr(vision, "intermediate_size"):
        vision.intermediate_size = 2 * size.vision_width
    vision.depth, vision.num_heads = size.vision_depth, size.vision_heads
    for name in index_fields:
        setattr(vision, name, [size.vision_depth - 1])
    return config


def checkpoint_size(path: str | os.PathLike) -> ModelSize:
    """The ModelSize of a checkpoint directory written by init_checkpoint or export_checkpoint (the inverse of
    model_config), read from its config.json."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {path} is not a checkpoint directory")
    config = json.loads(file.read_text())
    family = config.get("model_type")
    if family not in VISION_FIELDS:
        raise ValueError(f"{file}: model_type {family!r} is not one of the families pretrained here "
                         f"({sorted(VISION_FIELDS)})")
    text, vision = config["text_config"], config["vision_config"]
    return ModelSize(family=family, width=text["hidden_size"], depth=text["num_hidden_layers"],
                     heads=text["num_attention_heads"], kv_heads=text["num_key_value_heads"],
                     mlp=text["intermediate_size"], vision_width=vision[VISION_FIELDS[family][0]],
                     vision_depth=vision["depth"], vision_heads=vision["num_heads"])


def processor_side(path: str | os.PathLike) -> int:
    """The fixed input side of a checkpoint's Qwen image processor (its min = max pixel budget, side**2)."""
    file = Path(path) / "preprocessor_config.json"
    size = json.loads(file.read_text()).get("size", {}) if file.is_file() else {}
    pixels = size.get("shortest_edge")
    if not pixels or pixels != size.get("longest_edge"):
        raise ValueError(f"{file}: size={size!r} is not one fixed pixel budget (shortest_edge = longest_edge)")
    return math.isqrt(int(pixels))


def resized_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, image_size: int) -> Path:
    """A copy of checkpoint `src` at `dst` (atomically) whose image processor takes image_size-pixel squares:
    a Qwen processor resizes every image to its pixel budget, so a stage on images of another side needs
    the budget changed, or it trains on the old side without saying so. The weights are unchanged (the
    vision position embedding is interpolated to the new grid)."""
    import shutil

    processor_side(src)  # a fixed budget to change
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        file = tmp / "preprocessor_config.json"
        config = json.loads(file.read_text())
        config["size"] = {"shortest_edge": image_size**2, "longest_edge": image_size**2}
        file.write_text(json.dumps(config, indent=2))
    return Path(dst)


def init_checkpoint(path: str | os.PathLike, size: ModelSize, image_size: int, seed: int = 0) -> Path:
    """Write a randomly initialised VLM of `size` (float32) as a checkpoint directory, atomically."""
    import torch

    from driftkit.backbones.families import get_family
    from driftkit.backbones.tokenizer import byte_level_tokenizer

    family = get_family(size.family)
    image_size = family.check_image_size(image_size)
    tok = byte_level_tokenizer(list(dict.fromkeys(family.special_tokens.values())))
    ids = {role: tok.convert_tokens_to_ids(s) for role, s in family.special_tokens.items()}
    ids.update(pad=tok.pad_token_id, bos=tok.bos_token_id, eos=tok.eos_token_id, vocab=len(tok))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = family.load_class()(model_config(size, ids, image_size))
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        family.image_processor(size=image_size).save_pretrained(tmp)
    return Path(path)


def export_checkpoint(policy, path: str | os.PathLike, dtype: str = "bfloat16", extra: dict | None = None) -> Path:
    """Write a trained TextPolicy's VLM as a transformers checkpoint directory (atomically): config.json and
    model.safetensors in `dtype`, the tokenizer and image processor without the query tokens, and
    driftkit_text_answers.json (the answer convention and question templates, plus `extra`, e.g. scores)."""
    from driftkit.backbones.families import torch_dtype

    bb = policy.backbone
    if bb.config.mode == "lora":
        raise ValueError("export_checkpoint writes full weights; a LoRA-mode policy's adapters are not merged "
                         "(train with mode='full' or 'frozen')")
    hooks = bb.model.get_input_embeddings()._forward_hooks
    saved = dict(hooks)
    hooks.clear()  # the backbone's query-embedding swap stays behind (and is not deep-copied with it)
    try:
        model = copy.deepcopy(bb.model).to(torch_dtype(dtype))
    finally:
        hooks.update(saved)
    model.resize_token_embeddings(bb.base_vocab, mean_resizing=False)
    queries = set(bb.tokenizer.convert_ids_to_tokens(bb.query_ids))
    convention = TEXT_ANSWERS[bb.family.name]
    meta = {"family": bb.family.name, "convention": asdict(convention), "questions": QUESTIONS,
            "clip_seconds": policy.config.clip_seconds, "image_size": _trained_side(policy), **(extra or {})}
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        bb.tokenizer.save_pretrained(tmp)
        _drop_tokens(tmp, queries, bb.base_vocab)
        bb.image_processor.save_pretrained(tmp)
        (tmp / ANSWERS_FILE).write_text(json.dumps(meta, indent=2))
    return Path(path)


def _trained_side(policy) -> int:
    """The image side the policy was trained on (its data's), else the backbone's nominal one."""
    shape = policy.config.image_shape
    return int(shape[-1]) if shape else policy.backbone.image_size


def pretrained_meta(path: str | os.PathLike) -> dict | None:
    """What export_checkpoint recorded with a checkpoint (family, answer convention, question templates
    {"box": "Locate {expression}.", ...}, clip_seconds, scores), or None when the directory has no
    driftkit_text_answers.json."""
    file = Path(path) / ANSWERS_FILE
    if not file.is_file():
        return None
    try:
        meta = json.loads(file.read_text())
        meta["questions"] = dict(meta["questions"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{file} is not a text-answers file of export_checkpoint (no 'questions': {e})") from e
    return meta


def _drop_tokens(path: Path, tokens: set[str], vocab: int) -> None:
    """Remove added tokens (the query tokens, ids >= vocab) from a saved tokenizer's files."""
    file = path / "tokenizer.json"
    data = json.loads(file.read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in tokens and t["id"] < vocab]
    file.write_text(json.dumps(data, ensure_ascii=False))
    file = path / "tokenizer_config.json"
    data = json.loads(file.read_text())
    for key in ("extra_special_tokens", "additional_special_tokens"):
        if isinstance(data.get(key), list):
            data[key] = [t for t in data[key] if t not in tokens]
    if isinstance(data.get("added_tokens_decoder"), dict):
        data["added_tokens_decoder"] = {k: v for k, v in data["added_tokens_decoder"].items() if int(k) < vocab}
    file.write_text(json.dumps(data, indent=2, ensure_ascii=False))
