"""Scoring a trained policy on a grounding test split: every evaluation variant, its metrics, NFE and timing.

Evaluation takes one sample per query. Predictions are clipped to [0, 1] and each (start, end) / (x1, x2) /
(y1, y2) pair is sorted before scoring, so an out-of-range or flipped prediction is repaired rather than
counted as a miss; how many needed it is reported (num_clipped, num_reordered). Decoders that sample at a
positive temperature by default (flow, residual_*) are also scored at temperature 0 from the same weights,
and residual decoders also by their base head alone ("base"), so refinement is compared with its own base on
identical features. A TextPolicy (a VLM answering in text) is scored the same way: its answers parsed, the
unparsable ones NaN rows that score IoU 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from driftkit.grounding.actions import observations
from driftkit.grounding.metrics import score_boxes, score_moments
from driftkit.timing import StageTimer, median_ms

POSTPROCESS = ("predictions clipped to [0, 1], then each (start, end) / (x1, x2) / (y1, y2) pair sorted "
               "ascending, before scoring")


@dataclass
class EvalVariant:
    """How predictions are drawn from one trained policy."""

    label: str
    temperature: float | None = None
    """Sampling temperature of this evaluation (None = the decoder's own)."""
    base_only: bool = False
    """Residual decoders: the base head's prediction without refinement."""


def eval_variants(policy, spec: str) -> list[EvalVariant]:
    dec = policy.decoder
    variants = [EvalVariant(spec)]
    if getattr(dec.config, "temperature", 0.0) > 0:
        variants.append(EvalVariant(f"{spec} T=0", temperature=0.0))
    if getattr(dec, "base", None) is not None:
        variants.append(EvalVariant(f"{spec} base", base_only=True))
    return variants


@torch.no_grad()
def predict(policy, items: list[dict], variant: EvalVariant, generator=None) -> Tensor:
    """One prediction per query, [B, D] in target units (before clipping)."""
    obs = observations(items, policy.config.cameras)
    if not variant.base_only:
        return policy.sample(obs, num_samples=1, generator=generator, temperature=variant.temperature)[:, 0, 0]
    dec, c = policy.decoder, policy.encode(obs)
    return dec.normalizer.unnormalize(dec.base_prediction(c.cond, cond_mask=c.mask))[:, 0]


def postprocess(pred: Tensor) -> tuple[Tensor, int, int]:
    """pred [N, 2k] laid out [lo_1..lo_k, hi_1..hi_k] -> (clipped and sorted [N, 2k], rows clipped, rows
    reordered)."""
    clipped = pred.clamp(0.0, 1.0)
    k = pred.shape[-1] // 2
    lo, hi = clipped[:, :k], clipped[:, k:]
    fixed = torch.cat([torch.minimum(lo, hi), torch.maximum(lo, hi)], dim=-1)
    finite = pred.isfinite().all(-1)  # NaN rows (unparsable text answers) stay NaN and score IoU 0
    return fixed, int(((clipped != pred).any(-1) & finite).sum()), int((lo > hi).any(-1).sum())


def scorer(task: str):
    return score_boxes if task == "spatial" else score_moments


def constant_baseline(train, test, task: str) -> dict:
    """Metrics of predicting the training targets' mean for every query: what ignoring image and text scores."""
    gt = test.targets()  # [N, 1, D]
    scores = scorer(task)(train.targets().mean(0, keepdim=True).expand_as(gt), gt)
    return dict(zip(scores.columns(), scores.percentages()))


def predict_split(policy, test, variant: EvalVariant, seed: int = 0, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """(predictions, targets), both [N, D]: one prediction per query of the test split, before postprocess,
    drawn in batches from one generator seeded with seed (so a rerun draws the same samples)."""
    generator = torch.Generator(device=policy.device).manual_seed(seed)
    preds, gts = [], []
    for i in range(0, len(test), batch_size):
        items = [test[j] for j in range(i, min(i + batch_size, len(test)))]
        preds.append(predict(policy, items, variant, generator).float().cpu())
        gts.append(torch.stack([it["target"] for it in items])[:, 0])
    return torch.cat(preds), torch.cat(gts)


def evaluate(policy, test, task: str, variant: EvalVariant, seed: int = 0, batch_size: int = 64,
             latency_repeats: int = 10) -> dict:
    """Scores, NFE and timings of one variant on the test split."""
    device = policy.device
    timer = StageTimer(device)
    with timer.stage("all"):
        raw, gt = predict_split(policy, test, variant, seed, batch_size)
    pred, num_clipped, num_reordered = postprocess(raw)
    scores = scorer(task)(pred, gt)
    latency = None
    if latency_repeats:  # batch-1 prediction, image + prompt to box
        latency = median_ms(lambda: predict(policy, [test[0]], variant), device, latency_repeats, warmup=2)
    return {
        "label": variant.label, "temperature": variant.temperature, "base_only": variant.base_only,
        "metrics": dict(zip(scores.columns(), scores.percentages())), "scores": scores.to_dict(),
        "nfe": policy.decoder.base.nfe() if variant.base_only else policy.nfe(),
        "ms_per_prediction": timer.ms["all"] / len(test),
        "eval_batch_size": batch_size, "latency_ms": latency,
        "num_clipped": num_clipped, "num_reordered": num_reordered,
    }
