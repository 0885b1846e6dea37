"""Text answers in each Qwen family's convention: exact formats, format -> parse round trips, refusals, clipping."""

import math

import pytest
import torch

from driftkit.grounding.metrics import score_boxes
from driftkit.grounding.text_answers import TEXT_ANSWERS, answers_to_tensor, text_answers

FAMILIES = sorted(TEXT_ANSWERS)


def test_each_family_writes_its_own_form_and_units():
    # catches: swapped units (pixels vs 0-1000) or styles between families
    box = (0.1, 0.2, 0.5, 0.625)
    assert text_answers("qwen2_vl").box(box, 200, 160) == "(100,200),(500,625)"
    assert text_answers("qwen2_5_vl").box(box, 200, 160) == '{"bbox_2d": [20, 32, 100, 100]}'
    assert text_answers("qwen3_vl").box(box, 200, 160) == '{"bbox_2d": [100, 200, 500, 625]}'
    assert text_answers("qwen2_vl").interval((0.25, 0.5), seconds=16.0) == "from 4.0 to 8.0 seconds"


@pytest.mark.parametrize("family", FAMILIES)
def test_box_round_trip(family):
    # boxes on each convention's grid come back exactly; catches a width/height swap (non-square image)
    answers, w, h = text_answers(family), 112, 84
    if answers.box_units == "pixels":
        box = (7 / w, 30 / h, 100 / w, 80 / h)
    else:
        box = (0.007, 0.3, 0.9, 0.812)
    parsed = answers.parse_box(answers.box(box, w, h), w, h)
    assert parsed == pytest.approx(box, abs=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_interval_round_trip_and_text_around_the_answer(family):
    answers = text_answers(family)
    text = "The event happens " + answers.interval((0.125, 0.75), seconds=32.0) + "."
    assert answers.parse_interval(text, seconds=32.0) == pytest.approx((0.125, 0.75))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("garbage", ["", "hello", "(1,2),(3)", '{"bbox_2d": [1, 2, 3]}', "[1, 2, 3, 4]",
                                     "from to seconds", "bbox_2d 1 2 3 4", "(a,b),(c,d)"])
def test_garbage_parses_to_none(family, garbage):
    answers = text_answers(family)
    assert answers.parse_box(garbage, 64, 64) is None
    assert answers.parse_interval(garbage, 16.0) is None


def test_styles_do_not_cross():
    # a Qwen2-VL parser does not read Qwen2.5-VL JSON and vice versa (the convention is per family)
    assert text_answers("qwen2_vl").parse_box('{"bbox_2d": [1, 2, 30, 40]}', 64, 64) is None
    assert text_answers("qwen2_5_vl").parse_box("(1,2),(30,40)", 64, 64) is None


def test_out_of_range_numbers_are_clipped_and_empty_results_refused():
    q2 = text_answers("qwen2_vl")
    assert q2.parse_box("(-50,100),(1200,900)", 64, 64) == pytest.approx((0.0, 0.1, 1.0, 0.9))
    assert q2.parse_box("(1100,0),(1200,10)", 64, 64) is None  # both x clip to 1: an empty box
    assert q2.parse_box("(500,100),(400,900)", 64, 64) is None  # x2 < x1
    q25 = text_answers("qwen2_5_vl")
    assert q25.parse_box('{"bbox_2d": [10, 0, 200, 32]}', 64, 64) == pytest.approx((10 / 64, 0.0, 1.0, 0.5))
    assert q2.parse_interval("from -1.0 to 4.0 seconds", 16.0) == pytest.approx((0.0, 0.25))
    assert q2.parse_interval("from 20.0 to 30.0 seconds", 16.0) is None  # both clip to the end
    assert q2.parse_interval("from 8.0 to 4.0 seconds", 16.0) is None


def test_unparsable_rows_score_iou_zero():
    q2 = text_answers("qwen2_vl")
    parsed = [q2.parse_box(t, 64, 64) for t in ("(0,0),(500,500)", "nonsense")]
    pred = answers_to_tensor(parsed, 4)
    assert torch.isnan(pred[1]).all() and not torch.isnan(pred[0]).any()
    gt = torch.tensor([[[0.0, 0.0, 0.5, 0.5]], [[0.0, 0.0, 0.5, 0.5]]])
    with pytest.warns(UserWarning):  # half the predictions invalid
        scores = score_boxes(pred, gt)
    assert scores.num_invalid == 1 and math.isclose(scores.mean_iou, 0.5)


def test_descriptions_list_objects_left_to_right():
    text = text_answers("qwen2_vl").describe([("large", "red", "circle", 50.0), ("small", "blue", "square", 3.0)])
    assert text == "2 objects: a small blue square, a large red circle"


def test_unknown_family_and_bad_values_are_named():
    with pytest.raises(ValueError, match="smolvlm"):
        text_answers("smolvlm")
    with pytest.raises(ValueError, match="box="):
        text_answers("qwen2_vl").box((0.1, 0.2, 0.3), 64, 64)
    with pytest.raises(ValueError, match="seconds"):
        text_answers("qwen2_vl").interval((0.1, 0.2), seconds=0)
