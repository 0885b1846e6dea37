"""VLMPolicy: a VLM backbone (any family, preset or local checkpoint) and any driftkit decoder.

    cfg = VLMPolicyConfig(backbone="smolvlm-tiny", decoder="flow", horizon=8, action_dim=4, state_dim=39,
                          cameras=("observation.images.corner2",))
    policy = VLMPolicy(cfg)
    out = policy(batch)                         # LeRobot keys: observation.images.<cam>, observation.state, task
    y = policy.sample(obs, num_samples=K)       # prefix encoded once into a KV cache, K samples from it

The cameras of one observation enter the prompt as successive images, the instruction (`task`) as its text,
then the query tokens. Which features the decoder sees (`cond`):
    pooled   [B, Q * H]      query states flattened (for pooled nets such as "mlp")
    query    [B, Q, H]       query states (for "expert" and "lm_tokens")
    context  [B, L + Q, H]   prefix then query states, padding zeroed (for "expert")
    cache    [B, L (+ 1), C] the prefix keys/values of the VLM layers the expert reads, packed
                             (driftkit.nets.layerwise.LayerCache; for "layerwise_expert"), C = 2 * layers *
                             kv_heads * head_dim; no query pass runs, and the state is one more row

The state vector goes to the decoder, not into the prefix: a zero-initialised linear map of the normalised
state is added to every query state. The prefix then holds exactly the image + text inputs a pretrained VLM
was trained on (as pi0 feeds the state to its action expert rather than to the VLM), the state costs no
prefix tokens, and an untrained projection leaves the pretrained features unchanged. With cond="cache" the
zero-initialised map of the state is one extra row of keys/values that every expert layer attends to.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from driftkit.decoders.registry import make_decoder
from driftkit.errors import check_choice, check_finite, check_positive
from driftkit.normalize import NormStats, Normalizer
from driftkit.policy.base import Condition, Policy, check_batch_shape, register_policy, require
from driftkit.policy.config import PolicyConfig
from driftkit.policy.keys import ACTION_KEY, STATE_KEY, TASK_KEY
from driftkit.timing import StageTimer, stage_of

COND_KINDS = ("pooled", "query", "context", "cache")
CACHE_LAYERS = ("all", "first_half")
BACKBONE_ASSETS = "backbone"


@dataclass
class VLMPolicyConfig(PolicyConfig):
    """A VLM read out at query tokens, feeding any decoder."""

    kind = "vlm"

    backbone: str = "smolvlm-tiny"
    """A backbone preset (driftkit.backbones.list_presets()) or a local transformers checkpoint directory."""
    mode: str = "full"
    """frozen (only the query-token embeddings train), lora, or full."""
    num_query_tokens: int = 4
    """Q, query tokens appended after the prompt; lm_tokens needs at least T * D of them."""
    cond: str = "context"
    """Which backbone features the decoder sees: pooled, query, context or cache (see the module docstring)."""
    cache_layers: str = "all"
    """cond="cache": which VLM decoder layers the layer-wise expert reads, one per expert block in order: "all",
    or "first_half" (SmolVLA's proportions: layers 0 .. ceil(N / 2) - 1)."""
    image_size: int | None = None
    """Presets only: the backbone's input side in pixels (None = the preset's default)."""
    image_shape: tuple[int, ...] = ()
    """(3, H, W) of every camera image, filled in from the training data; checked on every call."""
    prompt_format: str = "{prompt}"
    """Text around the instruction, with {prompt} replaced by it (e.g. the tail of a chat template)."""
    gradient_checkpointing: bool = False
    """Recompute the backbone's activations in the backward pass (families whose model supports it)."""
    backbone_options: dict = field(default_factory=dict)
    """Further BackboneConfig fields, e.g. {"dtype": "bfloat16", "lora_rank": 8, "layer": -2}; static shapes for
    compiled sampling: {"static_prefix_len": 96, "batch_buckets": [1, 8]}; fewer visual tokens: {"visual_keep": 0.5}."""
    compile: str = "none"
    """torch.compile the sampling path when the policy is built (VLMPolicy.compile): "none", "auto" (CUDA graphs,
    "reduce-overhead", when a GPU is present, else "default") or a torch.compile mode."""

    def __post_init__(self):
        super().__post_init__()
        check_choice("cond", self.cond, COND_KINDS)
        self._check_cache()
        check_positive("num_query_tokens", self.num_query_tokens)
        from driftkit.backbones.static import COMPILE_MODES

        check_choice("compile", self.compile, ("none", "auto", *COMPILE_MODES))
        self.image_shape = tuple(int(s) for s in self.image_shape)
        if self.image_shape and (len(self.image_shape) != 3 or self.image_shape[0] != 3):
            raise ValueError(f"got image_shape={self.image_shape}, must be () or (3, H, W)")
        self.backbone_config()  # validates mode, image_size and backbone_options now

    def default_decoder_options(self) -> dict:
        if self.cond == "cache":
            return {"net": "layerwise_expert"}
        return {"net": "mlp" if self.cond == "pooled" else "expert"}

    def _check_cache(self) -> None:
        """cond="cache" and the layer-wise expert only go together; its cache must be kept in training."""
        check_choice("cache_layers", self.cache_layers, CACHE_LAYERS)
        net = {**self.default_decoder_options(), **self.decoder_options}.get("net")
        if (self.cond == "cache") != (net == "layerwise_expert"):
            raise ValueError(f"got cond={self.cond!r} with net={net!r}: the 'layerwise_expert' net reads the packed "
                             "layer cache of cond='cache', and only that net does; use the two together")
        if self.cond != "cache":
            return
        if "lm_tokens" in (self.decoder, self.decoder_options.get("base")):
            raise ValueError("got lm_tokens with cond='cache': lm_tokens reads query states through the LM head, and "
                             "cond='cache' holds the prefix keys/values only; use cond='query' or 'context'")
        if self.gradient_checkpointing:
            raise ValueError("got gradient_checkpointing=True with cond='cache': transformers keeps no KV cache "
                             "under gradient checkpointing, and the cache is the condition")

    @property
    def has_unused_parameters(self) -> bool:
        return True  # the backbone's LM head (and parts of its vision tower) take no part in the loss

    def item_spec(self) -> dict:
        spec = {**super().item_spec(), TASK_KEY: (None, "the instruction, from meta/tasks.parquet")}
        for key in self.cameras if self.image_shape else ():
            spec[key] = (self.image_shape, "model.image_shape")
        return spec

    def with_data(self, dataset) -> "VLMPolicyConfig":
        cfg = super().with_data(dataset)
        if not cfg.cameras:
            raise ValueError("a VLM policy needs at least one camera, and the dataset has none")
        if cfg.image_shape:
            return cfg
        item = dataset[0]  # the base class checked that every named camera is in the dataset
        shapes = {k: tuple(item[k].shape) for k in cfg.cameras}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"the cameras have different image shapes {shapes}; use cameras of one size")
        return dataclasses.replace(cfg, image_shape=next(iter(shapes.values())))

    def backbone_config(self):
        from driftkit.backbones.config import BackboneConfig

        reserved = {"source", "mode", "num_query_tokens", "image_size", "prompt_format"}
        clash = sorted(reserved & set(self.backbone_options))
        if clash:
            raise ValueError(f"backbone_options {clash} are fields of the policy config itself; set them there")
        known = {f.name for f in dataclasses.fields(BackboneConfig)}
        unknown = sorted(set(self.backbone_options) - known)
        if unknown:
            raise ValueError(f"unknown backbone_options {unknown}; known: {sorted(known - reserved)}")
        return BackboneConfig(source=self.backbone, mode=self.mode, num_query_tokens=self.num_query_tokens,
                              image_size=self.image_size, prompt_format=self.prompt_format, **self.backbone_options)


