"""Backbone: a transformers VLM read out at appended query tokens.

    bb = Backbone.from_preset("qwen2_5_vl-tiny", num_query_tokens=4)     # random tiny model, offline
    bb = Backbone.from_pretrained("/ckpt/Qwen2.5-VL-3B", mode="lora")    # a local checkpoint
    feats = bb.encode(images, prompts)            # one pass: .query [B, Q, H], .pooled [B, Q*H], .prefix
    pre = bb.encode_prefix(images, prompts)       # image + prompt once, into a DynamicCache
    feats = bb.encode_queries(pre, repeats=G)     # query tokens only, for G copies of each row
    feats = bb.encode([[front, wrist], ...], prompts)   # several cameras per row: one image block each
    bb.save_assets(dir); Backbone.from_assets(dir)      # rebuild the architecture without its source

The query tokens' embeddings live in `query_embed` (a small parameter swapped in by a hook on the input
embedding), so they train whatever the mode while the LM's own embedding matrix stays as it is.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from driftkit.backbones.cache import cache_kwargs, returned_cache
from driftkit.backbones.config import BackboneConfig, VLMFeatures
from driftkit.backbones.families import FAMILIES, IMAGE_SIZE, Family, family_of_model_type, get_family, list_presets
from driftkit.backbones.families import torch_dtype
from driftkit.backbones.inputs import PrefixInputs, camera_rows, check_batch, to_pil, to_uint8
from driftkit.backbones.reduce import TokenReduction, place_reduced, reduce_images
from driftkit.backbones.static import (
    StaticCaches, bucket_rows, compile_module, default_mode, keep_decoder_layers, language_model,
)
from driftkit.backbones.static import pad_prefix, pad_rows
from driftkit.backbones.tokenizer import byte_level_tokenizer

ASSETS_FILE = "driftkit_backbone.json"
ASSETS_FORMAT = 1  # version of ASSETS_FILE's layout


@dataclass
class PrefixState:
    """A cached prefix pass, reusable for several suffix passes."""

    inputs: PrefixInputs
    cache: object  # DynamicCache holding the prefix keys/values, batch B * copies
    hidden: Tensor  # [B * copies, L, H] prefix states at the chosen layer
    copies: int = 1  # how many times each row has been repeated in the cache so far
    rows: int | None = None  # B before batch-bucket padding (None = no padding): outputs keep these rows


class Backbone(nn.Module):
    def __init__(self, config: BackboneConfig, model: nn.Module, tokenizer, image_processor, image_size: int,
                 base_vocab: int | None = None):
        """base_vocab: the LM vocabulary size before the query tokens were added (lm_head_rows and FAST ids
        count from it); None = the model's output rows as given. from_assets passes the saved value, since
        its model is built with the query rows already in."""
        super().__init__()
        self.config, self.model, self.tokenizer = config, model, tokenizer
        self.image_processor, self.image_size = image_processor, image_size
        self.family: Family = get_family(config.family)
        if config.num_layers is not None:
            keep_decoder_layers(model, config.num_layers)
        out_rows = model.get_output_embeddings().weight.shape[0]
        self.base_vocab = out_rows if base_vocab is None else base_vocab
        if not 0 < self.base_vocab <= out_rows:
            raise ValueError(f"got base_vocab={base_vocab} for a model with {out_rows} output rows; it must be in "
                             f"[1, {out_rows}]")
        strings = config.query_strings()
        tokenizer.add_special_tokens({"additional_special_tokens": strings}, replace_extra_special_tokens=False)
        self.query_ids: list[int] = tokenizer.convert_tokens_to_ids(strings)
        if self.query_ids != list(range(self.query_ids[0], self.query_ids[0] + len(strings))):
            raise ValueError(f"query tokens {strings[:3]}... got non-contiguous ids {self.query_ids[:3]}...; the "
                             "tokenizer already knows some of them: pick another query_token format")
        if max(self.query_ids) >= model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(max(self.query_ids) + 1, mean_resizing=False)
        rows = model.get_input_embeddings().weight.detach()[self.query_ids].float().clone()
        self.query_embed = nn.Parameter(rows)  # [Q, H]
        model.get_input_embeddings().register_forward_hook(self._swap_query_embeddings)
        self.special_ids = {role: tokenizer.convert_tokens_to_ids(s) for role, s in self.family.special_tokens.items()}
        self.label_ids = self._tokenize_labels()  # [N][ids] of config.image_labels, once (they are fixed text)
        # tensor preprocessing on the model's device when the processor is one the family reproduces; None =
        # the Pillow processor (set it to None to force that path)
        self.pixel_pipeline = self.family.tensor_pipeline(image_processor)
        self.reduction = None  # visual token reduction (BackboneConfig.visual_keep < 1)
        if config.visual_keep < 1:
            self.set_reduction(TokenReduction(config.visual_keep, config.visual_merged, config.visual_score))
        self.static_caches = None  # StaticCaches when static_prefix_len is set
        if config.static_prefix_len is not None:
            slots = config.static_prefix_len + self.num_query_tokens
            self.static_caches = StaticCaches(model.config.get_text_config(), slots)
        self._apply_mode()

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **options) -> "Backbone":
        """A randomly initialised model from a named preset ("<family>-tiny" or "<family>-mid")."""
        family_name, _, size = name.rpartition("-")
        if family_name not in FAMILIES or size not in FAMILIES[family_name].presets:
            raise ValueError(f"unknown backbone preset {name!r}; presets: {list_presets()}")
        config = BackboneConfig(source=name, family=family_name, **options)
        family = get_family(family_name)
        tok = byte_level_tokenizer(list(dict.fromkeys(family.special_tokens.values())))
        ids = {role: tok.convert_tokens_to_ids(s) for role, s in family.special_tokens.items()}
        ids.update(pad=tok.pad_token_id, bos=tok.bos_token_id, eos=tok.eos_token_id, vocab=len(tok))
        image_size = family.check_image_size(config.image_size or IMAGE_SIZE[size])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = family.load_class()(family.presets[size](ids, image_size))
        model = model.to(torch_dtype(config.dtype)).eval()
        return cls(config, model, tok, family.image_processor(size=image_size), image_size)

    @classmethod
    def from_pretrained(cls, path: str, family: str | None = None, **options) -> "Backbone":
        """Load a local checkpoint directory (config.json, weights, tokenizer and image processor files)."""
        if family is not None:
            get_family(family)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no checkpoint directory at {path!r} (from_pretrained loads local paths only)")
        config_file = os.path.join(path, "config.json")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"checkpoint directory {path!r} has no config.json")
        if family is None:
            with open(config_file) as f:
                family = family_of_model_type(json.load(f).get("model_type"), path).name
        fam = get_family(family)
        config = BackboneConfig(source=path, family=family, **options)
        if config.image_size is not None:
            raise ValueError(f"got image_size={config.image_size} for the checkpoint {path!r}; a checkpoint keeps "
                             "its own image processor's size (image_size applies to presets only)")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        model = fam.load_class().from_pretrained(path, dtype=torch_dtype(config.dtype)).eval()
        processor = fam.image_processor(path=path)
        return cls(config, model, tok, processor, _processor_side(processor))

    @classmethod
    def from_config(cls, config: BackboneConfig | dict) -> "Backbone":
        """Rebuild from a saved BackboneConfig (a preset name or a local path in `source`)."""
        options = config.to_dict() if isinstance(config, BackboneConfig) else dict(config)
        source, family = options.pop("source"), options.pop("family")
        if source in list_presets():
            return cls.from_preset(source, **options)
        return cls.from_pretrained(source, family=family, **options)

    def save_pretrained(self, path: str) -> None:
        """Write a transformers checkpoint (model, tokenizer, image processor) that from_pretrained reloads."""
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)

    def save_assets(self, path: str | os.PathLike) -> None:
        """Write everything from_assets needs to rebuild this architecture without its source, except the
        weights: the model's config.json, the tokenizer (query tokens included), the image processor, and
        driftkit_backbone.json (BackboneConfig, base_vocab, image_size, query ids)."""
        os.makedirs(path, exist_ok=True)
        self.model.config.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        meta = {"format": ASSETS_FORMAT, "config": self.config.to_dict(), "base_vocab": self.base_vocab,
                "image_size": self.image_size, "query_ids": self.query_ids}
        with open(os.path.join(path, ASSETS_FILE), "w") as f:
            json.dump(meta, f, indent=2)

    @classmethod
    def from_assets(cls, path: str | os.PathLike) -> "Backbone":
        """Rebuild from save_assets' files alone (offline; neither the preset nor the checkpoint directory is
        read): random weights in the family's class built from config.json, the saved tokenizer and image
        processor, and the same query ids, base_vocab, image_size and mode (LoRA adapters injected alike), so
        `load_state_dict(original.state_dict())` restores the original exactly."""
        meta = _read_assets(path)
        config = BackboneConfig(**meta["config"])
        fam = get_family(config.family)
        from transformers import AutoTokenizer

        model = _random_model(fam, path, config)
        tok = AutoTokenizer.from_pretrained(path)
        backbone = cls(config, model, tok, fam.image_processor(path=path), meta["image_size"], meta["base_vocab"])
        if backbone.query_ids != meta["query_ids"]:
            raise ValueError(f"the tokenizer in {path!r} gives query ids {backbone.query_ids[:3]}..., but "
                             f"{ASSETS_FILE} records {meta['query_ids'][:3]}...; the assets do not belong together")
        return backbone

    def _apply_mode(self) -> None:
        mode = self.config.mode
        if mode == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            lora = LoraConfig(r=self.config.lora_rank, lora_alpha=self.config.lora_alpha,
                              target_modules=list(self.config.lora_targets), lora_dropout=0.0)
            inject_adapter_in_model(lora, self.model)
        for name, p in self.model.named_parameters():
            p.requires_grad_(mode == "full" or (mode == "lora" and "lora_" in name))
        self.query_embed.requires_grad_(True)

    def _swap_query_embeddings(self, module, args, output: Tensor) -> Tensor:
        ids = args[0]  # [B, S]
        first, q = self.query_ids[0], len(self.query_ids)
        is_query = (ids >= first) & (ids < first + q)
        if not bool(is_query.any()):
            return output
        rows = self.query_embed.to(output.dtype)[(ids - first).clamp(0, q - 1)]
        return torch.where(is_query[..., None], rows, output)

    # ---- properties -------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def num_query_tokens(self) -> int:
        return len(self.query_ids)

    @property
    def device(self) -> torch.device:
        return self.query_embed.device

    def bin_ids(self, num_rows: int, layout: str = "centres") -> Tensor:
        """[num_rows] vocabulary ids of the bins in class order: base_vocab - num_rows .. base_vocab - 1
        ("centres"), or V - 1, V - 2, .. V - num_rows with V the tokenizer's vocab_size ("openvla", as OpenVLA
        maps its bins)."""
        if layout == "openvla":
            top = self.tokenizer.vocab_size
            return torch.arange(top - 1, top - 1 - num_rows, -1)
        return torch.arange(self.base_vocab - num_rows, self.base_vocab)

    def lm_head_rows(self, num_rows: int, layout: str = "centres") -> tuple[Tensor, Tensor | None]:
        """Weight [num_rows, H] (and bias or None) of the LM head at the bin ids (bin_ids), in class order."""
        head = self.model.get_output_embeddings()
        ids = self.bin_ids(num_rows, layout).to(head.weight.device)
        bias = None if head.bias is None else head.bias.detach()[ids]
        return head.weight.detach()[ids], bias

    # ---- inputs ------------------------------------------------------------------------------------------
    def prepare(self, images, prompts) -> PrefixInputs:
        """Check and lay out B rows of N images and a prompt: [pad.. | N image blocks | prompt | query tokens],
        with BOS where the family puts it. images[i] is one image (N = 1) or a list/tuple of N images, one per
        camera, in the same camera order in every row (each camera gets the family's own image block)."""
        check_batch(images, prompts)
        rows, names = camera_rows(images)
        vision = self._vision(rows, names)
        n = len(rows[0])
        counts = self.family.image_token_counts(self.model.config, vision, len(rows) * n)  # [B * N], row-major
        labels = self._label_ids(n)
        tokens = [self._row_tokens(i, p, counts[i * n:(i + 1) * n], labels) for i, p in enumerate(prompts)]
        return self._pad(tokens, vision)

    def _vision(self, rows: list[list], names: list[list[str]]) -> dict:
        """[B][N] images -> the model's image tensors: tensor operations on the model's device when
        pixel_pipeline is set, else the Pillow processor on the CPU."""
        fam, pairs = self.family, [list(zip(row, row_names)) for row, row_names in zip(rows, names)]
        if self.pixel_pipeline is None:
            pils = [[to_pil(im, where, fam.patch_multiple, fam.name) for im, where in row] for row in pairs]
            return fam.process_images(self.image_processor, pils)
        tensors = [[to_uint8(im, where, fam.patch_multiple, fam.name, self.device) for im, where in row]
                   for row in pairs]
        return self.pixel_pipeline(tensors)

    def _row_tokens(self, i: int, prompt: str, counts: list[int], labels: list[list[int]] | None) -> list[int]:
        """Prefix ids of row i: its images' blocks (counts[j] placeholders for camera j, after the ids labels[j]
        of its label) and the prompt."""
        text = self.config.prompt_format.replace("{prompt}", prompt) + self.family.prompt_suffix
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if (set(self.special_ids.values()) | set(self.query_ids)).intersection(ids):
            raise ValueError(f"prompts[{i}] contains image or query special tokens; pass plain text: {prompt!r}")
        row = self.family.row_tokens(self.special_ids, counts, self.tokenizer.bos_token_id, ids, labels)
        q, n = self.num_query_tokens, sum(counts)
        if len(row) + q > self.config.max_length:
            raise ValueError(
                f"prompts[{i}] needs {len(row)} tokens ({n} image tokens for {len(counts)} image(s) + {len(row) - n} "
                f"text) plus {q} query tokens = {len(row) + q} > max_length={self.config.max_length}; shorten the "
                "prompt, use fewer or smaller images, or raise max_length"
            )
        return row

    def _tokenize_labels(self) -> list[list[int]]:
        """Token ids of each of config.image_labels; a label holding image or query special tokens is an error."""
        labels = self.config.image_labels
        ids = [self.tokenizer(t, add_special_tokens=False).input_ids for t in labels]
        bad = next((t for t, i in zip(labels, ids) if (set(self.special_ids.values()) | set(self.query_ids))
                    .intersection(i)), None)
        if bad is not None:
            raise ValueError(f"image label {bad!r} contains image or query special tokens; pass plain text")
        return ids

    def _label_ids(self, num_images: int) -> list[list[int]] | None:
        """The labels' token ids (None when there are none), checked against the row's images."""
        labels = self.config.image_labels
        if not labels:
            return None
        if len(labels) != num_images:
            raise ValueError(f"got {num_images} image(s) per row but {len(labels)} image_labels "
                             f"{list(labels[:3])}...; give one label per camera")
        return self.label_ids

    def _pad(self, rows: list[list[int]], vision: dict) -> PrefixInputs:
        b, l, q = len(rows), max(len(r) for r in rows), self.num_query_tokens
        pad = self._pad_id()
        ids = torch.full((b, l + q), pad, dtype=torch.long)
        mask = torch.zeros((b, l + q), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, l - len(r):l] = torch.tensor(r)
            mask[i, l - len(r):] = 1
        ids[:, l:] = torch.tensor(self.query_ids)
        dev = self.device
        ids, mask = ids.to(dev), mask.to(dev)
        vision = {k: v.to(dev, self.model.dtype) if v.is_floating_point() else v.to(dev) for k, v in vision.items()}
        extra = {}
        if self.family.mrope:
            extra["mm_token_type_ids"] = (ids == self.special_ids["image"]).int()
            pos, _ = self.model.model.get_rope_index(
                input_ids=ids, mm_token_type_ids=extra["mm_token_type_ids"],
                image_grid_thw=vision["image_grid_thw"], attention_mask=mask,
            )
        else:
            pos = (mask.cumsum(-1) - 1).clamp_min(0) + self.family.position_offset
        if self.family.prefix_lm:
            extra["token_type_ids"] = torch.zeros_like(ids)
            extra["token_type_ids"][:, l:] = 1  # query tokens attend causally, the prefix bidirectionally
        return PrefixInputs(ids, mask, pos, l, vision, extra)

    def set_reduction(self, reduction: TokenReduction | None) -> None:
        """Reduce the visual tokens of every later pass this way (None = keep them all). Training-free, so an
        evaluation can set it on a trained policy (driftkit eval --visual-keep)."""
        if reduction is not None and self.family.visual_features is None:
            supported = sorted(name for name, f in FAMILIES.items() if f.visual_features is not None)
            raise ValueError(f"got visual_keep={reduction.keep}, but visual token reduction is not supported for "
                             f"family {self.family.name!r} (supported: {', '.join(supported)})")
        self.reduction = reduction

    def reduce_visual(self, inputs: PrefixInputs, reduction: TokenReduction | None = None) -> PrefixInputs:
        """Run the vision encoder and keep fewer image tokens (driftkit.backbones.reduce): the placeholders of
        the tokens left out leave input_ids, the mask and the positions with them, and the image features enter
        as inputs_embeds (Qwen3-VL's, with its deepstack levels, as mm_encoder_outputs). Qwen's 3-D positions are
        those of the full layout (kept tokens and the text keep theirs); 1-D positions are renumbered.
        reduction: None = the config's (no-op at visual_keep = 1)."""
        reduction = self.reduction if reduction is None else reduction
        if reduction is None:
            return inputs
        if self.family.visual_features is None:
            raise ValueError(f"visual token reduction is not supported for family {self.family.name!r}")
        if self.family.deepstack:
            return self._reduce_deepstack(inputs, reduction)
        features = self.family.visual_features(self.model, inputs.vision)
        embeds, columns = place_reduced(inputs, features, reduction, self.special_ids["image"],
                                        self.model.get_input_embeddings())
        inputs.inputs_embeds, inputs.vision = embeds, {}
        offset = None if self.family.mrope else self.family.position_offset
        return inputs.regather(columns, self._pad_id(), offset)

    def _reduce_deepstack(self, inputs: PrefixInputs, reduction: TokenReduction) -> PrefixInputs:
        """Qwen3-VL: each deepstack level is reduced as the main features are (same kept tokens, same groups)
        and all of them enter through the model's mm_encoder_outputs; input_ids keep the placeholders of the
        output tokens, so the model places the features and adds the levels at those columns itself."""
        vision = inputs.vision
        out = self.model.model.get_image_features(vision["pixel_values"], vision["image_grid_thw"], return_dict=True)
        reduced, _, columns = reduce_images(inputs, list(out.pooler_output), reduction, self.special_ids["image"])
        out.pooler_output = [r.tokens for r in reduced]
        out.deepstack_features = [[r.apply(f) for r, f in zip(reduced, level)] for level in out.deepstack_features]
        inputs.vision = {"mm_encoder_outputs": {"image": out}}
        return inputs.regather(columns, self._pad_id(), None)

    def _pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    # ---- passes -------------------------------------------------------------------------------------------
    def compile_static(self, mode: str | None = None) -> None:
        """torch.compile the LM's decoder stack in place (driftkit.backbones.static); mode None = "reduce-overhead"
        (CUDA graphs) on a GPU, "default" on the CPU. Pair with static_prefix_len (and batch_buckets) so that
        one graph serves every call. The vision tower stays eager."""
        compile_module(language_model(self.model), mode or default_mode(self.device))

    def encode(self, images, prompts, use_cache: bool = False) -> VLMFeatures:
        """One uncached pass over [prefix | queries] (differentiable); use_cache keeps the KV cache."""
        inputs = self.reduce_visual(self.prepare(images, prompts))
        out = self.model(**inputs.full_kwargs(), use_cache=use_cache, output_hidden_states=True)
        h = out.hidden_states[self.config.layer]  # [B, L + Q, H]
        l = inputs.prefix_len
        mask = inputs.attention_mask[:, :l].bool()
        return VLMFeatures(query=h[:, l:], prefix=h[:, :l], prefix_mask=mask, cache=returned_cache(out))

    def encode_prefix(self, images, prompts) -> PrefixState:
        """Image + prompt once into a DynamicCache; pair with encode_queries. With static shapes
        (static_prefix_len, batch_buckets) the rows are padded to their bucket, the prefix to static_prefix_len,
        and the cache is the bucket's StaticCache, reused: a later encode_prefix of the same bucket overwrites
        it, so use one PrefixState at a time."""
        from transformers import DynamicCache

        cfg, rows = self.config, len(prompts) if isinstance(prompts, (list, tuple)) else None
        padded = rows is not None and bucket_rows(rows, cfg.batch_buckets) != rows
        if padded:
            images, prompts = pad_rows(images, prompts, bucket_rows(rows, cfg.batch_buckets))
        inputs = self.reduce_visual(self.prepare(images, prompts))
        if cfg.static_prefix_len is not None:
            offset = None if self.family.mrope else self.family.position_offset
            inputs = pad_prefix(inputs, cfg.static_prefix_len, self._pad_id(), offset)
            cache = self.static_caches.fresh(inputs.input_ids.shape[0])
        else:
            cache = DynamicCache(config=self.model.config.get_text_config())
        out = self.model(**inputs.prefix_kwargs(), **cache_kwargs(self.model, cache), use_cache=True,
                         output_hidden_states=True)
        return PrefixState(inputs, cache, out.hidden_states[self.config.layer], rows=rows if padded else None)

    def encode_queries(self, prefix: PrefixState, repeats: int = 1) -> VLMFeatures:
        """Suffix pass of the query tokens over a cached prefix, for `repeats` copies of each row.

        -> VLMFeatures with batch B * repeats (row-major: copies of row 0 first). The cache is repeated in
        place (cache.batch_repeat_interleave) and cropped back to the prefix after the pass, so the same
        PrefixState serves further calls with repeats that are multiples of the copies made so far.
        """
        if repeats < 1 or repeats % prefix.copies:
            raise ValueError(f"got repeats={repeats}; the prefix already holds {prefix.copies} copies per row, so "
                             "repeats must be a positive multiple of that")
        grow = repeats // prefix.copies
        if grow > 1 and self.static_caches is not None:
            raise ValueError(f"got repeats={repeats} with static_prefix_len set: a StaticCache has a fixed batch; "
                             "sample several times from one query pass instead (the decoders share the prefix)")
        if grow > 1:
            prefix.cache.batch_repeat_interleave(grow)
            prefix.hidden = prefix.hidden.repeat_interleave(grow, dim=0)
            prefix.copies = repeats
        inputs, l = prefix.inputs, prefix.inputs.prefix_len
        batch_dim = 1 if inputs.position_ids.dim() == 3 else 0
        out = self.model(
            input_ids=inputs.input_ids[:, l:].repeat_interleave(repeats, 0),
            attention_mask=inputs.attention_mask.repeat_interleave(repeats, 0),
            position_ids=inputs.position_ids[..., l:].repeat_interleave(repeats, batch_dim),
            **cache_kwargs(self.model, prefix.cache), use_cache=True, output_hidden_states=True,
        )
        prefix.cache.crop(-self.num_query_tokens)  # back to the prefix alone
        mask = inputs.attention_mask[:, :l].bool().repeat_interleave(repeats, 0)
        keep = slice(None) if prefix.rows is None else slice(0, prefix.rows * repeats)  # bucket padding off
        return VLMFeatures(query=out.hidden_states[self.config.layer][keep], prefix=prefix.hidden[keep],
                           prefix_mask=mask[keep], cache=prefix.cache)

    def layer_keys_values(self, cache, layers, prefix_len: int, rows: int | None = None) -> list[tuple[Tensor, Tensor]]:
        """The prefix keys and values [rows, kv_heads, prefix_len, head_dim] that `cache` (encode(use_cache=True)'s
        or encode_prefix's DynamicCache or StaticCache) holds at each decoder layer index in `layers`, keys rotated
        as the model cached them: the first prefix_len columns (a StaticCache has more slots, encode's cache also
        holds the query tokens) and the first `rows` rows (None = all; batch-bucket padding off). Views of the
        cache, differentiable where the pass was (the layer-wise expert's condition, driftkit.nets.layerwise)."""
        n = len(cache.layers)
        bad = [i for i in layers if not (isinstance(i, int) and 0 <= i < n)]
        if bad or not layers:
            raise ValueError(f"got layers={list(layers)}; the cache holds decoder layers 0..{n - 1}")
        keep = slice(None) if rows is None else slice(0, rows)
        return [(cache.layers[i].keys[keep, :, :prefix_len], cache.layers[i].values[keep, :, :prefix_len])
                for i in layers]


def _read_assets(path: str | os.PathLike) -> dict:
    """driftkit_backbone.json of an assets directory, checked."""
    file = os.path.join(path, ASSETS_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no {ASSETS_FILE} in {path!r}; write the assets with Backbone.save_assets")
    with open(file) as f:
        meta = json.load(f)
    if meta.get("format") != ASSETS_FORMAT:
        raise ValueError(f"{file!r} has format={meta.get('format')!r}; this driftkit reads format {ASSETS_FORMAT}")
    missing = sorted({"config", "base_vocab", "image_size", "query_ids"} - set(meta))
    if missing:
        raise ValueError(f"{file!r} is missing {missing}")
    return meta


def _random_model(fam: Family, path: str | os.PathLike, config: BackboneConfig) -> nn.Module:
    """The family's model class from path/config.json with random (seeded) weights, cast like the original:
    presets are built in float32 and cast (as from_preset), checkpoints are built in their dtype (as
    from_pretrained), which matters for buffers such as rotary frequencies in half precision."""
    model_class = fam.load_class()
    model_config = model_class.config_class.from_pretrained(path)
    dtype = torch_dtype(config.dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.source in list_presets():
            model = model_class(model_config).to(dtype)
        else:
            model = model_class._from_config(model_config, dtype=dtype)
    return model.eval()


def _processor_side(processor) -> int:
    size = getattr(processor, "size", None) or {}
    if getattr(processor, "temporal_patch_size", None) is not None:  # Qwen: size is a pixel budget
        if size.get("longest_edge") and size.get("shortest_edge") == size["longest_edge"]:
            return math.isqrt(int(size["longest_edge"]))  # min = max pixels: one fixed square side
        return 224  # any size within the budget; 224 is a typical input side
    for key in ("height", "longest_edge"):
        if key in size:
            return int(size[key])
    return 224
