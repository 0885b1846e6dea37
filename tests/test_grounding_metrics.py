"""Grounding metrics against hand-computed IoUs, a rasterised oracle, and the field's inclusive thresholds."""

import math
import warnings

import numpy as np
import pytest
import torch

from driftkit.grounding import (
    GroundingScores,
    InvalidPredictionWarning,
    box_iou,
    extent_errors,
    recall_at_iou,
    score_boxes,
    score_moments,
    temporal_iou,
)

NAN = float("nan")


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0.0, 1.0], [2.0, 3.0], 0.0),  # disjoint
        ([0.0, 1.0], [1.0, 2.0], 0.0),  # touching at one instant
        ([0.0, 4.0], [1.0, 2.0], 0.25),  # nested: 1 / 4
        ([1.5, 3.25], [1.5, 3.25], 1.0),  # identical
        ([0.0, 2.0], [1.0, 3.0], 1.0 / 3.0),  # overlap 1 over union 3
        ([0.0, 2.0], [1.0, 2.0], 0.5),  # shared end
        ([3.0, 3.0], [0.0, 5.0], 0.0),  # zero-length prediction inside the truth
        ([2.0, 2.0], [2.0, 2.0], 0.0),  # empty union
    ],
)
def test_temporal_iou_hand_cases_and_symmetry(a, b, expected):
    assert temporal_iou(a, b) == pytest.approx(expected, abs=1e-12)
    assert temporal_iou(b, a) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 1, 1], [2, 2, 3, 3], 0.0),  # disjoint
        ([0, 0, 1, 1], [1, 0, 2, 1], 0.0),  # touching along an edge
        ([0, 0, 4, 4], [1, 1, 3, 3], 0.25),  # nested: 4 / 16
        ([10, 20, 30.5, 41], [10, 20, 30.5, 41], 1.0),  # identical
        ([0, 0, 2, 2], [1, 1, 3, 3], 1.0 / 7.0),  # corner overlap 1 over union 7
        ([0, 0, 2, 1], [0, 0, 1, 5], 1.0 / 6.0),  # crossing: inter 1, union 2 + 5 - 1
    ],
)
def test_box_iou_hand_cases_and_symmetry(a, b, expected):
    assert box_iou(a, b) == pytest.approx(expected, abs=1e-12)
    assert box_iou(b, a) == pytest.approx(expected, abs=1e-12)


def _raster_iou(a, b, grid: int) -> float:
    """IoU counted on unit cells of an integer grid: an oracle independent of the min/max formula."""
    def mask(box):
        m = np.zeros((grid, grid), dtype=bool)
        m[box[1]:box[3], box[0]:box[2]] = True
        return m
    ma, mb = mask(a), mask(b)
    union = (ma | mb).sum()
    return float((ma & mb).sum() / union) if union else 0.0


def test_box_iou_matches_rasterised_oracle_vectorised():
    rng = np.random.default_rng(0)
    lo = rng.integers(0, 8, size=(200, 2, 2))
    hi = lo + rng.integers(1, 5, size=(200, 2, 2))
    boxes = np.concatenate([lo, hi], axis=-1)  # [200, 2, 4], integer corners
    got = box_iou(boxes[:, 0], boxes[:, 1])
    want = [_raster_iou(a, b, grid=16) for a, b in boxes]
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert (got > 0).any() and (got == 0).any()  # the sample exercises both overlapping and disjoint pairs


def test_temporal_iou_matches_rasterised_oracle_and_is_scale_invariant():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 20, size=(300, 2))
    e = s + rng.integers(0, 10, size=(300, 2))
    a, b = np.stack([s[:, 0], e[:, 0]], -1), np.stack([s[:, 1], e[:, 1]], -1)
    # An interval [s, e] is the box [s, 0, e, 1]: the 2-D oracle counts its unit cells.
    box_a, box_b = (np.stack([x[:, 0], 0 * x[:, 0], x[:, 1], 0 * x[:, 0] + 1], -1) for x in (a, b))
    want = [_raster_iou(p, q, grid=32) for p, q in zip(box_a, box_b)]
    np.testing.assert_allclose(temporal_iou(a, b), want, atol=1e-12)
    np.testing.assert_allclose(temporal_iou(a / 29.7, b / 29.7), want, atol=1e-12)


def test_broadcasting_torch_input_and_recall_at_k():
    gt = torch.tensor([[0.0, 2.0], [5.0, 6.0]])  # [N=2, 2]
    candidates = torch.tensor([[[1.0, 2.0], [0.0, 2.0]], [[0.0, 1.0], [5.5, 6.0]]])  # [N=2, K=2, 2]
    ious = temporal_iou(candidates, gt[:, None])
    assert ious.shape == (2, 2)
    np.testing.assert_allclose(ious, [[0.5, 1.0], [0.0, 0.5]])
    assert recall_at_iou(ious[:, 0], [0.5]) == {0.5: 0.5}  # R@1
    assert recall_at_iou(ious, [0.5, 0.7]) == {0.5: 1.0, 0.7: 0.5}  # R@2
    assert np.allclose(temporal_iou(candidates.to(torch.bfloat16), gt[:, None]), ious)


