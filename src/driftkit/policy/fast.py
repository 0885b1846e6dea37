"""FASTPolicy: FAST tokens generated through the VLM's own LM head as the base prediction, refined by a
residual decoder (DRIFT's tokenizer base predictor). Everything else (cameras, prompt, state, cond) is the
VLM policy's.

The FAST tokenizer is fitted on the training chunks when training starts (for_training) and saved with the
policy, so a saved FAST policy rebuilds its exact vocabulary.

Training base (train_base): "teacher_forced" decodes the argmax tokens of the teacher-forced pass the
cross-entropy already ran, so the refiner's base costs no extra LM pass; it is optimistic (every token sees the
true previous ones), which the refiner's automatic sigma partly absorbs. "generated" runs greedy generation on
every batch so the refiner trains on the same kind of base it refines at test time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from driftkit.decoders.base import DecoderLoss
from driftkit.decoders.residual import ResidualDecoder
from driftkit.errors import check_choice, check_positive
from driftkit.policy.base import action_target, register_policy
from driftkit.policy.vlm import VLMPolicy, VLMPolicyConfig, saved_backbone
from driftkit.rtc import Inpaint
from driftkit.timing import StageTimer, stage_of

FAST_ASSETS = "fast_tokenizer"


@dataclass
class FASTPolicyConfig(VLMPolicyConfig):
    """A VLM policy whose base prediction is FAST tokens through the LM head; `decoder` is the refiner."""

    kind = "fast"

    decoder: str = "residual_flow"
    """The refiner: residual_flow or residual_drift (its base is the decoded FAST tokens)."""
    fast_vocab_size: int = 256
    """FAST BPE vocabulary (alphabet + merges), taken from the VLM's free top ids."""
    fast_scale: float = 10.0
    """DCT coefficient scale before rounding (FAST's precision knob)."""
    end_token: str = "eos"
    """End of action: the tokenizer's EOS ("eos") or one more free id ("extra")."""
    train_base: str = "teacher_forced"
    """The refiner's base in training: teacher_forced or generated (see the module docstring)."""

    def __post_init__(self):
        check_choice("decoder", self.decoder, ("residual_flow", "residual_drift"))
        super().__post_init__()
        check_positive("fast_vocab_size", self.fast_vocab_size)
        check_positive("fast_scale", self.fast_scale)
        check_choice("end_token", self.end_token, ("eos", "extra"))
        check_choice("train_base", self.train_base, ("teacher_forced", "generated"))
        if self.decoder_options.get("base", "external") != "external":
            raise ValueError(f"got decoder_options base={self.decoder_options['base']!r}; a FAST policy's refiner "
                             "refines the FAST tokens (base='external')")

    def default_decoder_options(self) -> dict:
        return {**super().default_decoder_options(), "base": "external"}


