"""LeRobot v3 files as lerobot 0.4.4 writes and reads them: channel-first cameras, multi-axis features,
per-episode stats columns, rebuilt stats, integer fps, the huggingface schema metadata, and paths that must
stay inside the dataset folder."""

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from driftkit.data import DatasetFormatError, Feature, LeRobotReader, LeRobotWriter, make_action_chunks

CAM = "observation.images.front"
LENGTHS = (6, 3, 5)
H, W = 16, 24  # not square, so a swapped height and width cannot pass
EPISODES_FILE = "meta/episodes/chunk-000/file-000.parquet"
DATA_FILE = "data/chunk-000/file-000.parquet"


def _features():
    return {"action": Feature("float32", (2,)), "grid": Feature("float32", (2, 3)),
            "cube": Feature("int64", (2, 2, 2)), "reward": Feature("float32", (1,)),
            CAM: Feature("video", (3, H, W), names=("channels", "height", "width"))}


def _episodes(seed=0):
    """Per episode: the frames given to the writer (camera channel-first) and the camera as [N, H, W, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 8, yy * 12, (xx + yy) * 5], axis=-1)[None]  # smooth, so the codec keeps it
    out = []
    for n in LENGTHS:
        hwc = np.clip(base + rng.integers(0, 60, size=(n, 1, 1, 1)), 0, 255).astype(np.uint8)
        ep = {"action": rng.normal(size=(n, 2)).astype(np.float32),
              "grid": rng.normal(size=(n, 2, 3)).astype(np.float32),
              "cube": rng.integers(-5, 5, size=(n, 2, 2, 2)),
              "reward": rng.normal(size=(n, 1)).astype(np.float32),
              CAM: np.ascontiguousarray(np.moveaxis(hwc, -1, 1))}  # [n, 3, H, W]
        out.append((ep, hwc))
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat") / "ds"
    eps = _episodes()
    with LeRobotWriter(root, fps=10, features=_features()) as w:
        for i, (ep, _) in enumerate(eps):
            w.add_episode(ep, task=f"task {i % 2}")
    return root, eps


def _copy(root, dst):
    shutil.copytree(root, dst)
    return dst


def _cat(eps, key):
    return np.concatenate([hwc if key == "hwc" else ep[key] for ep, hwc in eps])


def test_channel_first_video_round_trip(written):
    root, eps = written
    info = json.loads((root / "meta/info.json").read_text())
    assert info["features"][CAM]["shape"] == [3, H, W]
    assert (info["features"][CAM]["info"]["video.height"], info["features"][CAM]["info"]["video.width"]) == (H, W)
    ds = LeRobotReader(root)
    assert ds.features[CAM].channels_first and ds.features[CAM].frame_shape == (H, W, 3)
    frames = ds.video(CAM)
    ref = _cat(eps, "hwc").astype(int)
    assert frames.shape == (sum(LENGTHS), H, W, 3) and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - ref).mean() < 4.0
    # Channels stay channels: the red ramp runs along the width, the green one along the height.
    assert np.corrcoef(frames[..., 0].mean(axis=(0, 1)), ref[..., 0].mean(axis=(0, 1)))[0, 1] > 0.99
    assert np.corrcoef(frames[..., 1].mean(axis=(0, 2)), ref[..., 1].mean(axis=(0, 2)))[0, 1] > 0.99


def test_video_layout_comes_from_names_then_shape(tmp_path):
    assert Feature("video", (3, 4, 3), names=("channels", "height", "width")).frame_shape == (4, 3, 3)
    assert Feature("video", (3, 4, 3)).frame_shape == (3, 4, 3)  # no names: channels last when both fit
    assert Feature("video", (3, 8, 6)).channels_first
    assert not Feature("video", (8, 6, 3), names=("height", "width", "channel")).channels_first
    with pytest.raises(ValueError, match=r"shape=\(3, 8, 6\).*channels"):
        Feature("video", (3, 8, 6), names=("height", "width", "channels"))
    with pytest.raises(ValueError, match=r"\(8, 6, 4\)"):
        Feature("video", (8, 6, 4))
    # The writer takes either layout for a camera, as lerobot does.
    ep, hwc = _episodes()[0]
    with LeRobotWriter(tmp_path / "d", fps=10, features=_features()) as w:
        w.add_episode({**ep, CAM: hwc}, task="t")
    assert np.abs(LeRobotReader(tmp_path / "d").video(CAM).astype(int) - hwc.astype(int)).mean() < 4.0


def test_multi_axis_numeric_round_trip(written):
    root, eps = written
    ds = LeRobotReader(root)
    grid, cube = ds.column("grid"), ds.column("cube")
    assert grid.shape == (sum(LENGTHS), 2, 3) and cube.shape == (sum(LENGTHS), 2, 2, 2)
    np.testing.assert_array_equal(grid, _cat(eps, "grid"))
    np.testing.assert_array_equal(cube, _cat(eps, "cube"))
    assert cube.dtype == np.int64 and ds.column("reward").shape == (sum(LENGTHS), 1)
    schema = pq.read_schema(root / DATA_FILE)
    # Hugging Face datasets' ArrayND storage: nested variable lists, as lerobot's files hold them.
    assert schema.field("grid").type == pa.list_(pa.list_(pa.float32()))
    assert pa.types.is_fixed_size_list(schema.field("action").type)
    chunks = make_action_chunks(grid, ds.episode_ends(), horizon=4)
    assert chunks.actions.shape == (sum(LENGTHS), 4, 2, 3) and chunks.mask.shape == chunks.actions.shape
    np.testing.assert_array_equal(chunks.actions[7], grid[[7, 8, 8, 8]])  # episode 1 is frames 6..8
    assert chunks.mask[7, :, 1, 2].tolist() == [True, True, False, False]


def test_nested_column_with_a_wrong_inner_size_is_refused(tmp_path, written):
    root, _ = written
    d = _copy(root, tmp_path / "bad_grid")
    table = pq.read_table(d / DATA_FILE)
    rows = table.column("grid").to_pylist()
    rows[4] = [[1.0, 2.0], [3.0, 4.0, 5.0]]  # same number of values per frame would not catch a ragged row
    rows[5] = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0]]
    i = table.column_names.index("grid")
    pq.write_table(table.set_column(i, "grid", pa.array(rows, type=pa.list_(pa.list_(pa.float32())))),
                   d / DATA_FILE)
    with pytest.raises(DatasetFormatError, match=r"file-000\.parquet: column 'grid'.*axis 1"):
        LeRobotReader(d)


def test_per_episode_stats_columns_match_each_episode(written):
    root, eps = written
    table = pq.read_table(root / EPISODES_FILE)
    rows = table.to_pylist()
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index", "action", "grid", CAM):
        for stat in ("min", "max", "mean", "std", "count", "q01", "q99"):
            assert f"stats/{key}/{stat}" in table.column_names
    for (ep, _), row, n in zip(eps, rows, LENGTHS):
        a = ep["action"].astype(np.float64)
        np.testing.assert_allclose(row["stats/action/mean"], a.mean(0), rtol=1e-12)
        np.testing.assert_allclose(row["stats/action/std"], a.std(0), rtol=1e-12)
        np.testing.assert_allclose(row["stats/action/min"], a.min(0))
        np.testing.assert_allclose(row["stats/action/max"], a.max(0))
        np.testing.assert_allclose(row["stats/action/q99"], np.quantile(a, 0.99, axis=0), rtol=1e-12)
        assert row["stats/action/count"] == [n]
        g = ep["grid"].astype(np.float64).reshape(-1, 3)  # lerobot: stats along the last axis
        np.testing.assert_allclose(row["stats/grid/mean"], g.mean(0), rtol=1e-12)
        assert row["stats/frame_index/max"] == [n - 1] and row["stats/frame_index/count"] == [n]
        assert row["stats/episode_index/min"] == [rows.index(row)]
        assert np.array(row[f"stats/{CAM}/mean"]).shape == (3, 1, 1)
    ds = LeRobotReader(root)
    np.testing.assert_allclose(ds.episodes[1].stats["action"]["mean"], eps[1][0]["action"].mean(0), rtol=1e-6)
    stats = json.loads((root / "meta/stats.json").read_text())
    assert stats["index"]["max"] == [sum(LENGTHS) - 1] and stats["timestamp"]["count"] == [sum(LENGTHS)]


def _empty_stats(root, dst):
    d = _copy(root, dst)
    (d / "meta/stats.json").write_text("{}")  # what lerobot's delete_episodes leaves without stats columns
    return d


def test_empty_stats_json_is_rebuilt_from_episode_stats(tmp_path, written):
    root, eps = written
    original = json.loads((root / "meta/stats.json").read_text())
    ds = LeRobotReader(_empty_stats(root, tmp_path / "empty"))
    for key in ("action", "grid", "timestamp", CAM):
        for stat in ("mean", "std", "min", "max", "count"):
            np.testing.assert_allclose(ds.stats[key][stat], original[key][stat], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{key}/{stat}")
    actions = _cat(eps, "action").astype(np.float64)
    np.testing.assert_allclose(ds.norm_stats("action").std.numpy(), actions.std(0), rtol=1e-5)
    assert ds.norm_stats(CAM).mean.shape == (3, 1, 1)


def test_without_any_stats_numeric_ones_come_from_frames_and_cameras_fail_clearly(tmp_path, written):
    root, eps = written
    d = _empty_stats(root, tmp_path / "bare")
    table = pq.read_table(d / EPISODES_FILE)
    pq.write_table(table.drop_columns([c for c in table.column_names if c.startswith("stats/")]), d / EPISODES_FILE)
    ds = LeRobotReader(d)
    actions = _cat(eps, "action").astype(np.float64)
    np.testing.assert_allclose(ds.stats["action"]["q01"], np.quantile(actions, 0.01, axis=0), rtol=1e-12)
    np.testing.assert_allclose(ds.stats["grid"]["mean"], _cat(eps, "grid").reshape(-1, 3).mean(0), rtol=1e-6)
    with pytest.raises(DatasetFormatError, match=rf"'{CAM}'.*stats\.json"):
        ds.norm_stats(CAM)
    (d / "meta/stats.json").unlink()
    assert set(LeRobotReader(d).stats) >= {"action", "grid", "index"}


def _with_info(root, dst, **changes):
    d = _copy(root, dst)
    info = json.loads((d / "meta/info.json").read_text())
    (d / "meta/info.json").write_text(json.dumps({**info, **changes}))
    return d


def test_path_templates_cannot_leave_the_dataset(tmp_path, written):
    root, _ = written
    template = "../outside/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    d = _with_info(root, tmp_path / "a" / "ds", data_path=template)
    (tmp_path / "a/outside/chunk-000").mkdir(parents=True)
    shutil.copy(d / DATA_FILE, tmp_path / "a/outside/chunk-000/file-000.parquet")  # would load otherwise
    with pytest.raises(ValueError, match=rf"data_path template {template!r}.*outside the dataset root"):
        LeRobotReader(d)
    video = "/tmp/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    with pytest.raises(DatasetFormatError, match=rf"video_path template {video!r}"):
        LeRobotReader(_with_info(root, tmp_path / "b", video_path=video))
    attr = "data/{chunk_index.__class__}/file-{file_index:03d}.parquet"
    with pytest.raises(DatasetFormatError, match=r"chunk_index\.__class__"):
        LeRobotReader(_with_info(root, tmp_path / "c", data_path=attr))


def test_symlinks_out_of_the_dataset_are_refused(tmp_path, written):
    root, _ = written
    d = _copy(root, tmp_path / "linked")
    outside = tmp_path / "elsewhere"
    shutil.move(d / "data/chunk-000", outside)
    os.symlink(outside, d / "data/chunk-000")
    with pytest.raises(DatasetFormatError, match=r"data_path template .*outside the dataset root"):
        LeRobotReader(d)
    (d / "data/chunk-000").unlink()
    shutil.copytree(outside, d / "data/chunk-000")
    LeRobotReader(d)  # the same files inside the folder are fine


def test_info_json_has_integer_fps(written):
    root, _ = written
    text = (root / "meta/info.json").read_text()
    info = json.loads(text)
    assert info["fps"] == 10 and type(info["fps"]) is int
    assert type(info["features"][CAM]["info"]["video.fps"]) is int
    assert type(info["features"]["action"]["fps"]) is int
    assert "10.0" not in text


def test_data_files_carry_huggingface_features(written):
    root, _ = written
    meta = pq.read_schema(root / DATA_FILE).metadata
    features = json.loads(meta[b"huggingface"])["info"]["features"]
    value = {"dtype": "float32", "_type": "Value"}
    assert features["timestamp"] == value and features["index"] == {"dtype": "int64", "_type": "Value"}
    assert features["reward"] == value
    assert features["action"] == {"feature": value, "length": 2, "_type": "List"}
    assert features["grid"] == {"shape": [2, 3], "dtype": "float32", "_type": "Array2D"}
    assert features["cube"] == {"shape": [2, 2, 2], "dtype": "int64", "_type": "Array3D"}
    assert CAM not in features
    assert list(features) == pq.read_schema(root / DATA_FILE).names  # one entry per column, in order
