"""Procedural grounding benchmarks: seeded and disjoint splits, boxes and intervals checked against the pixels,
every expression naming one object, and text-only baselines that fail."""

from __future__ import annotations

import collections
import hashlib

import numpy as np
import pytest
import torch

from driftkit.grounding.synthetic import (
    PALETTE, Expression, Scene, SceneObject, SpatialGroundingConfig, SpatialGroundingDataset,
    TemporalGroundingConfig, TemporalGroundingDataset, collate_grounding, frame_grid, is_unambiguous,
    make_spatial_split, make_temporal_split, parse_expression, resolve, shape_mask,
)

SPATIAL = SpatialGroundingConfig(train_size=300, val_size=40, test_size=150, seed=3)
TEMPORAL = TemporalGroundingConfig(train_size=200, val_size=30, test_size=100, seed=3)


@pytest.fixture(scope="module")
def spatial():
    return {s: make_spatial_split(SPATIAL, s) for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def temporal():
    return {s: make_temporal_split(TEMPORAL, s) for s in ("train", "val", "test")}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # [N, 4] xyxy each -> [N]
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = w * h
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def interval_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # [N, 2] each -> [N]
    inter = np.clip(np.minimum(a[:, 1], b[:, 1]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    return inter / (np.maximum(a[:, 1], b[:, 1]) - np.minimum(a[:, 0], b[:, 0]))


def mean_by_key(train, test, key, value, iou) -> float:
    """Acc@0.5 on test of predicting the mean train answer of examples sharing `key` (the text-only prior)."""
    groups = collections.defaultdict(list)
    for ex in train:
        groups[key(ex)].append(value(ex))
    fallback = np.mean([value(ex) for ex in train], axis=0)
    pred = np.array([np.mean(groups[key(ex)], axis=0) if key(ex) in groups else fallback for ex in test])
    return float((iou(pred, np.array([value(ex) for ex in test])) >= 0.5).mean())


def shape_from_pixels(mask: np.ndarray) -> str:
    """Square, circle or triangle from a tight [h, w] mask, by how much of its box it fills (circles >= 0.75,
    triangles <= 0.68 for sides >= 5 pixels)."""
    fill = mask.mean()
    return "square" if fill > 0.95 else "circle" if fill > 0.72 else "triangle"


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def digest(*arrays) -> str:
    return hashlib.sha1(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()


# ---- spatial ------------------------------------------------------------------------------------------------
def test_spatial_splits_are_seeded_and_disjoint(spatial):
    again = make_spatial_split(SPATIAL, "val")
    for a, b in zip(again, spatial["val"]):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert (a.expression, a.box) == (b.expression, b.box)
    short = make_spatial_split(SpatialGroundingConfig(val_size=5, seed=3), "val")  # examples depend on the index
    assert [e.expression for e in short] == [e.expression for e in spatial["val"][:5]]
    other = make_spatial_split(SpatialGroundingConfig(val_size=5, seed=4), "val")
    assert [e.box for e in other] != [e.box for e in short]
    keys = {s: {digest(np.asarray(e.image)) + e.expression for e in exs} for s, exs in spatial.items()}
    assert len(keys["train"]) == SPATIAL.train_size
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]


def test_boxes_tightly_enclose_the_drawn_objects(spatial):
    for ex in spatial["test"]:
        image = np.asarray(ex.image)
        s = ex.scene.size
        assert image.shape == (s, s, 3) and np.array_equal(image, ex.scene.render())
        x0, y0, x1, y1 = (int(round(v * s)) for v in ex.box)
        assert (x0, y0, x1, y1) == ex.scene.objects[ex.target].box and 0 <= x0 < x1 <= s and 0 <= y0 < y1 <= s
        for obj in ex.scene.objects:  # every object, distractors too: its colour fills exactly its box's extent
            bx0, by0, bx1, by1 = obj.box
            cx0, cy0 = max(bx0 - 1, 0), max(by0 - 1, 0)  # one pixel of margin (objects are >= 2 px apart)
            crop = image[cy0:by1 + 1, cx0:bx1 + 1]
            mask = (crop == PALETTE[obj.colour]).all(-1)
            gx0, gy0, gx1, gy1 = bbox(mask)
            assert (gx0 + cx0, gy0 + cy0, gx1 + cx0, gy1 + cy0) == obj.box
            assert mask.sum() == obj.area and shape_from_pixels(mask[gy0:gy1, gx0:gx1]) == obj.shape


def test_every_expression_names_one_object_among_distractors(spatial):
    kinds = collections.Counter()
    for ex in spatial["train"] + spatial["test"]:
        assert is_unambiguous(ex.scene, ex.expression), ex.expression
        expr = parse_expression(ex.expression)
        assert expr.text == ex.expression and expr.template == ex.template
        assert resolve(ex.scene, expr).strict == (ex.target,)
        t = ex.scene.objects[ex.target]
        others = [o for i, o in enumerate(ex.scene.objects) if i != ex.target]
        assert any(o.colour == t.colour or o.shape == t.shape for o in others)
        kinds[ex.kind] += 1
    assert set(kinds) == set(SPATIAL.kinds) and min(kinds.values()) > 30


def test_easy_levels_single_and_colour():
    """'single' draws one object named by colour and shape; 'colour' names the one object of its colour, with
    another object of another colour beside it."""
    single = make_spatial_split(SpatialGroundingConfig(kinds=("single",), train_size=40, seed=1), "train")
    for ex in single:
        assert len(ex.scene.objects) == 1 and ex.target == 0
        o = ex.scene.objects[0]
        assert ex.expression == f"the {o.colour} {o.shape}" and ex.box == ex.scene.box(0)
    assert len({ex.box for ex in single}) == len(single)  # positions vary, so the text alone gives no box
    colour = make_spatial_split(SpatialGroundingConfig(kinds=("colour",), train_size=40, seed=1), "train")
    for ex in colour:
        t = ex.scene.objects[ex.target]
        assert ex.expression == f"the {t.colour} object"
        assert [o.colour for o in ex.scene.objects].count(t.colour) == 1 and len(ex.scene.objects) >= 3
        assert is_unambiguous(ex.scene, ex.expression)
    default = SpatialGroundingConfig()
    assert "single" not in default.kinds and "colour" not in default.kinds


def test_same_expression_names_objects_all_over_the_image(spatial):
    boxes = collections.defaultdict(list)
    for ex in spatial["train"]:
        boxes[ex.expression].append(ex.box)
    frequent = [np.array(b) for b in boxes.values() if len(b) >= 4]
    assert len(frequent) >= 5
    for b in frequent:
        centres = (b[:, :2] + b[:, 2:]) / 2
        assert np.ptp(centres, axis=0).max() > 0.3
    all_centres = np.array([(np.array(e.box[:2]) + e.box[2:]) / 2 for e in spatial["train"]])
    assert (all_centres.std(0) > 0.2).all()


def test_text_alone_does_not_give_the_box(spatial):
    value = lambda ex: ex.box  # noqa: E731
    for key in (lambda ex: ex.template, lambda ex: ex.expression):
        assert mean_by_key(spatial["train"], spatial["test"], key, value, box_iou) < 0.05
    oracle = np.array([e.box for e in spatial["test"]])
    assert (box_iou(oracle, oracle) >= 0.5).all()


def obj(shape: str, colour: str, x: int, y: int, side: int, size: str = "small") -> SceneObject:
    return SceneObject(shape, colour, size, (x, y, x + side, y + side), int(shape_mask(shape, side).sum()))


def test_is_unambiguous_reads_attributes_relations_and_extremes():
    scene = Scene(64, 40, (obj("square", "red", 5, 5, 8), obj("square", "red", 30, 30, 18, "large"),
                           obj("circle", "blue", 40, 5, 8)))
    cases = {
        "the red square": False, "the small red square": True, "the large red square": True,
        "the blue circle": True, "the green circle": False, "the small square": True, "the small object": False,
        "the largest square": True, "the leftmost red object": True, "the rightmost object": False,
        # the large square's box overlaps the circle's in x but its centre is left of it: a borderline reading
        "the red square left of the blue circle": False,
        "the red square below the blue circle": True, "the red square above the blue circle": False,
    }
    for text, expected in cases.items():
        assert is_unambiguous(scene, text) == expected, text
    assert resolve(scene, parse_expression("the red square below the blue circle")).strict == (1,)
    close = Scene(64, 40, (obj("circle", "red", 5, 5, 10), obj("circle", "blue", 40, 40, 11)))
    assert not is_unambiguous(close, "the largest circle")  # areas within AREA_RATIO of each other
    apart = Scene(64, 40, (obj("circle", "red", 5, 5, 8), obj("circle", "blue", 40, 40, 16)))
    assert is_unambiguous(apart, "the largest circle") and is_unambiguous(apart, "the smallest circle")
    twin_anchor = Scene(64, 40, (obj("square", "red", 5, 5, 8), obj("circle", "blue", 40, 5, 8),
                                 obj("circle", "blue", 40, 40, 8)))
    assert not is_unambiguous(twin_anchor, "the red square left of the blue circle")


def test_expression_parse_round_trip_and_errors():
    text = "the red square left of the small blue circle"
    expr = parse_expression(text)
    assert expr == Expression("square", "red", relation="left of", anchor=Expression("circle", "blue", "small"))
    assert expr.text == text and expr.template == "the {colour} {shape} left of the {size} {colour} {shape}"
    assert parse_expression("the leftmost green object").template == "the leftmost {colour} object"
    with pytest.raises(ValueError, match="must start with 'the'"):
        parse_expression("red square")
    with pytest.raises(ValueError, match="'pink'"):
        parse_expression("the pink square")
    with pytest.raises(ValueError, match="'near'"):
        parse_expression("the red square near the blue circle")
    with pytest.raises(ValueError, match="ends without a noun"):
        parse_expression("the red")
    with pytest.raises(ValueError, match="relation='above'"):
        Expression("square", relation="above")


# ---- temporal -----------------------------------------------------------------------------------------------
def changed_frames(video: np.ndarray, region) -> set[int]:
    x0, y0, x1, y1 = region
    crop = video[:, y0:y1, x0:x1].astype(int)
    return {k for k in range(1, len(video)) if (crop[k] != crop[k - 1]).any()}


def shown(crop: np.ndarray) -> set[tuple[str, str]]:
    """(colour, shape) pairs drawn at full opacity in a cell crop [h, w, 3]."""
    pairs = set()
    for name, rgb in PALETTE.items():
        mask = (crop == rgb).all(-1)
        if mask.any():
            x0, y0, x1, y1 = bbox(mask)
            pairs.add((name, shape_from_pixels(mask[y0:y1, x0:x1])))
    return pairs


def test_temporal_splits_are_seeded_and_disjoint(temporal):
    again = make_temporal_split(TEMPORAL, "val")
    for a, b in zip(again, temporal["val"]):
        assert np.array_equal(a.video, b.video) and (a.query, a.interval) == (b.query, b.interval)
    keys = {s: {digest(e.video) for e in exs} for s, exs in temporal.items()}
    assert len(keys["train"]) == TEMPORAL.train_size
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]


def test_intervals_match_the_frames_where_events_happen(temporal):
    f = TEMPORAL.num_frames
    for ex in temporal["test"]:
        video = ex.video
        assert video.shape == (f, TEMPORAL.frame_size, TEMPORAL.frame_size, 3) and video.dtype == np.uint8
        start, end = ex.interval
        assert 0 <= start < end <= 1 and ex.interval == ex.events[0].interval and ex.query == ex.events[0].query
        still = np.ones(video.shape[1:3], dtype=bool)
        for ev in ex.events:
            frames = changed_frames(video, ev.region)
            assert frames == set(range(ev.first, ev.last + 1)), ev
            assert ev.interval == (min(frames) / f, (max(frames) + 1) / f)
            check_event_pixels(video, ev)
            x0, y0, x1, y1 = ev.region
            still[y0:y1, x0:x1] = False
        assert (video[:, still] == video[0, still]).all(), "pixels outside the event cells changed"


def check_event_pixels(video: np.ndarray, ev) -> None:
    """What the query says happened is what the pixels of the event's cell show before and after it."""
    words = ev.query.split()  # when does the {colour} {shape} {verb} [{colour}]
    pair = (words[3], words[4])
    x0, y0, x1, y1 = ev.region
    before, after = video[ev.first - 1, y0:y1, x0:x1], video[ev.last, y0:y1, x0:x1]
    background = video[0, y0, x0]  # cells keep a 1 px margin free
    empty = lambda crop: (crop == background).all()  # noqa: E731
    if ev.kind == "appear":
        assert empty(before) and shown(after) == {pair}
    elif ev.kind == "disappear":
        assert shown(before) == {pair} and empty(after)
    elif ev.kind == "move":
        m0, m1 = ((c == PALETTE[pair[0]]).all(-1) for c in (before, after))
        assert shown(before) == shown(after) == {pair} and m0.sum() == m1.sum() and bbox(m0) != bbox(m1)
    else:
        assert words[5:6] == ["turn"] and shown(before) == {pair} and shown(after) == {(words[6], pair[1])}


def test_each_query_names_one_object_among_distractor_events(temporal):
    same_kind = 0
    g, c = TEMPORAL.grid, TEMPORAL.frame_size // TEMPORAL.grid
    cells = [(x * c, y * c, x * c + c, y * c + c) for y in range(g) for x in range(g)]
    for ex in temporal["train"]:
        video, words = ex.video, ex.query.split()
        where = collections.defaultdict(set)  # (colour, shape) -> cells showing it at some frame
        for region in cells:
            x0, y0, x1, y1 = region
            for frame in video:
                for pair in shown(frame[y0:y1, x0:x1]):
                    where[pair].add(region)
        target = (words[3], words[4])
        assert where[target] == {ex.events[0].region}, ex.query
        assert any(p != target and (p[0] == target[0] or p[1] == target[1]) for p in where)
        assert len(ex.events) >= 2
        same_kind += any(ev.kind == ex.kind for ev in ex.events[1:])
    assert same_kind > 0.2 * len(temporal["train"])


def test_text_alone_does_not_give_the_moment(temporal):
    value = lambda ex: ex.interval  # noqa: E731
    for key in (lambda ex: ex.template, lambda ex: ex.query):
        assert mean_by_key(temporal["train"], temporal["test"], key, value, interval_iou) < 0.2
    starts = np.array([e.interval[0] for e in temporal["train"]])
    assert starts.std() > 0.2  # event times spread over the clip


# ---- configs, datasets --------------------------------------------------------------------------------------
def test_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="image_size=16"):
        SpatialGroundingConfig(image_size=16)
    with pytest.raises(ValueError, match="'pink'"):
        SpatialGroundingConfig(colours=("red", "pink"))
    with pytest.raises(ValueError, match="max_objects=2"):
        SpatialGroundingConfig(max_objects=2)
    with pytest.raises(ValueError, match="train_size=-1"):
        SpatialGroundingConfig(train_size=-1)
    with pytest.raises(TypeError, match="seed=1.5"):
        SpatialGroundingConfig(seed=1.5)
    with pytest.raises(ValueError, match="split='dev'"):
        make_spatial_split(SPATIAL, "dev")
    with pytest.raises(ValueError, match="max_event_frames=8"):
        TemporalGroundingConfig(frame_size=32, max_event_frames=8)
    with pytest.raises(ValueError, match="max_objects=5"):
        TemporalGroundingConfig(max_objects=5)
    with pytest.raises(ValueError, match="'teleport'"):
        TemporalGroundingConfig(event_kinds=("move", "teleport"))
    with pytest.raises(ValueError, match="prompt_template='find it'"):
        SpatialGroundingDataset([], prompt_template="find it")


def test_datasets_make_vlm_policy_batches(spatial, temporal):
    data = SpatialGroundingDataset(spatial["val"][:4], prompt_template="box of {expression}")
    batch = collate_grounding([data[i] for i in range(4)])
    assert batch["prompts"][0] == "box of " + spatial["val"][0].expression
    assert len(batch["images"]) == 4 and batch["images"][0].size == (64, 64)
    assert batch["target"].shape == (4, 1, 4) and batch["mask"].dtype == torch.bool and batch["mask"].all()
    assert torch.equal(data.targets()[:, 0], torch.tensor([e.box for e in spatial["val"][:4]]))
    clips = TemporalGroundingDataset(temporal["val"][:3], num_frames=8, cols=4, gap=1)
    item = clips[1]
    assert item["target"].shape == (1, 2) and len(item["frames"]) == 8
    assert item["images"].size == (4 * 32 + 3, 2 * 32 + 1)
    assert clips.frame_indices[0] == 0 and clips.frame_indices[-1] == TEMPORAL.num_frames - 1
    grid = np.asarray(item["images"])
    tile = grid[33:65, 66:98]  # row 1, column 2 -> sampled frame 6
    assert np.array_equal(tile, np.asarray(temporal["val"][1].frames[clips.frame_indices[6]]))
    assert collate_grounding([item, clips[0]])["target"].shape == (2, 1, 2)
    with pytest.raises(ValueError, match="frames\\[1\\] is 8x8"):
        frame_grid([temporal["val"][0].frames[0], temporal["val"][0].frames[0].resize((8, 8))])


def test_batches_train_a_tiny_vlm_policy(spatial, temporal):
    """Through the trainer's adapter (GroundingActions) and collate: the loss reaches the query embeddings and
    sampling gives one box or interval per query."""
    from driftkit.grounding.actions import GroundingActions, observations
    from driftkit.policy import VLMPolicyConfig, make_policy
    from driftkit.train.data import collate, dataset_stats, unpack_text

    torch.manual_seed(0)
    for data, d in ((SpatialGroundingDataset(spatial["train"][:4]), 4),
                    (TemporalGroundingDataset(temporal["train"][:4], num_frames=16), 2)):
        adapted = GroundingActions(data)
        cfg = VLMPolicyConfig(state_dim=0, horizon=1, action_dim=d, backbone="qwen2_5_vl-tiny", num_query_tokens=2,
                              cond="query", mode="frozen", decoder="regression",
                              decoder_options={"hidden_dim": 16, "depth": 1}).with_data(adapted)
        policy = make_policy(cfg)
        policy.set_stats(dataset_stats(adapted, cfg.stat_keys()))
        batch = unpack_text(collate([adapted[i] for i in range(4)]))
        assert batch["task"] == [data[i]["prompts"] for i in range(4)]
        loss = policy(batch).loss
        loss.backward()
        assert torch.isfinite(loss) and policy.backbone.query_embed.grad.abs().sum() > 0
        assert policy.sample(observations([data[i] for i in range(4)]), num_samples=3).shape == (4, 3, 1, d)
