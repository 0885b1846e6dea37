"""The text-interface pretraining mix (driftkit.grounding.pretrain): deterministic items, answers that parse back
to their targets, the expression / query kind of every item, and clear errors."""

import pytest
import torch

from driftkit.grounding.pretrain import PretrainDataConfig, make_pretrain_data
from driftkit.grounding.synthetic_temporal import EVENT_KINDS
from driftkit.grounding.text_answers import text_answers

CFG = dict(family="qwen3_vl", image_size=128, train_scenes=12, temporal_clips=4, test_size=4,
           kinds=("colour", "single"), describe_fraction=0.5)


@pytest.fixture(scope="module")
def train():
    return make_pretrain_data(PretrainDataConfig(**CFG), "train")


def test_same_config_same_items_other_split_other_items(train):
    """Mutations caught: a data stream seeded from global state; the test split drawn from the train stream."""
    again = make_pretrain_data(PretrainDataConfig(**CFG), "train")
    assert again.answers == train.answers and again.questions == train.questions
    assert all(torch.equal(a, b) for a, b in zip(again.images, train.images))
    test = make_pretrain_data(PretrainDataConfig(**CFG), "test")
    assert test.answers[0] != train.answers[0]


def test_answers_parse_back_to_the_targets_and_levels_name_the_kinds(train):
    """Mutations caught: a box written in another family's units; the interval's seconds off by the clip length;
    levels shifted against the items (a description given a kind, a box given none)."""
    answers, side = text_answers("qwen3_vl"), CFG["image_size"]
    counts = {k: train.kinds.count(k) for k in ("box", "describe", "interval")}
    assert counts["box"] == 12 and counts["interval"] == 4 and 0 < counts["describe"] < 12
    for kind, text, truth, level in zip(train.kinds, train.answers, train.truth, train.levels):
        if kind == "box":
            got = answers.parse_box(text, width=side, height=side)
            assert level in CFG["kinds"] and max(abs(a - b) for a, b in zip(got, truth)) <= 1e-3 + 0.5 / 1000
        elif kind == "interval":
            got = answers.parse_interval(text, seconds=16.0)
            assert level in EVENT_KINDS and max(abs(a - b) for a, b in zip(got, truth)) <= 0.05 / 16 + 1e-6
        else:
            assert level is None and truth is None and text.split(" ")[1].startswith("object")
    singles = train.subset("box", level="single")
    assert set(singles.levels) == {"single"} and len(singles) == train.levels.count("single")
    assert len(train.subset("box", first=3)) == 3 and singles.targets().shape == (len(singles), 1, 4)


def test_bad_configs_name_the_value():
    with pytest.raises(ValueError, match=r"image_size=130 with num_frames=16: the 4 grid columns"):
        PretrainDataConfig(image_size=130)
    with pytest.raises(ValueError, match=r"describe_fraction=1.5"):
        PretrainDataConfig(describe_fraction=1.5)
    with pytest.raises(ValueError, match=r"split='val'"):
        make_pretrain_data(PretrainDataConfig(**CFG), "val")
    with pytest.raises(ValueError, match=r"no items of kind 'interval', level 'colour'"):
        make_pretrain_data(PretrainDataConfig(**CFG), "test").subset("interval", level="colour")


FRAMES = dict(family="qwen3_vl", image_size=96, num_frames=9, train_scenes=0, temporal_clips=3, test_size=2)


def test_frames_layout_gives_each_grid_cell_as_a_camera_after_its_timestamp():
    """The "frames" layout holds the same pixels as the grid, cell k = camera frame_k, and its image_labels are
    the frames' start times. Mutations caught: frames out of order, a frame side other than the grid cell's,
    timestamps of frame ends or in fractions, a mixed dataset reporting one camera set."""
    from driftkit.grounding.actions import frame_cameras

    frames = make_pretrain_data(PretrainDataConfig(**FRAMES, frame_layout="frames"), "train")
    grid = make_pretrain_data(PretrainDataConfig(**FRAMES), "train")
    assert frames.cameras == frame_cameras(9) and grid.cameras == ["observation.images.frame"]
    assert frames.answers == grid.answers and frames.questions == grid.questions
    item, tiled = frames[1], grid[1]["observation.images.frame"]  # [3, 96, 96]: a 3 x 3 grid of 32 px
    for k, cam in enumerate(frame_cameras(9)):
        r, c = divmod(k, 3)
        torch.testing.assert_close(item[cam], tiled[:, 32 * r:32 * (r + 1), 32 * c:32 * (c + 1)], rtol=0, atol=0)
    cfg = PretrainDataConfig(**FRAMES, frame_layout="frames")
    assert cfg.input_side == 32 and PretrainDataConfig(**FRAMES).input_side == 96
    assert cfg.image_labels()[:3] == ("<0.0 seconds>", "<1.8 seconds>", "<3.6 seconds>")
    assert len(cfg.image_labels()) == 9 and PretrainDataConfig(**FRAMES).image_labels() == ()
    test = make_pretrain_data(cfg, "test")  # spatial scenes (1 image) and clips (9) together
    with pytest.raises(ValueError, match=r"items hold \[1, 9\] images each.*subset\(kind\)"):
        test.cameras
    assert test.subset("interval").cameras == frame_cameras(9) and len(test.subset("box").cameras) == 1


def test_frames_layout_refuses_to_mix_scenes_and_clips_in_training():
    with pytest.raises(ValueError, match=r"frame_layout='frames' with train_scenes=4 and temporal_clips=3"):
        PretrainDataConfig(**{**FRAMES, "train_scenes": 4}, frame_layout="frames")
    with pytest.raises(ValueError, match=r"frame_layout='video'"):
        PretrainDataConfig(**FRAMES, frame_layout="video")
    with pytest.raises(ValueError, match=r"temporal_clips=0"):
        PretrainDataConfig(**{**FRAMES, "temporal_clips": 0})  # nothing to train on
