"""FASTResidualPolicy: FAST tokens generated through the VLM's LM head as the base, refined by a residual
decoder built with base="external" (DRIFT's tokenizer base predictor)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from driftkit.backbones.backbone import Backbone
from driftkit.backbones.config import VLMFeatures
from driftkit.backbones.fast_head import FASTGeneration, FASTLMHead, unpack_batch
from driftkit.backbones.policy import COND_KINDS
from driftkit.decoders.base import DecoderLoss
from driftkit.decoders.residual import ResidualDecoder
from driftkit.errors import check_choice, check_positive
from driftkit.tokenizers.fast import FASTDecoded


@dataclass
class FASTResidualOutput:
    """What FASTResidualPolicy.predict returns."""

    samples: Tensor  # [B, K, T, D] refined chunks
    base: FASTGeneration  # the decoded FAST prediction they refine (base.actions [B, T, D], base.valid, base.nfe)
    nfe: int  # LM passes (base.nfe) + refiner evaluations


class FASTResidualPolicy(nn.Module):
    """FAST tokens from the VLM as the base, a residual decoder (base="external") refining them.

    Training base (train_base): "teacher_forced" decodes the argmax tokens of the teacher-forced pass the
    cross-entropy already ran, so the refiner's base costs no extra LM pass; it is optimistic (every token
    sees the true previous ones), which the refiner's automatic sigma partly absorbs. "generated" runs greedy
    generation on every batch (T * D + 1 more sequential passes at most) so the refiner trains on the same
    kind of base it refines at test time.
    """

    def __init__(self, backbone: Backbone, head: FASTLMHead, refiner: ResidualDecoder, cond: str = "auto",
                 train_base: str = "teacher_forced"):
        super().__init__()
        if head.backbone is not backbone:
            raise ValueError("head was built on a different backbone than the one passed to the policy")
        if not isinstance(refiner, ResidualDecoder) or refiner.base is not None:
            got = getattr(getattr(refiner, "config", None), "base", None)
            raise ValueError(f"refiner must be a residual decoder made with base='external', got "
                             f"{type(refiner).__name__} with base={got!r}")
        if tuple(refiner.config.target_shape) != (head.horizon, head.dim):
            raise ValueError(f"refiner has target_shape={tuple(refiner.config.target_shape)}, but the FAST "
                             f"tokenizer was fitted on (T, D) = {(head.horizon, head.dim)}")
        h, q, c = backbone.hidden_size, backbone.num_query_tokens, refiner.config.cond_dim
        cond = ("pooled" if c == q * h else "query") if cond == "auto" else cond
        check_choice("cond", cond, COND_KINDS)
        if c != (q * h if cond == "pooled" else h):
            raise ValueError(f"refiner has cond_dim={c}, but cond={cond!r} features of this backbone have width "
                             f"{q * h if cond == 'pooled' else h}: use cond_dim={h} or {q * h}")
        check_choice("train_base", train_base, ("teacher_forced", "generated"))
        self.head, self.refiner, self.cond, self.train_base = head, refiner, cond, train_base

    @property
    def backbone(self) -> Backbone:
        return self.head.backbone

    def fit_normalizer(self, target: Tensor, mask: Tensor | None = None) -> None:
        """Quantile statistics for the FAST tokens and the refiner's own statistics, from chunks [N, T, D]."""
        self.head.fit_normalizer(target, mask)
        self.refiner.fit_normalizer(target, mask)

    def condition(self, feats: VLMFeatures) -> Tensor:
        x = {"pooled": feats.pooled, "query": feats.query}.get(self.cond)
        return (feats.context if x is None else x).float()

    def loss(self, batch: dict) -> DecoderLoss:
        """FAST cross-entropy + the refiner's loss around the decoded (detached) FAST base."""
        images, prompts, target, mask = unpack_batch(batch, self.backbone.device)
        tf = self.head.teacher_forced(images, prompts, target)
        if self.train_base == "teacher_forced":
            base = self.head.decode(tf.predicted)
        else:
            gen = self.head.generate(images, prompts)
            base = FASTDecoded(gen.actions, gen.valid)
        refine = self.refiner.loss_with_base(self.condition(tf.features), target, base.actions.to(target), mask)
        loss = tf.loss + refine.loss
        metrics = {**tf.metrics, **{k: v for k, v in refine.metrics.items() if k != "loss"}}
        metrics.update(refiner_loss=refine.loss.item(), base_invalid=(~base.valid).float().mean().item(),
                       loss=loss.item())
        return DecoderLoss(loss, metrics)

    @torch.no_grad()
    def predict(self, images, prompts, num_samples: int = 1, steps: int | None = None,
                generator: torch.Generator | None = None) -> FASTResidualOutput:
        """Generate FAST once per row from a cached prefix, decode, and refine K times (batched)."""
        check_positive("num_samples", num_samples)
        gen = self.head.generate(images, prompts)
        cond = self.condition(gen.features)
        y = self.refiner.sample_with_base(cond, gen.actions.to(cond), num_samples, steps, generator)
        return FASTResidualOutput(y, gen, gen.nfe + self.refiner.nfe(steps))

    @torch.no_grad()
    def sample(self, images, prompts, num_samples: int = 1, steps: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """-> [B, K, T, D] (see predict for the base, its validity and the NFE)."""
        return self.predict(images, prompts, num_samples, steps, generator).samples
