"""TextPolicy: a VLM that answers in text through its own LM head (how Qwen-VL models ground), kind "text".

    cfg = TextPolicyConfig(backbone="qwen2_5_vl-tiny", answer="box")
    policy = TextPolicy(cfg)
    out = policy(batch)            # next-token cross-entropy of batch["answer"] given image + task
    texts = policy.generate(obs)   # greedy answers, B strings
    y = policy.sample(obs)         # [B, K, 1, D] the answers parsed (driftkit.grounding.text_answers), NaN rows
                                   # where the text does not parse (the grounding metrics score those IoU 0)

Sequence: [pad.. | image | prompt | answer | eos]. The answer follows the prompt directly (the backbone's query
tokens are not used), so the trained LM is an ordinary VLM that a plain image + question prompt drives, and
export_checkpoint (driftkit.grounding.pretrain) writes it as a transformers checkpoint. Only the answer tokens
and the EOS after them are labelled; the image and prompt columns carry no loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from driftkit.decoders.base import DecoderLoss
from driftkit.errors import check_choice, check_positive
from driftkit.normalize import NormStats
from driftkit.policy.base import Policy, check_batch_shape, register_policy, require
from driftkit.policy.keys import TASK_KEY
from driftkit.policy.vlm import VLMPolicyConfig, build_backbone, saved_backbone
from driftkit.rtc import Inpaint
from driftkit.timing import StageTimer, stage_of

ANSWER_KEY = "answer"
"""Dataset / batch key of the answer text (one string per row)."""
IGNORE = -100  # cross_entropy's ignore_index
TEXT_DECODER = "lm_text"
ANSWER_DIMS = {"box": 4, "interval": 2}


@dataclass
class TextPolicyConfig(VLMPolicyConfig):
    """A VLM answering in text; `answer` says how sample() parses the text into numbers."""

    kind = "text"

    decoder: str = TEXT_DECODER
    """No decoder: the LM head itself answers (always "lm_text")."""
    horizon: int = 1
    """T = 1: one box or interval per query."""
    action_dim: int = 4
    """D, set from `answer` (4 for a box, 2 for an interval)."""
    state_dim: int = 0
    """No state input."""
    num_query_tokens: int = 1
    """The backbone appends query tokens; a text policy ignores them, so one is enough."""
    answer: str = "box"
    """What sample() parses: "box" (x1, y1, x2, y2 fractions of the image) or "interval" (fractions of the clip)."""
    clip_seconds: float = 16.0
    """Seconds one clip spans (intervals are written in seconds; fractions = seconds / clip_seconds)."""
    max_answer_tokens: int = 48
    """Most tokens one generated answer holds (EOS included)."""

    def __post_init__(self):
        check_choice("answer", self.answer, tuple(ANSWER_DIMS))
        self.action_dim = ANSWER_DIMS[self.answer]
        check_positive("clip_seconds", self.clip_seconds)
        check_positive("max_answer_tokens", self.max_answer_tokens)
        if self.state_dim:
            raise ValueError(f"got state_dim={self.state_dim}; a text policy reads images and text only (0)")
        super().__post_init__()

    def _check_decoder(self) -> None:
        if self.decoder != TEXT_DECODER or self.decoder_options:
            raise ValueError(f"got decoder={self.decoder!r}, decoder_options={self.decoder_options!r}; a text "
                             f"policy has no decoder (decoder={TEXT_DECODER!r}, no options)")

    def item_spec(self) -> dict:
        spec = {TASK_KEY: (None, "the question"), ANSWER_KEY: (None, "the answer text")}
        for key in self.cameras if self.image_shape else ():
            spec[key] = (self.image_shape, "model.image_shape")
        return spec

    def stat_keys(self) -> tuple[str, ...]:
        return ()


@dataclass
class TextSequences:
    """One teacher-forced batch: [prefix | answer tokens]."""

    kwargs: dict  # the model's forward arguments (ids, mask, positions, images)
    labels: Tensor  # [B, L + S] next-token targets per column (IGNORE on the prefix and padding)
    prefix_len: int  # L


@register_policy
class TextPolicy(Policy):
    config_class = TextPolicyConfig

    def __init__(self, config: TextPolicyConfig, backbone=None):
        super().__init__(config)
        self.backbone = backbone if backbone is not None else build_backbone(config)
        from driftkit.grounding.text_answers import text_answers

        self.answers = text_answers(self.backbone.family.name)
        if self.backbone.tokenizer.eos_token_id is None:
            raise ValueError("a text policy needs a tokenizer with an eos_token_id (the end of an answer)")

    def set_stats(self, stats: dict[str, NormStats]) -> None:
        """Nothing to normalise: answers are text."""

    # ---- inputs -----------------------------------------------------------------------------------------
    def inputs(self, obs: dict) -> tuple[list, list[str]]:
        """obs -> (images: B lists of camera tensors [3, H, W], prompts: B strings)."""
        prompts = require(obs, TASK_KEY, " (the question, one string per row)")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not self.config.cameras:
            raise ValueError("config.cameras is empty: name the camera features (the trainer fills them in)")
        views = []
        for key in self.config.cameras:
            image = require(obs, key, f" (config.cameras = {list(self.config.cameras)})")
            check_batch_shape(key, image, self.config.image_shape or tuple(image.shape[1:]), len(prompts))
            views.append(image)
        return [[view[i] for view in views] for i in range(len(prompts))], prompts

    def sequences(self, images, prompts: list[str], answers: list[str]) -> TextSequences:
        """Lay out [prefix | answer + EOS] (answers right-padded) with labels on the answer tokens only."""
        if len(answers) != len(prompts):
            raise ValueError(f"got {len(answers)} answers for {len(prompts)} prompts")
        bb, tok = self.backbone, self.backbone.tokenizer
        pre = bb.prepare(images, prompts)
        l, dev = pre.prefix_len, bb.device
        rows = [tok(a, add_special_tokens=False).input_ids + [tok.eos_token_id] for a in answers]
        s = max(len(r) for r in rows)
        ids = torch.full((len(rows), s), tok.eos_token_id, dtype=torch.long)
        real = torch.zeros((len(rows), s), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)], real[i, : len(r)] = torch.tensor(r), True
        ids, real = ids.to(dev), real.to(dev)
        steps = torch.arange(1, s + 1, device=dev)
        # the answer continues the prompt: the next positions, text token types (the query column's values)
        extra = {k: torch.cat([v[:, :l], v[:, -1:].expand(-1, s)], 1) for k, v in pre.extra.items()}
        kwargs = dict(input_ids=torch.cat([pre.input_ids[:, :l], ids], 1),
                      attention_mask=torch.cat([pre.attention_mask[:, :l], real.long()], 1),
                      position_ids=torch.cat([pre.position_ids[..., :l], pre.position_ids[..., l - 1:l] + steps], -1),
                      **pre.vision, **extra)
        labels = torch.full((len(rows), l + s), IGNORE, dtype=torch.long, device=dev)
        labels[:, l - 1:l + s - 1] = torch.where(real, ids, IGNORE)  # column j predicts token j + 1
        return TextSequences(kwargs, labels, l)

    # ---- the contract -------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> DecoderLoss:
        """Mean next-token cross-entropy over the answer tokens (and their EOS)."""
        images, prompts = self.inputs(batch)
        answers = require(batch, ANSWER_KEY, " (a training batch needs the answer text)")
        seq = self.sequences(images, prompts, [answers] if isinstance(answers, str) else list(answers))
        keep = seq.labels.shape[1] - seq.prefix_len + 1  # logits from the last prefix column on
        logits = self.backbone.model(**seq.kwargs, logits_to_keep=keep).logits  # [B, keep, V]
        labels = seq.labels[:, -keep:]
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        real = labels != IGNORE
        acc = (logits.detach().argmax(-1) == labels)[real].float().mean()
        return DecoderLoss(loss, {"loss": loss.item(), "token_acc": acc.item(),
                                  "answer_tokens": real.sum(1).float().mean().item()})

    @torch.no_grad()
    def generate(self, obs: dict, max_new_tokens: int | None = None, timer: StageTimer | None = None) -> list[str]:
        """Greedy answers (B strings, EOS and what follows it dropped) from a KV-cached image + prompt prefix
        (with the backbone's visual token reduction, if it has one: training-free, so answers only)."""
        from transformers import DynamicCache

        from driftkit.backbones.cache import cache_kwargs

        limit = max_new_tokens or self.config.max_answer_tokens
        check_positive("max_new_tokens", limit)
        stage, bb, eos = stage_of(timer), self.backbone, self.backbone.tokenizer.eos_token_id
        with stage("preprocess"):
            pre = bb.prepare(*self.inputs(obs))
        with stage("decoder"):
            pre = bb.reduce_visual(pre)  # fewer image tokens when backbone_options set visual_keep < 1
            cache = DynamicCache(config=bb.model.config.get_text_config())
            out = bb.model(**pre.prefix_kwargs(), **cache_kwargs(bb.model, cache), use_cache=True, logits_to_keep=1)
            l = pre.prefix_len
            mask, last = pre.attention_mask[:, :l], pre.position_ids[..., l - 1:l]
            chosen, ended = [], torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
            for step in range(limit):
                token = torch.where(ended, eos, out.logits[:, -1].argmax(-1))  # [B]
                chosen.append(token)
                ended |= token == eos
                if bool(ended.all()) or step == limit - 1:
                    break
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
                out = bb.model(input_ids=token[:, None], attention_mask=mask, position_ids=last + step + 1,
                               **cache_kwargs(bb.model, cache), use_cache=True, logits_to_keep=1)
        rows = torch.stack(chosen, 1).tolist()
        return [bb.tokenizer.decode(r[: r.index(eos)] if eos in r else r, skip_special_tokens=True) for r in rows]

    def parse(self, texts: list[str], obs: dict, answer: str | None = None) -> Tensor:  # [B, 1, D]
        """Answer texts -> numbers, boxes or intervals as `answer` says (None = config.answer; one model answers
        both), NaN rows where a text does not parse. Boxes are fractions of the first camera's image."""
        from driftkit.grounding.text_answers import answers_to_tensor

        cfg, answer = self.config, answer or self.config.answer
        check_choice("answer", answer, tuple(ANSWER_DIMS))
        if answer == "box":
            h, w = require(obs, cfg.cameras[0]).shape[-2:]
            parsed = [self.answers.parse_box(t, width=w, height=h) for t in texts]
        else:
            parsed = [self.answers.parse_interval(t, seconds=cfg.clip_seconds) for t in texts]
        return answers_to_tensor(parsed, ANSWER_DIMS[answer])

    @torch.no_grad()
    def sample(self, obs: dict, num_samples: int = 1, steps: int | None = None,
               generator: torch.Generator | None = None, timer: StageTimer | None = None,
               temperature: float | None = None, inpaint: Inpaint | None = None) -> Tensor:
        """-> [B, K, 1, D]: the greedy answer parsed, repeated K times (greedy decoding is deterministic; steps,
        generator and temperature are accepted for the contract and unused)."""
        check_positive("num_samples", num_samples)
        if inpaint is not None:
            raise ValueError("a text policy cannot inpaint: its answers are generated text")
        y = self.parse(self.generate(obs, timer=timer), obs).to(self.backbone.device)
        return y[:, None].expand(-1, num_samples, -1, -1)

    @torch.no_grad()
    def predict(self, obs: dict, num_samples: int = 1, steps: int | None = None, select: str | None = None,
                clusters: int = 2, generator: torch.Generator | None = None,
                timer: StageTimer | None = None, temperature: float | None = None,
                inpaint: Inpaint | None = None) -> Tensor:
        """-> [B, 1, D]; every selector returns the greedy answer (all samples are equal)."""
        from driftkit.policy.base import SELECTORS

        if select not in SELECTORS:
            raise ValueError(f"got select={select!r}, must be one of {list(SELECTORS)}")
        return self.sample(obs, 1, steps, generator, timer, temperature, inpaint)[:, 0]

    def nfe(self, steps: int | None = None) -> int:
        """LM passes of the longest answer: the prefix pass emits the first token."""
        return self.config.max_answer_tokens

    # ---- persistence ----------------------------------------------------------------------------------------
    def save_assets(self, path) -> None:
        from driftkit.policy.vlm import BACKBONE_ASSETS

        self.backbone.save_assets(path / BACKBONE_ASSETS)

    @classmethod
    def from_assets(cls, config: TextPolicyConfig, path) -> "TextPolicy":
        return cls(config, saved_backbone(path))
