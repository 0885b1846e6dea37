"""VLMPolicy: a backbone and any driftkit decoder as one module.

    policy = VLMPolicy(Backbone.from_preset("smolvlm-tiny", num_query_tokens=4),
                       make_decoder("flow", cond_dim=64, target_shape=(8, 4), net="expert"))
    out = policy.loss({"images": imgs, "prompts": texts, "target": actions})   # DecoderLoss
    y = policy.sample(imgs, texts, num_samples=K)                              # [B, K, T, D]
    policy.save_pretrained(dir); VLMPolicy.from_pretrained(dir)                # json config + safetensors

Which backbone features the decoder sees (`cond`):
    pooled   [B, Q * H]      query states flattened (for pooled nets such as "mlp")
    query    [B, Q, H]       query states (for "expert" and "lm_tokens")
    context  [B, L + Q, H]   prefix then query states, padding zeroed (for "expert")
"""

from __future__ import annotations

import json
import os

import torch
from torch import Tensor, nn

from driftkit.backbones.backbone import Backbone
from driftkit.backbones.config import VLMFeatures
from driftkit.decoders.lm_tokens import LMTokensDecoder
from driftkit.decoders import Decoder, DecoderLoss, make_decoder
from driftkit.errors import check_choice, check_positive

COND_KINDS = ("pooled", "query", "context")
CONFIG_FILE, WEIGHTS_FILE = "policy.json", "policy.safetensors"


class VLMPolicy(nn.Module):
    def __init__(self, backbone: Backbone, decoder: Decoder, cond: str = "auto"):
        super().__init__()
        self.backbone, self.decoder = backbone, decoder
        h, q, c = backbone.hidden_size, backbone.num_query_tokens, decoder.config.cond_dim
        if cond == "auto":
            cond = "pooled" if c == q * h else "query"
        check_choice("cond", cond, COND_KINDS)
        want = q * h if cond == "pooled" else h
        if c != want:
            raise ValueError(f"decoder has cond_dim={c}, but cond={cond!r} features of this backbone have width "
                             f"{want} (hidden {h}, {q} query tokens): use cond_dim={h} or {q * h}")
        self.cond = cond
        for module in decoder.modules():  # the LM head's bin rows seed any lm_tokens decoder (also a residual base)
            if isinstance(module, LMTokensDecoder):
                module.load_lm_head(*backbone.lm_head_rows(module.config.num_bins))

    def fit_normalizer(self, target: Tensor, mask: Tensor | None = None):
        """Fit the decoder's target statistics on training chunks [N, T, D] (see Decoder.fit_normalizer)."""
        return self.decoder.fit_normalizer(target, mask)

    def condition(self, feats: VLMFeatures) -> Tensor:
        """The decoder's cond from backbone features, float32."""
        x = {"pooled": feats.pooled, "query": feats.query}.get(self.cond)
        return (feats.context if x is None else x).float()

    def features(self, images, prompts) -> VLMFeatures:
        """Backbone features with gradients where they can reach trainable weights.

        A frozen backbone has nothing trainable in the prefix (the query embeddings only enter the query
        pass), so the prefix runs without autograd into a cache and only the query pass is differentiated:
        the same gradients for a fraction of the activation memory.
        """
        if self.backbone.config.mode != "frozen":
            return self.backbone.encode(images, prompts)
        with torch.no_grad():
            prefix = self.backbone.encode_prefix(images, prompts)
        return self.backbone.encode_queries(prefix)

    def loss(self, batch: dict) -> DecoderLoss:
        """batch: images (B), prompts (B), target [B, T, D], optional mask [B, T, D] bool."""
        missing = sorted({"images", "prompts", "target"} - set(batch))
        if missing:
            raise ValueError(f"batch is missing {missing}; it needs images, prompts, target (and optionally mask)")
        feats = self.features(batch["images"], batch["prompts"])
        target = batch["target"].to(self.backbone.device)
        mask = batch.get("mask")
        return self.decoder.loss(self.condition(feats), target, None if mask is None else mask.to(target.device))

    @torch.no_grad()
    def sample(self, images, prompts, num_samples: int = 1, steps: int | None = None,
               generator: torch.Generator | None = None, repeat_cache: bool = False) -> Tensor:
        """-> [B, K, T, D]. The image + prompt prefix is encoded once into a KV cache.

        repeat_cache=False: one query pass, and the decoder batches the K samples over the shared cond.
        repeat_cache=True: the cache is repeated K times (cache.batch_repeat_interleave) and the query pass runs
        for every copy (needed when copies differ, e.g. per-sample suffix tokens); with the same generator
        both give the same samples.
        """
        check_positive("num_samples", num_samples)
        prefix = self.backbone.encode_prefix(images, prompts)
        b, k = len(prompts), num_samples
        if not repeat_cache:
            return self.decoder.sample(self.condition(self.backbone.encode_queries(prefix)), k, steps, generator)
        cond = self.condition(self.backbone.encode_queries(prefix, repeats=k))  # [B * K, ...]
        y = self.decoder.sample(cond, 1, steps, generator)  # [B * K, 1, T, D]
        return y.view(b, k, *y.shape[2:])

    # ---- persistence ----------------------------------------------------------------------------------------
    def save_pretrained(self, path: str, include_frozen: bool = True) -> None:
        """Write policy.json (backbone + decoder configs) and policy.safetensors.

        include_frozen=False stores only what trains (query embeddings, LoRA or all weights per mode, the decoder)
        and reloads the frozen weights from the backbone's source (its preset or checkpoint directory).
        """
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        config = {
            "backbone": self.backbone.config.to_dict(),
            "decoder": {"name": type(self.decoder).name, "config": self.decoder.config.to_dict()},
            "cond": self.cond,
            "include_frozen": include_frozen,
        }
        with open(os.path.join(path, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2)
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        state, seen = {}, set()
        for name, tensor in self.state_dict().items():
            frozen_backbone = name.startswith("backbone.model.") and name not in trainable
            if (frozen_backbone and not include_frozen) or tensor.data_ptr() in seen:
                continue  # tied weights (e.g. PaliGemma's LM head) are stored once and re-tied on load
            seen.add(tensor.data_ptr())
            state[name] = tensor.detach().contiguous().cpu()
        save_file(state, os.path.join(path, WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, path: str) -> "VLMPolicy":
        from safetensors.torch import load_file

        config_file = os.path.join(path, CONFIG_FILE)
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"no {CONFIG_FILE} in {path!r}; save with VLMPolicy.save_pretrained")
        with open(config_file) as f:
            config = json.load(f)
        backbone = Backbone.from_config(config["backbone"])
        options = dict(config["decoder"]["config"])
        decoder = make_decoder(config["decoder"]["name"], options.pop("cond_dim"), tuple(options.pop("target_shape")),
                               **options)
        policy = cls(backbone, decoder, cond=config["cond"])
        result = policy.load_state_dict(load_file(os.path.join(path, WEIGHTS_FILE)), strict=False)
        tied = {n for n in result.missing_keys if n.endswith("lm_head.weight")}
        missing = [n for n in result.missing_keys if n not in tied and
                   (config["include_frozen"] or not n.startswith("backbone.model."))]
        if missing or result.unexpected_keys:
            raise ValueError(f"{path!r} does not match the rebuilt policy: missing {missing[:5]}, "
                             f"unexpected {result.unexpected_keys[:5]}")
        return policy