@pytest.mark.parametrize("bad", [[NAN, 1.0], [0.0, float("inf")], [3.0, 1.0], [NAN, NAN]])
def test_invalid_interval_scores_zero_either_side(bad):
    assert temporal_iou(bad, [0.0, 3.0]) == 0.0
    assert temporal_iou([0.0, 3.0], bad) == 0.0


@pytest.mark.parametrize("bad", [[0, 0, NAN, 1], [2, 0, 1, 1], [0, 2, 1, 1], [0, 0, float("-inf"), 1]])
def test_invalid_box_scores_zero(bad):
    assert box_iou(bad, [0, 0, 2, 2]) == 0.0
    assert box_iou([0, 0, 2, 2], bad) == 0.0


def test_score_moments_hand_computed_with_invalid_predictions():
    gt = [[1.0, 2.0], [0.0, 4.0], [0.0, 1.0], [0.0, 1.0]]
    pred = [[0.0, 2.0], [0.0, 4.0], [NAN, 0.5], [0.9, 0.1]]  # IoU 0.5, 1, invalid, invalid (end < start)
    with pytest.warns(InvalidPredictionWarning, match=r"2 of 4 moment predictions \(50 %\) .* end < start"):
        scores = score_moments(pred, gt)
    assert scores.num_examples == 4 and scores.num_invalid == 2
    assert scores.mean_iou == pytest.approx(0.375)
    assert scores.recall == {0.3: 0.5, 0.5: 0.5, 0.7: 0.25}


def test_extent_errors_tell_a_widened_span_from_a_shifted_one():
    gt = np.array([[0.2, 0.4], [0.5, 0.9]])
    widened = np.array([[0.1, 0.5], [0.3, 1.1]])  # same centres, twice the length
    assert extent_errors(widened, gt) == pytest.approx(
        {"lo_error": -0.15, "hi_error": 0.15, "size_ratio": 2.0, "centre_error": 0.0})
    shifted = gt + np.array([[0.1], [-0.3]])  # same lengths, centres moved by +0.1 and -0.3
    assert extent_errors(shifted[:, None], gt) == pytest.approx(
        {"lo_error": -0.1, "hi_error": -0.1, "size_ratio": 1.0, "centre_error": 0.2})
    # Boxes: the x axis doubled about its centre, the y axis kept: means over both axes.
    boxes = extent_errors([[0.0, 0.0, 4.0, 1.0]], [[1.0, 0.0, 3.0, 1.0]])
    assert boxes == pytest.approx({"lo_error": -0.5, "hi_error": 0.5, "size_ratio": 1.5, "centre_error": 0.0})


def test_extent_errors_reject_bad_shapes_empty_targets_and_nan():
    with pytest.raises(ValueError, match=r"shape \[3\], expected \[N, 2\] moments or \[N, 4\] boxes"):
        extent_errors([0.1, 0.2, 0.3], [[0.1, 0.2]])
    with pytest.raises(ValueError, match=r"gt\[1\] = \[0.5, 0.5\] has no extent"):
        extent_errors([[0.1, 0.2], [0.3, 0.4]], [[0.1, 0.2], [0.5, 0.5]])
    with pytest.raises(ValueError, match=r"gt\[0\] = \[nan, 0.2\] is not a valid moment"):
        extent_errors([[0.1, 0.2], [0.3, 0.4]], [[NAN, 0.2], [0.3, 0.5]])
    with pytest.raises(ValueError, match=r"pred\[1\] = \[nan, 0.4\] is not finite"):
        extent_errors([[0.1, 0.2], [NAN, 0.4]], [[0.1, 0.2], [0.3, 0.5]])


def test_thresholds_are_inclusive_at_exact_iou():
    # IoUs of exactly 3/10, 5/10, 7/10: each must count at its own threshold (IoU >= m).
    gt = [[0.0, 10.0]] * 3
    pred = [[0.0, 3.0], [0.0, 5.0], [0.0, 7.0]]
    assert score_moments(pred, gt).recall == {0.3: 1.0, 0.5: 2 / 3, 0.7: 1 / 3}
    # Box IoUs of exactly 1/2, 3/4, 9/10.
    gt_b = [[0, 0, 2, 1], [0, 0, 4, 1], [0, 0, 10, 1]]
    pred_b = [[1, 0, 2, 1], [0, 0, 3, 1], [0, 0, 9, 1]]
    assert score_boxes(pred_b, gt_b).recall == {0.5: 1.0, 0.75: 2 / 3, 0.9: 1 / 3}