@register_policy
class FASTPolicy(VLMPolicy):
    config_class = FASTPolicyConfig

    def __init__(self, config: FASTPolicyConfig, backbone=None, tokenizer=None):
        """tokenizer: a fitted FASTTokenizer (for_training fits one on the data; from_assets loads it)."""
        from driftkit.backbones.fast_head import FASTHeadConfig, FASTLMHead

        if tokenizer is None:
            raise ValueError("a FAST policy needs a fitted FAST tokenizer: build it with "
                             "FASTPolicy.for_training(config, dataset) or load one with from_pretrained")
        super().__init__(config, backbone)
        self.head = FASTLMHead(self.backbone, tokenizer, FASTHeadConfig(end_token=config.end_token),
                               owns_backbone=False)
        if (self.head.horizon, self.head.dim) != config.target_shape:
            raise ValueError(f"the FAST tokenizer was fitted on (T, D) = {(self.head.horizon, self.head.dim)}, but "
                             f"the config has (horizon, action_dim) = {config.target_shape} (T={self.head.horizon}, "
                             f"D={self.head.dim})")
        if not isinstance(self.decoder, ResidualDecoder):
            raise ValueError(f"the refiner must be a residual decoder, got {config.decoder!r}")

    @classmethod
    def for_training(cls, config: FASTPolicyConfig, dataset) -> "FASTPolicy":
        from driftkit.normalize import Normalizer, NormStats
        from driftkit.tokenizers.fast import FASTTokenizer
        from driftkit.train.data import action_chunks, dataset_stats

        stats = dataset_stats(dataset, config.stat_keys())
        chunks, mask = action_chunks(dataset)  # [N, T, D], [N, T, D]
        norm, norm_stats = Normalizer(config.action_dim, "quantile"), NormStats.from_data(chunks, mask)
        norm.set_stats(norm_stats)  # FAST expects chunks in [-1, 1]: q01/q99 of the training chunks
        tokenizer = FASTTokenizer.fit(norm.normalize(chunks), vocab_size=config.fast_vocab_size,
                                      scale=config.fast_scale)
        policy = cls(config, tokenizer=tokenizer)
        policy.set_stats(stats)
        policy.head.set_stats(norm_stats)
        return policy

    # ---- the contract ----------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> DecoderLoss:
        """FAST cross-entropy + the refiner's loss around the decoded (detached) FAST base."""
        images, prompts, state = self.inputs(batch)
        target, mask = action_target(batch, self.config, len(prompts))
        target = target.to(self.backbone.device)
        mask = None if mask is None else mask.to(target.device)
        tf = self.head.teacher_forced(images, prompts, target)
        if self.config.train_base == "teacher_forced":
            base = self.head.decode(tf.predicted)
        else:
            base = self.head.generate(images, prompts)
        c = self.condition(tf.features, state)
        refine = self.decoder.loss_with_base(c.cond, target, base.actions.to(target), mask, cond_mask=c.mask)
        loss = tf.loss + refine.loss
        metrics = {**tf.metrics, **{k: v for k, v in refine.metrics.items() if k != "loss"}}
        metrics.update(refiner_loss=refine.loss.item(), base_invalid=(~base.valid).float().mean().item(),
                       loss=loss.item())
        return DecoderLoss(loss, metrics)

    @torch.no_grad()
    def sample(self, obs: dict, num_samples: int = 1, steps: int | None = None,
               generator: torch.Generator | None = None, timer: StageTimer | None = None,
               temperature: float | None = None, inpaint: Inpaint | None = None) -> Tensor:
        """Generate FAST once per row from a cached prefix, decode, and refine K times (batched); inpaint
        guides the refiner (the FAST base itself is generated unguided)."""
        check_positive("num_samples", num_samples)
        stage = stage_of(timer)
        with stage("preprocess"):
            images, prompts, state = self.inputs(obs)
        with stage("prefix"):
            prefix = self.backbone.encode_prefix(images, prompts)
        with stage("decoder"):
            gen = self.head.generate_from_prefix(prefix)
            c = self.condition(gen.features, state)
            return self.decoder.sample_with_base(c.cond, gen.actions.to(c.cond), num_samples, steps, generator,
                                                 temperature=temperature, cond_mask=c.mask, inpaint=inpaint)

    def nfe(self, steps: int | None = None) -> int:
        """LM passes of the longest FAST generation (T * D + 1 at most) plus the refiner's evaluations."""
        longest = self.head.config.max_new_tokens or self.config.horizon * self.config.action_dim + 1
        return longest + self.decoder.nfe(steps)

    # ---- persistence --------------------------------------------------------------------------------------------
    def save_assets(self, path: Path) -> None:
        super().save_assets(path)
        self.head.tokenizer.save(Path(path) / FAST_ASSETS)

    @classmethod
    def from_assets(cls, config: FASTPolicyConfig, path: Path) -> "FASTPolicy":
        from driftkit.tokenizers.fast import FASTTokenizer

        return cls(config, saved_backbone(path), FASTTokenizer.load(Path(path) / FAST_ASSETS))
