"""Grounding metrics as the temporal-grounding and referring-expression papers report them.

Temporal grounding (Charades-STA, ActivityNet-Captions): "R@1, IoU=m" is the percentage of queries whose top
prediction has temporal IoU >= m with the ground truth, m in {0.3, 0.5, 0.7}; mIoU is the mean IoU.
Referring expressions (RefCOCO/+/g): "Acc@0.5" is the percentage of expressions whose predicted box has
IoU >= 0.5 with the ground truth box (0.75 and 0.9 for stricter tables); mIoU is the mean IoU.
strict=True counts a hit only when IoU > m, as 2D-TAN's evaluation does (it differs only at exact ties).

IoU is continuous (no +1 pixel convention), so it is the same in seconds or fractions of the duration, in
pixels or normalised coordinates. A prediction that is not finite, or has end < start (x2 < x1 or y2 < y1),
scores IoU 0 and counts as a miss; two intervals or boxes whose union is empty also score 0.
When more than INVALID_WARNING_FRACTION of the predictions are invalid, score_* warns
(InvalidPredictionWarning): that many is the sign of a layout mix-up, most often COCO [x, y, w, h] boxes
passed where [x1, y1, x2, y2] is expected.
Inputs may be numpy arrays, torch tensors or nested lists; results are numpy float64.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

MOMENT_THRESHOLDS = (0.3, 0.5, 0.7)
BOX_THRESHOLDS = (0.5, 0.75, 0.9)
INVALID_WARNING_FRACTION = 0.1
"""score_* warns when more than this fraction of the predictions is invalid (scored IoU 0)."""


class InvalidPredictionWarning(UserWarning):
    """Many predictions were not finite or had end < start; they likely use another layout (xywh)."""


def _array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; numpy cannot take bfloat16 or CUDA memory directly
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _valid(x: np.ndarray) -> np.ndarray:  # [..., 2k] -> [...] bool
    """Finite, and every upper coordinate (second half) >= its lower one (first half)."""
    k = x.shape[-1] // 2
    with np.errstate(invalid="ignore"):
        return np.isfinite(x).all(-1) & (x[..., k:] >= x[..., :k]).all(-1)


def _iou(a: np.ndarray, b: np.ndarray, dims: int) -> np.ndarray:
    """IoU of axis-aligned boxes in `dims` dimensions laid out [lo_1..lo_d, hi_1..hi_d]; broadcasts."""
    for name, x in (("first", a), ("second", b)):
        if x.ndim == 0 or x.shape[-1] != 2 * dims:
            raise ValueError(f"{name} argument has shape {list(x.shape)}, expected [..., {2 * dims}]")
    ok = _valid(a) & _valid(b)
    # Invalid rows become [0, 0] so the arithmetic below stays finite; their IoU is zeroed at the end.
    a = np.where(ok[..., None], a, 0.0)
    b = np.where(ok[..., None], b, 0.0)
    lo = np.maximum(a[..., :dims], b[..., :dims])
    hi = np.minimum(a[..., dims:], b[..., dims:])
    inter = np.clip(hi - lo, 0.0, None).prod(-1)
    area_a = (a[..., dims:] - a[..., :dims]).prod(-1)
    area_b = (b[..., dims:] - b[..., :dims]).prod(-1)
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return np.where(ok, iou, 0.0)


def temporal_iou(a, b) -> np.ndarray:
    """IoU of intervals [start, end]: a [..., 2], b [..., 2] (broadcast) -> [...]. Symmetric in a, b."""
    return _iou(_array(a), _array(b), dims=1)


def box_iou(a, b) -> np.ndarray:
    """IoU of boxes [x1, y1, x2, y2]: a [..., 4], b [..., 4] (broadcast) -> [...]. Symmetric in a, b."""
    return _iou(_array(a), _array(b), dims=2)


def recall_at_iou(ious, thresholds, strict: bool = False) -> dict[float, float]:
    """{m: fraction of ious >= m} for ious [N] (top-1) or [N, K] (a hit if any of the K reaches m: R@K).

    strict: count IoU > m instead of IoU >= m (2D-TAN's convention).
    """
    ious = _array(ious)
    if ious.ndim not in (1, 2) or ious.shape[0] == 0:
        raise ValueError(f"ious has shape {list(ious.shape)}, expected [N] or [N, K] with N > 0")
    best = ious if ious.ndim == 1 else ious.max(axis=1)
    hit = np.greater if strict else np.greater_equal
    return {float(m): float(hit(best, m).mean()) for m in thresholds}


@dataclass
class GroundingScores:
    """Scores of one method on one split; fractions in [0, 1], shown as percentages by table_row."""

    kind: str
    """"moment" (labels 'R@1 IoU=m') or "box" (labels 'Acc@m')."""
    num_examples: int
    num_invalid: int
    """Predictions that were not finite or had end < start; each counted as IoU 0."""
    mean_iou: float
    recall: dict[float, float] = field(default_factory=dict)
    """IoU threshold m -> fraction of examples with IoU >= m (IoU > m when strict)."""
    strict: bool = False
    """Whether a hit needed IoU > m rather than IoU >= m; the column labels say which."""

    def columns(self) -> list[str]:
        if self.kind == "moment":
            label = "R@1 IoU>{:g}" if self.strict else "R@1 IoU={:g}"
        else:
            label = "Acc@>{:g}" if self.strict else "Acc@{:g}"
        return [label.format(m) for m in sorted(self.recall)] + ["mIoU"]

    def percentages(self) -> list[float]:
        return [100.0 * self.recall[m] for m in sorted(self.recall)] + [100.0 * self.mean_iou]

    def table_header(self, name: str = "method") -> str:
        """Markdown header and separator lines matching table_row."""
        cols = [name] + self.columns()
        return "| " + " | ".join(cols) + " |\n|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"

    def table_row(self, name: str, digits: int = 2) -> str:
        """'| name | 45.12 | ... | 40.03 |': percentages in the order of columns()."""
        return "| " + " | ".join([name] + [f"{v:.{digits}f}" for v in self.percentages()]) + " |"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["recall"] = {str(m): v for m, v in self.recall.items()}
        return out


def _pairs(x, width: int, name: str) -> np.ndarray:  # [N, width] or [N, 1, width] -> [N, width]
    x = _array(x)
    if x.ndim == 3 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 2 or x.shape[-1] != width or x.shape[0] == 0:
        raise ValueError(f"{name} has shape {list(x.shape)}, expected [N, {width}] or [N, 1, {width}], N > 0")
    return x


_LAYOUT = {"moment": "[start, end]", "box": "[x1, y1, x2, y2]"}
_FLIPPED = {"moment": "end < start", "box": "x2 < x1 or y2 < y1"}


def _matched_pairs(kind: str, pred, gt, width: int) -> tuple[np.ndarray, np.ndarray]:  # both [N, width]
    """pred and gt as [N, width] arrays of the same N; an invalid gt row is an error naming it."""
    pred, gt = _pairs(pred, width, "pred"), _pairs(gt, width, "gt")
    if pred.shape[0] != gt.shape[0]:
        raise ValueError(f"pred has {pred.shape[0]} examples but gt has {gt.shape[0]}")
    bad_gt = ~_valid(gt)
    if bad_gt.any():
        i = int(np.flatnonzero(bad_gt)[0])
        raise ValueError(f"gt[{i}] = {gt[i].tolist()} is not a valid {kind} {_LAYOUT[kind]} (non-finite or "
                         f"{_FLIPPED[kind]})")
    return pred, gt


def _xywh_to_xyxy(x: np.ndarray) -> np.ndarray:  # [N, 4] -> [N, 4]
    return np.concatenate([x[:, :2], x[:, :2] + x[:, 2:]], axis=-1)


def _warn_invalid(kind: str, pred: np.ndarray, gt: np.ndarray, num_invalid: int, mean_iou: float) -> None:
    """InvalidPredictionWarning when over INVALID_WARNING_FRACTION of pred is invalid, naming the likely cause."""
    n = pred.shape[0]
    if num_invalid <= INVALID_WARNING_FRACTION * n:
        return
    message = (f"{num_invalid} of {n} {kind} predictions ({100 * num_invalid / n:.0f} %) are not finite or have "
               f"{_FLIPPED[kind]}, and score IoU 0; predictions must be {_LAYOUT[kind]}")
    if kind == "box":
        as_xywh = float(_iou(_xywh_to_xyxy(pred), gt, dims=2).mean())
        message += (f". If they are COCO-style [x, y, w, h], convert them (x2 = x + w, y2 = y + h): read that way "
                    f"they score mIoU {as_xywh:.3f} instead of {mean_iou:.3f}")
    warnings.warn(message, InvalidPredictionWarning, stacklevel=4)  # the caller of score_moments/score_boxes


def _score(kind: str, pred, gt, thresholds, width: int, strict: bool) -> GroundingScores:
    pred, gt = _matched_pairs(kind, pred, gt, width)
    ious = _iou(pred, gt, dims=width // 2)
    num_invalid, mean_iou = int((~_valid(pred)).sum()), float(ious.mean())
    _warn_invalid(kind, pred, gt, num_invalid, mean_iou)
    return GroundingScores(kind=kind, num_examples=int(gt.shape[0]), num_invalid=num_invalid, mean_iou=mean_iou,
                           recall=recall_at_iou(ious, thresholds, strict), strict=strict)


def score_moments(pred, gt, thresholds=MOMENT_THRESHOLDS, strict: bool = False) -> GroundingScores:
    """R@1 at each IoU threshold and mIoU: pred, gt [N, 2] or [N, 1, 2] as [start, end] (same units).

    strict: a hit needs IoU > m (2D-TAN) instead of IoU >= m.
    """
    return _score("moment", pred, gt, thresholds, width=2, strict=strict)


def score_boxes(pred, gt, thresholds=BOX_THRESHOLDS, strict: bool = False) -> GroundingScores:
    """Acc at each IoU threshold and mIoU: pred, gt [N, 4] or [N, 1, 4] as [x1, y1, x2, y2] (same units).

    strict: a hit needs IoU > m instead of IoU >= m.
    """
    return _score("box", pred, gt, thresholds, width=4, strict=strict)


def extent_errors(pred, gt) -> dict[str, float]:
    """Where the misses come from: pred, gt [N, 2k] or [N, 1, 2k] in the scorers' (lo..., hi...) layout.

    lo_error / hi_error: mean signed pred - gt of the starts (x1, y1) and ends (x2, y2); size_ratio: mean
    pred extent / gt extent; centre_error: mean |pred centre - gt centre|. Means over examples and axes.
    A head that widens every span shows lo_error < 0 < hi_error and size_ratio > 1 with a small centre_error;
    one that only misplaces it shows the reverse.
    """
    pred = _array(pred)
    width = pred.shape[-1] if pred.ndim else 0
    if width not in (2, 4):
        raise ValueError(f"pred has shape {list(pred.shape)}, expected [N, 2] moments or [N, 4] boxes")
    pred, gt = _matched_pairs("moment" if width == 2 else "box", pred, gt, width)
    if not np.isfinite(pred).all():
        i = int(np.flatnonzero(~np.isfinite(pred).all(-1))[0])
        raise ValueError(f"pred[{i}] = {pred[i].tolist()} is not finite; extent errors need finite predictions "
                         "(score_moments / score_boxes count such rows as misses)")
    k = width // 2
    size, gt_size = pred[:, k:] - pred[:, :k], gt[:, k:] - gt[:, :k]
    if (gt_size <= 0).any():
        i = int(np.flatnonzero((gt_size <= 0).any(-1))[0])
        raise ValueError(f"gt[{i}] = {gt[i].tolist()} has no extent; size_ratio needs end > start")
    centre = (pred[:, :k] + pred[:, k:]) / 2 - (gt[:, :k] + gt[:, k:]) / 2
    return {"lo_error": float((pred[:, :k] - gt[:, :k]).mean()), "hi_error": float((pred[:, k:] - gt[:, k:]).mean()),
            "size_ratio": float((size / gt_size).mean()), "centre_error": float(np.abs(centre).mean())}