def test_strict_thresholds_need_iou_above_m():
    # The same exact IoUs of 3/10, 5/10, 7/10: with strict=True (2D-TAN's IoU > m) none counts at its own m.
    gt = [[0.0, 10.0]] * 3
    pred = [[0.0, 3.0], [0.0, 5.0], [0.0, 7.0]]
    scores = score_moments(pred, gt, strict=True)
    assert scores.recall == {0.3: 2 / 3, 0.5: 1 / 3, 0.7: 0.0} and scores.strict
    assert scores.columns() == ["R@1 IoU>0.3", "R@1 IoU>0.5", "R@1 IoU>0.7", "mIoU"]
    assert recall_at_iou([0.5, 0.6], [0.5], strict=True) == {0.5: 0.5}
    box = score_boxes([[1, 0, 2, 1]], [[0, 0, 2, 1]], thresholds=[0.5], strict=True)  # IoU exactly 1/2
    assert box.recall == {0.5: 0.0} and box.columns() == ["Acc@>0.5", "mIoU"] and box.to_dict()["strict"]


def _xyxy_boxes(n: int, seed: int = 0) -> np.ndarray:  # [n, 4], small boxes away from the origin, as RefCOCO's
    rng = np.random.default_rng(seed)
    x1y1 = rng.uniform(100, 400, size=(n, 2))
    return np.concatenate([x1y1, x1y1 + rng.uniform(10, 80, size=(n, 2))], axis=-1)


def test_xywh_predictions_warn_and_name_the_mixup():
    gt = _xyxy_boxes(20)
    xywh = np.concatenate([gt[:, :2], gt[:, 2:] - gt[:, :2]], axis=-1)  # perfect boxes in COCO's layout
    with pytest.warns(InvalidPredictionWarning) as got:
        scores = score_boxes(xywh, gt)
    assert scores.num_invalid == 20 and scores.mean_iou == 0.0
    (message,) = [str(w.message) for w in got]
    assert message.startswith("20 of 20 box predictions (100 %) are not finite or have x2 < x1 or y2 < y1")
    assert "[x, y, w, h], convert them (x2 = x + w, y2 = y + h)" in message
    assert "they score mIoU 1.000 instead of 0.000" in message
    assert got[0].filename == __file__  # points at the caller, not at metrics.py


def test_few_invalid_predictions_do_not_warn():
    gt = _xyxy_boxes(10)
    pred = gt.copy()
    pred[0, 2] = pred[0, 0] - 1.0  # 1 of 10 invalid: at the 10 % limit, not above it
    with warnings.catch_warnings():
        warnings.simplefilter("error", InvalidPredictionWarning)
        assert score_boxes(pred, gt).num_invalid == 1
    pred[1, 3] = pred[1, 1] - 1.0  # 2 of 10
    with pytest.warns(InvalidPredictionWarning, match="2 of 10 box predictions"):
        score_boxes(pred, gt)


def test_score_accepts_decoder_target_shape():
    gt = np.array([[[0.0, 0.0, 2.0, 2.0]], [[1.0, 1.0, 3.0, 3.0]]])  # [N, 1, 4]
    pred = torch.tensor([[[0.0, 0.0, 2.0, 2.0]], [[0.0, 0.0, 2.0, 2.0]]])
    scores = score_boxes(pred, gt)
    assert scores.mean_iou == pytest.approx((1.0 + 1.0 / 7.0) / 2)
    assert scores.recall[0.5] == 0.5 and scores.num_invalid == 0


def test_score_rejects_bad_ground_truth_and_shapes():
    with pytest.raises(ValueError, match=r"gt\[1\] = \[3.0, 1.0\]"):
        score_moments([[0, 1], [0, 1]], [[0, 1], [3, 1]])
    with pytest.raises(ValueError, match="pred has 1 examples but gt has 2"):
        score_moments([[0, 1]], [[0, 1], [0, 2]])
    with pytest.raises(ValueError, match=r"pred has shape \[2, 3\]"):
        score_moments(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"expected \[\.\.\., 4\]"):
        box_iou([0, 0, 1], [0, 0, 1, 1])


def test_scores_table_row_and_dict():
    scores = GroundingScores(kind="moment", num_examples=4, num_invalid=1, mean_iou=0.40031,
                             recall={0.7: 0.25, 0.3: 0.6, 0.5: 0.45126})
    assert scores.columns() == ["R@1 IoU=0.3", "R@1 IoU=0.5", "R@1 IoU=0.7", "mIoU"]
    assert scores.table_row("drift") == "| drift | 60.00 | 45.13 | 25.00 | 40.03 |"
    header = scores.table_header().splitlines()
    assert header[0] == "| method | R@1 IoU=0.3 | R@1 IoU=0.5 | R@1 IoU=0.7 | mIoU |"
    assert header[1].count("|") == header[0].count("|")
    box = score_boxes([[0, 0, 1, 1]], [[0, 0, 1, 1]])
    assert box.columns() == ["Acc@0.5", "Acc@0.75", "Acc@0.9", "mIoU"]
    assert box.table_row("flow", digits=1) == "| flow | 100.0 | 100.0 | 100.0 | 100.0 |"
    assert box.to_dict()["recall"] == {"0.5": 1.0, "0.75": 1.0, "0.9": 1.0}
    assert math.isclose(box.to_dict()["mean_iou"], 1.0)