def build_backbone(config: VLMPolicyConfig):
    """The backbone a config names: a preset is built from its config, a local directory is loaded."""
    from driftkit.backbones import Backbone, list_presets

    if config.backbone not in list_presets() and not os.path.isdir(config.backbone):
        raise ValueError(f"got backbone={config.backbone!r}: neither a preset ({list_presets()}) nor a local "
                         "checkpoint directory")
    return Backbone.from_config(config.backbone_config())


@register_policy
class VLMPolicy(Policy):
    config_class = VLMPolicyConfig

    def __init__(self, config: VLMPolicyConfig, backbone=None):
        """backbone: an already built Backbone of this config (from_assets passes the rebuilt one)."""
        super().__init__(config)
        self.backbone = backbone if backbone is not None else build_backbone(config)
        h, q = self.backbone.hidden_size, self.backbone.num_query_tokens
        options = {**config.default_decoder_options(), **config.decoder_options}
        cond_dim = q * h if config.cond == "pooled" else h
        self.cache_layers: list[int] = []  # cond="cache": the VLM decoder layers the expert reads
        if config.cond == "cache":
            cond_dim, options = self._cache_layout(options)
        self.decoder = make_decoder(config.decoder, cond_dim, config.target_shape, **options)
        self.decoder.init_from_lm_head(self.backbone.lm_head_rows)
        self.state_proj = None
        if config.state_dim:
            self.state_proj = nn.Linear(config.state_dim, cond_dim if config.cond == "cache" else h)
            nn.init.zeros_(self.state_proj.weight)
            nn.init.zeros_(self.state_proj.bias)
        kind = "mean_std" if config.normalize_state else "none"
        self.state_normalizer = Normalizer(max(config.state_dim, 1), kind)
        if config.gradient_checkpointing:
            self._enable_checkpointing()
        if config.compile != "none":
            self.compile_static(None if config.compile == "auto" else config.compile)

    def compile_static(self, mode: str | None = None) -> None:
        """torch.compile, in place, the backbone's LM and the decoder's nets (its one step function); mode None =
        "reduce-overhead" (CUDA graphs) when a GPU is present, else "default". Compilation happens on the first
        calls: driftkit.backbones.static.warm_up(policy) makes them at load."""
        from driftkit.backbones.static import compile_nets, default_mode

        mode = mode or default_mode(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        self.backbone.compile_static(mode)
        compile_nets(self.decoder, mode)

    def _cache_layout(self, options: dict) -> tuple[int, dict]:
        """cond="cache": set the layers read -> (packed width C, the decoder options with SmolVLA's proportions
        as defaults: one expert block per layer read, expert width 0.75x the VLM's)."""
        text = self.backbone.model.config.get_text_config()
        n = text.num_hidden_layers
        self.cache_layers = list(range(n if self.config.cache_layers == "all" else (n + 1) // 2))
        width = max(8, round(0.75 * self.backbone.hidden_size / 8) * 8)
        options = {"depth": len(self.cache_layers), "hidden_dim": width, **options}
        if options["depth"] != len(self.cache_layers):
            raise ValueError(f"got depth={options['depth']} with cond='cache' and cache_layers="
                             f"{self.config.cache_layers!r}: the layer-wise expert has one block per VLM layer read "
                             f"({len(self.cache_layers)} of {n})")
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        return 2 * len(self.cache_layers) * text.num_key_value_heads * head_dim, options

    def _enable_checkpointing(self) -> None:
        model = self.backbone.model
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ValueError(f"gradient_checkpointing=True, but the {self.backbone.family.name} model "
                             f"({type(model).__name__}) does not support it")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ---- statistics -------------------------------------------------------------------------------------
    def set_stats(self, stats: dict[str, NormStats]) -> None:
        self.decoder.set_stats(stats[ACTION_KEY])
        if self.config.state_dim and self.config.normalize_state:
            self.state_normalizer.set_stats(stats[STATE_KEY])

    # ---- inputs -------------------------------------------------------------------------------------------
    def inputs(self, obs: dict) -> tuple[list, list[str], Tensor | None]:
        """obs -> (images: B lists of camera tensors [3, H, W], prompts: B strings, state [B, S] or None)."""
        cfg = self.config
        prompts = require(obs, TASK_KEY, " (the language instruction, one string per row)")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        b = len(prompts)
        if not cfg.cameras:
            raise ValueError("config.cameras is empty: name the camera features (the trainer fills them from the "
                             "dataset)")
        views = []
        for key in cfg.cameras:
            image = require(obs, key, f" (config.cameras = {list(cfg.cameras)})")
            check_batch_shape(key, image, cfg.image_shape or tuple(image.shape[1:]), b)
            views.append(image)
        images = [[view[i] for view in views] for i in range(b)]
        state = None
        if cfg.state_dim:
            state = require(obs, STATE_KEY, f" (config.state_dim={cfg.state_dim}; 0 = no state input)")
            check_batch_shape(STATE_KEY, state, (cfg.state_dim,), b)
            state = state.float().to(self.backbone.device)
            check_finite(STATE_KEY, state)
        return images, prompts, state

    def condition(self, feats, state: Tensor | None) -> Condition:
        """The decoder's cond (float32) from backbone features, with the projected state added to the query
        states; for cond="context" the mask marks the prefix's left padding (the query rows are all real)."""
        if state is not None:
            shift = self.state_proj(self.state_normalizer.normalize(state)).to(feats.query.dtype)
            feats = dataclasses.replace(feats, query=feats.query + shift[:, None])
        if self.config.cond == "pooled":
            return Condition(feats.pooled.float())
        if self.config.cond == "query":
            return Condition(feats.query.float())
        real = feats.query.new_ones(feats.query.shape[:2], dtype=torch.bool)
        return Condition(torch.cat([feats.prefix, feats.query], 1).float(), torch.cat([feats.prefix_mask, real], 1))

    def layer_cache(self, images, prompts):
        """cond="cache": the prefix keys/values of self.cache_layers (driftkit.nets.layerwise.LayerCache). With
        gradients into a full or LoRA backbone they come from one differentiable pass (encode keeps its cache);
        otherwise from encode_prefix without autograd (a frozen prefix has nothing to train). No query pass."""
        from driftkit.nets.layerwise import LayerCache

        bb = self.backbone
        if torch.is_grad_enabled() and bb.config.mode != "frozen":
            feats = bb.encode(images, prompts, use_cache=True)
            cache, l, mask, rows = feats.cache, feats.prefix.shape[1], feats.prefix_mask, None
        else:
            with torch.no_grad():
                pre = bb.encode_prefix(images, prompts)
            # rows: the prompts' own (a static-shape batch bucket pads the cache with more)
            cache, l, rows = pre.cache, pre.inputs.prefix_len, len(prompts)
            mask = pre.inputs.attention_mask[:rows, :l].bool()
        kv = bb.layer_keys_values(cache, self.cache_layers, l, rows)
        return LayerCache(tuple(k for k, _ in kv), tuple(v for _, v in kv), mask)

    def cache_condition(self, layers, state: Tensor | None) -> Condition:
        """LayerCache -> the decoder's cond [B, L, C] (float32, packed), plus one row from the state when used."""
        cond, mask = layers.packed().float(), layers.mask
        if state is not None:
            row = self.state_proj(self.state_normalizer.normalize(state))[:, None]  # [B, 1, C]
            cond, mask = torch.cat([cond, row], 1), torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        return Condition(cond, mask)

    def features(self, images, prompts):
        """Backbone features with gradients where they can reach trainable weights.

        A frozen backbone has nothing trainable in the prefix (the query embeddings only enter the query
        pass), so the prefix runs without autograd into a cache and only the query pass is differentiated:
        the same gradients for a fraction of the activation memory."""
        if self.backbone.config.mode != "frozen":
            return self.backbone.encode(images, prompts)
        with torch.no_grad():
            prefix = self.backbone.encode_prefix(images, prompts)
        return self.backbone.encode_queries(prefix)

    # ---- the contract ---------------------------------------------------------------------------------------
    def encode(self, obs: dict, timer: StageTimer | None = None) -> Condition:
        """obs -> the decoder's condition. Under no_grad (sampling) the image + prompt prefix is encoded once
        into a KV cache and the query tokens run over it; in training, see features."""
        stage = stage_of(timer)
        with stage("preprocess"):
            images, prompts, state = self.inputs(obs)
        with stage("prefix"):
            if self.config.cond == "cache":
                layers = self.layer_cache(images, prompts)
            elif torch.is_grad_enabled():
                feats = self.features(images, prompts)
            else:
                feats = self.backbone.encode_queries(self.backbone.encode_prefix(images, prompts))
        if self.config.cond == "cache":
            return self.cache_condition(layers, state)
        return self.condition(feats, state)

    # ---- persistence ----------------------------------------------------------------------------------------
    def save_assets(self, path: Path) -> None:
        self.backbone.save_assets(Path(path) / BACKBONE_ASSETS)

    @classmethod
    def from_assets(cls, config: VLMPolicyConfig, path: Path) -> "VLMPolicy":
        return cls(config, saved_backbone(path))


def saved_backbone(path: Path):
    """The backbone rebuilt from a policy directory's assets (random weights until the policy's are loaded)."""
    from driftkit.backbones import Backbone

    assets = Path(path) / BACKBONE_ASSETS
    if not assets.is_dir():
        raise FileNotFoundError(f"{assets} not found: a VLM policy directory keeps its backbone's config, "
                                "tokenizer and processor there")
    return Backbone.from_assets(str(assets))

