"""Several images per row (multi-camera robots): every family lays out one image block per camera, in camera
order, then the prompt and the query tokens; the model sees every camera; one image per row is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from driftkit.backbones import Backbone
from vlm_helpers import FAMILIES, images

A, B, C, D = images(4)
PROMPTS = ["pick up the red cube", "go"]

# The text of one row, spelled out per family from the released checkpoints' formats: n placeholders per
# image, `cameras` images, then the prompt (and the query tokens, added by the test).
LAYOUTS = {
    "qwen2_vl": lambda n, cameras, p: ("<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>") * cameras + p,
    "smolvlm": lambda n, cameras, p: "<bos>" + ("<fake_token_around_image><global-img>" + "<image>" * n
                                                + "<fake_token_around_image>") * cameras + p,
    "paligemma": lambda n, cameras, p: "<image>" * n * cameras + "<bos>" + p + "\n",
}
LAYOUTS["qwen2_5_vl"] = LAYOUTS["qwen3_vl"] = LAYOUTS["qwen2_vl"]
NESTED = {"smolvlm"}  # pixel_values [B, N, 3, H, W]; the others stack all B * N images (or patches) on dim 0


@pytest.fixture(scope="module", params=FAMILIES)
def bb(request) -> Backbone:
    return Backbone.from_preset(f"{request.param}-tiny", num_query_tokens=3)


def row_text(bb: Backbone, inputs, row: int) -> str:
    ids = inputs.input_ids[row][inputs.attention_mask[row].bool()]
    return bb.tokenizer.decode(ids.tolist())


def test_two_images_get_two_blocks_in_the_family_layout(bb):
    one = bb.prepare([A], PROMPTS[:1])
    n = int((one.input_ids == bb.special_ids["image"]).sum())  # placeholders of one image
    two = bb.prepare([[A, B], [C, D]], PROMPTS)
    queries = "".join(bb.config.query_strings())
    layout = LAYOUTS[bb.family.name]
    assert row_text(bb, one, 0) == layout(n, 1, PROMPTS[0]) + queries
    for row, prompt in enumerate(PROMPTS):
        assert row_text(bb, two, row) == layout(n, 2, prompt) + queries
    assert (two.input_ids == bb.special_ids["image"]).sum(1).tolist() == [2 * n, 2 * n]


def test_image_tensors_are_row_major(bb):
    """The pixel tensors of [[a, b], [c, d]] are those of a, b, c, d one by one, in that order (a camera
    swapped between rows would feed a row another row's image)."""
    two = bb.prepare([[A, B], [C, D]], PROMPTS)
    singles = [bb.prepare([im], PROMPTS[:1]).vision for im in (A, B, C, D)]
    nested = bb.family.name in NESTED
    assert set(two.vision) == set(singles[0])
    for key, value in two.vision.items():
        want = torch.cat([s[key].flatten(0, 1) if nested else s[key] for s in singles])
        torch.testing.assert_close(value.flatten(0, 1) if nested else value, want, rtol=0, atol=0)
    if nested:
        assert two.vision["pixel_values"].shape[:2] == (2, 2)
    elif bb.family.mrope:
        assert two.vision["image_grid_thw"].shape == (4, 3)  # one grid per image
    else:
        assert two.vision["pixel_values"].shape == (4, 3, 64, 64)


def test_each_row_encodes_as_it_would_alone(bb):
    """Batching rows of two cameras changes nothing: catches images, grids or rotary positions of one row
    leaking into another."""
    both = bb.encode([[A, B], [C, D]], PROMPTS)
    for row, cams in enumerate(([A, B], [C, D])):
        alone = bb.encode([cams], PROMPTS[row:row + 1])
        torch.testing.assert_close(both.query[row], alone.query[0], atol=1e-5, rtol=0)


def test_the_model_sees_every_camera(bb):
    def query(row) -> torch.Tensor:
        return bb.encode([row], PROMPTS[:1]).query

    base = query([A, B])
    different = {
        "a second copy of the image": (query([A, A]), query(A)),
        "the second camera": (base, query([A, C])),
        "the first camera": (base, query([C, B])),
        "the camera order": (base, query([B, A])),
    }
    for what, (x, y) in different.items():
        assert (x - y).abs().max() > 1e-4, f"{bb.family.name}: query states ignore {what}"


def test_cached_prefix_of_several_cameras_matches_a_full_pass(bb):
    rows = [[A, B], [C, D]]
    full = bb.encode(rows, PROMPTS)
    rep = bb.encode_queries(bb.encode_prefix(rows, PROMPTS), repeats=2)
    torch.testing.assert_close(rep.query, full.query.repeat_interleave(2, 0), atol=1e-5, rtol=0)


def test_a_list_of_one_image_is_the_single_image_path(bb):
    bare = bb.prepare([A, B], PROMPTS)
    for rows in ([[A], [B]], [(A,), [B]], [A, [B]]):
        listed = bb.prepare(rows, PROMPTS)
        assert torch.equal(listed.input_ids, bare.input_ids) and torch.equal(listed.position_ids, bare.position_ids)
        assert all(torch.equal(listed.vision[k], v) for k, v in bare.vision.items())
    assert torch.equal(bb.encode([[A], [B]], PROMPTS).query, bb.encode([A, B], PROMPTS).query)


def test_camera_errors_name_the_bad_value():
    bb = Backbone.from_preset("qwen2_5_vl-tiny", num_query_tokens=3, max_length=20)
    with pytest.raises(ValueError, match=r"images\[1\] has 1 image\(s\) but images\[0\] has 2.*counts \[2, 1\]"):
        bb.prepare([[A, B], [C]], PROMPTS)
    with pytest.raises(ValueError, match=r"images\[1\] has 1 image\(s\) but images\[0\] has 2"):
        bb.prepare([[A, B], C], PROMPTS)  # a bare image counts as one camera
    with pytest.raises(ValueError, match=r"images\[0\] is an empty list"):
        bb.prepare([[], []], PROMPTS)
    with pytest.raises(TypeError, match=r"images\[0\]\[1\] has type str"):
        bb.prepare([[A, "wrist.png"]], PROMPTS[:1])
    with pytest.raises(ValueError, match=r"images\[0\]\[1\] is 8x8 pixels"):
        bb.prepare([[A, np.zeros((8, 8, 3), np.uint8)]], PROMPTS[:1])
    bb.prepare([[A, B]], ["go"])  # fits: 2 x (4 + 2) image tokens + 2 text + 3 queries = 17
    with pytest.raises(ValueError, match=r"prompts\[0\] needs .* for 3 image\(s\).* > max_length=20"):
        bb.prepare([[A, B, C]], ["go"])


LABELS = ("<0.0 seconds>", "<8.0 seconds>")


def labelled(name: str) -> Backbone:
    return Backbone.from_preset(f"{name}-tiny", num_query_tokens=3, image_labels=LABELS)


@pytest.mark.parametrize("name", ["qwen3_vl", "smolvlm"])
def test_image_labels_go_before_each_image_block(name):
    """Frames as cameras with their timestamps (Qwen3-VL's video layout): each label's text right before its
    image's block. Mutations caught: labels after the blocks, one label for all images, labels dropped."""
    bb = labelled(name)
    plain = Backbone.from_preset(f"{name}-tiny", num_query_tokens=3)
    n = int((plain.prepare([A], PROMPTS[:1]).input_ids == plain.special_ids["image"]).sum())
    text = row_text(bb, bb.prepare([[A, B]], PROMPTS[:1]), 0)
    block = LAYOUTS[name](n, 1, "").removeprefix("<bos>")
    head = "<bos>" if name == "smolvlm" else ""
    assert text == head + LABELS[0] + block + LABELS[1] + block + PROMPTS[0] + "".join(bb.config.query_strings())


def test_image_labels_reach_the_model_and_the_cache():
    """The states depend on the labels (the model reads them), and the cached prefix still matches a full pass
    (3-D rotary positions counted over the label tokens)."""
    bb = labelled("qwen3_vl")
    plain = Backbone.from_preset("qwen3_vl-tiny", num_query_tokens=3)
    assert (bb.encode([[A, B]], PROMPTS[:1]).query - plain.encode([[A, B]], PROMPTS[:1]).query).abs().max() > 1e-4
    rows = [[A, B], [C, D]]
    rep = bb.encode_queries(bb.encode_prefix(rows, PROMPTS), repeats=2)
    torch.testing.assert_close(rep.query, bb.encode(rows, PROMPTS).query.repeat_interleave(2, 0), atol=1e-5, rtol=0)


def test_image_label_errors_name_the_bad_value():
    bb = labelled("qwen3_vl")
    with pytest.raises(ValueError, match=r"got 3 image\(s\) per row but 2 image_labels \['<0.0 seconds>'"):
        bb.prepare([[A, B, C]], PROMPTS[:1])
    with pytest.raises(ValueError, match=r"image label '<\|image_pad\|>' contains image or query special tokens"):
        Backbone.from_preset("qwen3_vl-tiny", num_query_tokens=3, image_labels=("<|image_pad|>", "t"))
    with pytest.raises(TypeError, match=r"image_labels=\(0.0, 8.0\); each label must be a string"):
        Backbone.from_preset("qwen3_vl-tiny", image_labels=(0.0, 8.0))
