"""Grounding data and metrics: temporal moments (Charades-STA, ActivityNet-Captions; target shape (1, 2))
and referring-expression boxes (RefCOCO, RefCOCO+, RefCOCOg; target shape (1, 4)).

    records = load_charades_sta("charades_sta_test.txt", "Charades_v1_test.csv")
    targets = stack_targets(records, normalize=True)        # [N, 1, 2], fractions of the duration
    scores = score_moments(pred, targets)                   # pred [N, 1, 2] in the same units
    print(scores.table_header()); print(scores.table_row("drift"))
"""

from driftkit.grounding.metrics import (
    BOX_THRESHOLDS,
    MOMENT_THRESHOLDS,
    GroundingScores,
    InvalidPredictionWarning,
    box_iou,
    extent_errors,
    recall_at_iou,
    score_boxes,
    score_moments,
    temporal_iou,
)
from driftkit.grounding.records import (
    INVALID,
    OUT_OF_RANGE,
    PIXEL_TOLERANCE,
    TIME_TOLERANCE,
    BoxRecord,
    GroundingDataError,
    GroundingDataWarning,
    MomentRecord,
    stack_targets,
)
from driftkit.grounding.refcoco import REF_SPLITS, load_refcoco, load_refer
from driftkit.grounding.temporal import load_activitynet_captions, load_charades_sta, load_durations

__all__ = [
    "BOX_THRESHOLDS",
    "INVALID",
    "MOMENT_THRESHOLDS",
    "OUT_OF_RANGE",
    "PIXEL_TOLERANCE",
    "REF_SPLITS",
    "BoxRecord",
    "GroundingDataError",
    "GroundingDataWarning",
    "GroundingScores",
    "InvalidPredictionWarning",
    "MomentRecord",
    "TIME_TOLERANCE",
    "box_iou",
    "extent_errors",
    "load_activitynet_captions",
    "load_charades_sta",
    "load_durations",
    "load_refcoco",
    "load_refer",
    "recall_at_iou",
    "score_boxes",
    "score_moments",
    "stack_targets",
    "temporal_iou",
]
