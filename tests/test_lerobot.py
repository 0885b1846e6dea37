"""LeRobotDataset v3.0 reader/writer: round trips, chunk padding, and clear errors for broken folders."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from driftkit.data import (
    DatasetFormatError,
    Feature,
    LeRobotDataset,
    LeRobotReader,
    LeRobotWriter,
    make_action_chunks,
    task_index_map,
)

CAM = "observation.images.cam"
LENGTHS = (7, 3, 5)
TASKS = ("pick the red block", "open the drawer", "pick the red block")


def _episodes(rng, video=True):
    """Three episodes with smooth camera frames (codecs keep smooth images close)."""
    eps = []
    yy, xx = np.mgrid[0:16, 0:16]
    for n in LENGTHS:
        ep = {"observation.state": rng.normal(size=(n, 5)).astype(np.float32),
              "action": rng.normal(size=(n, 2)).astype(np.float32),
              "reward": rng.normal(size=(n, 1)).astype(np.float32)}
        if video:
            base = np.stack([xx * 12, yy * 12, (xx + yy) * 6], axis=-1)[None]  # [1, 16, 16, 3]
            shift = rng.integers(0, 60, size=(n, 1, 1, 1))
            ep[CAM] = np.clip(base + shift, 0, 255).astype(np.uint8)
        eps.append(ep)
    return eps


def _features(video=True):
    feats = {"observation.state": Feature("float32", (5,)), "action": Feature("float32", (2,), names=("x", "y")),
             "reward": Feature("float32", (1,))}
    if video:
        feats[CAM] = Feature("video", (16, 16, 3))
    return feats


def _write(root, video=True, seed=0, **kwargs):
    eps = _episodes(np.random.default_rng(seed), video)
    with LeRobotWriter(root, fps=10, features=_features(video), **kwargs) as w:
        for ep, task in zip(eps, TASKS):
            w.add_episode(ep, task=task)
    return eps


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "data"
    return root, _write(root)


def test_round_trip_values_tasks_and_episodes(written):
    root, eps = written
    ds = LeRobotReader(root)
    for key in ("observation.state", "action", "reward"):
        np.testing.assert_array_equal(ds.column(key), np.concatenate([e[key] for e in eps]))
    assert ds.tasks == ["pick the red block", "open the drawer"]
    assert ds.frame_tasks() == [t for n, t in zip(LENGTHS, TASKS) for _ in range(n)]
    assert [e.length for e in ds.episodes] == list(LENGTHS)
    assert [(e.from_index, e.to_index) for e in ds.episodes] == [(0, 7), (7, 10), (10, 15)]
    np.testing.assert_array_equal(ds.column("frame_index")[:, 0], np.concatenate([np.arange(n) for n in LENGTHS]))
    np.testing.assert_allclose(ds.column("timestamp")[7:10, 0], [0.0, 0.1, 0.2], atol=1e-6)
    assert ds.fps == 10


def test_round_trip_video_within_codec_tolerance(written):
    root, eps = written
    frames = LeRobotReader(root).video(CAM)
    ref = np.concatenate([e[CAM] for e in eps]).astype(int)
    assert frames.shape == ref.shape and frames.dtype == np.uint8
    err = np.abs(frames.astype(int) - ref)
    assert err.mean() < 3.0 and err.max() < 40
    # Frames stay in order: each frame's brightness offset is recovered (shifts differ by up to 59).
    assert np.corrcoef(frames.mean(axis=(1, 2, 3)), ref.mean(axis=(1, 2, 3)))[0, 1] > 0.99


def test_stats_match_numpy(written):
    root, eps = written
    stats = json.loads((root / "meta/stats.json").read_text())
    actions = np.concatenate([e["action"] for e in eps]).astype(np.float64)
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["action"]["std"], actions.std(0), rtol=1e-12)
    np.testing.assert_allclose(stats["action"]["q01"], np.quantile(actions, 0.01, axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats["action"]["max"], actions.max(0))
    assert stats["action"]["count"] == [15]
    assert np.array(stats[CAM]["mean"]).shape == (3, 1, 1)
    assert 0.0 <= np.array(stats[CAM]["min"]).min() <= np.array(stats[CAM]["max"]).max() <= 1.0
    ns = LeRobotReader(root).norm_stats("action")
    np.testing.assert_allclose(ns.mean.numpy(), actions.mean(0), rtol=1e-6)


def test_info_json_follows_v3_layout(written):
    root, _ = written
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["total_episodes"] == 3 and info["total_frames"] == 15 and info["total_tasks"] == 2
    assert info["features"]["action"]["shape"] == [2] and info["features"]["action"]["names"] == ["x", "y"]
    assert {"index", "episode_index", "frame_index", "timestamp", "task_index"} <= set(info["features"])
    assert (root / "videos" / CAM / "chunk-000/file-000.mp4").is_file()
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    assert {"dataset_from_index", "dataset_to_index", "tasks", "length", f"videos/{CAM}/from_timestamp"} \
        <= set(episodes.column_names)
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    assert task_index_map(root) == {"pick the red block": 0, "open the drawer": 1}


def test_files_roll_over_and_read_back(tmp_path):
    eps = _write(tmp_path / "d", data_file_mb=1e-6, chunks_size=2)  # every episode overflows its file
    assert (tmp_path / "d/data/chunk-001/file-000.parquet").is_file()
    assert (tmp_path / f"d/videos/{CAM}/chunk-001/file-000.mp4").is_file()
    ds = LeRobotReader(tmp_path / "d")
    assert [e.data_file for e in ds.episodes] == [(0, 0), (0, 1), (1, 0)]
    np.testing.assert_array_equal(ds.column("action"), np.concatenate([e["action"] for e in eps]))
    ref = np.concatenate([e[CAM] for e in eps]).astype(int)
    assert np.abs(ds.video(CAM).astype(int) - ref).mean() < 3.0


def test_action_chunks_pad_at_episode_ends():
    actions = np.arange(10, dtype=np.float32).reshape(5, 2)  # frames 0-2: episode A, frames 3-4: episode B
    chunks = make_action_chunks(actions, np.array([3, 3, 3, 5, 5]), horizon=3)
    np.testing.assert_array_equal(chunks.actions[1], actions[[1, 2, 2]])  # pads with A's last action
    np.testing.assert_array_equal(chunks.actions[2], actions[[2, 2, 2]])
    np.testing.assert_array_equal(chunks.actions[3], actions[[3, 4, 4]])  # never reads into another episode
    expected = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(chunks.mask[:, :, 0], expected)
    assert chunks.mask.shape == (5, 3, 2) and (chunks.mask[..., 0] == chunks.mask[..., 1]).all()
    with pytest.raises(ValueError, match="horizon"):
        make_action_chunks(actions, np.array([3, 3, 3, 5, 5]), horizon=0)


def test_torch_dataset_items(written):
    root, eps = written
    ds = LeRobotDataset(root, horizon=4)
    assert len(ds) == 15
    item = ds[8]  # second frame of the 3-frame episode
    assert item["action"].shape == (4, 2) and item["action_is_pad"].tolist() == [False, False, True, True]
    torch.testing.assert_close(item["action"][:2], torch.from_numpy(eps[1]["action"][1:3]))
    assert item["task_index"].item() == 1 and item["observation.state"].shape == (5,)
    assert item["task"] == ds.tasks[1]  # the instruction, as the VLM policies read it
    assert ds.cameras == [CAM]
    img = item[CAM]
    assert img.shape == (3, 16, 16) and img.dtype == torch.float32 and 0.0 <= img.min() <= img.max() <= 1.0
    assert set(ds.stats) >= {"action", "observation.state"}


def test_missing_and_malformed_meta_raise_naming_the_file(tmp_path, written):
    root, _ = written
    with pytest.raises(DatasetFormatError, match="does not exist"):
        LeRobotReader(tmp_path / "nowhere")

    def broken(name):
        dst = tmp_path / name
        shutil.copytree(root, dst)
        return dst

    d = broken("no_info")
    (d / "meta/info.json").unlink()
    with pytest.raises(DatasetFormatError, match="meta/info.json"):
        LeRobotReader(d)
    d = broken("bad_json")
    (d / "meta/info.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match=r"info\.json is not valid JSON"):
        LeRobotReader(d)
    d = broken("old_version")
    info = json.loads((d / "meta/info.json").read_text())
    (d / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(DatasetFormatError, match="v2.1"):
        LeRobotReader(d)
    d = broken("no_fps")
    (d / "meta/info.json").write_text(json.dumps({k: v for k, v in info.items() if k != "fps"}))
    with pytest.raises(DatasetFormatError, match="fps"):
        LeRobotReader(d)
    d = broken("no_tasks")
    (d / "meta/tasks.parquet").unlink()
    with pytest.raises(DatasetFormatError, match="tasks.parquet"):
        LeRobotReader(d)


def test_missing_or_malformed_data_files_raise_naming_the_file(tmp_path, written):
    root, _ = written
    d = tmp_path / "no_data"
    shutil.copytree(root, d)
    (d / "data/chunk-000/file-000.parquet").unlink()
    with pytest.raises(DatasetFormatError, match="file-000.parquet"):
        LeRobotReader(d)
    d = tmp_path / "bad_data"
    shutil.copytree(root, d)
    (d / "data/chunk-000/file-000.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetFormatError, match="data/chunk-000/file-000.parquet"):
        LeRobotReader(d)
    d = tmp_path / "no_column"
    shutil.copytree(root, d)
    path = d / "data/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["action"]), path)
    with pytest.raises(DatasetFormatError, match="lacks column 'action'"):
        LeRobotReader(d)
    d = tmp_path / "no_video"
    shutil.copytree(root, d)
    (d / f"videos/{CAM}/chunk-000/file-000.mp4").unlink()
    with pytest.raises(DatasetFormatError, match="file-000.mp4"):
        LeRobotReader(d)
    d = tmp_path / "no_episodes"
    shutil.copytree(root, d)
    shutil.rmtree(d / "meta/episodes")
    with pytest.raises(DatasetFormatError, match="episode metadata"):
        LeRobotReader(d)
    d = tmp_path / "episode_columns"
    shutil.copytree(root, d)
    path = d / "meta/episodes/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["length"]), path)
    with pytest.raises(DatasetFormatError, match="length"):
        LeRobotReader(d)


def test_writer_rejects_bad_episodes(tmp_path):
    w = LeRobotWriter(tmp_path / "w", fps=10, features=_features(video=False))
    good = _episodes(np.random.default_rng(0), video=False)[0]
    with pytest.raises(ValueError, match="same non-zero number of frames"):
        w.add_episode({**good, "action": good["action"][:3]}, task="t")
    with pytest.raises(ValueError, match=r"'action' has per-frame shape \[3\]"):
        w.add_episode({**good, "action": np.zeros((7, 3), np.float32)}, task="t")
    with pytest.raises(ValueError, match="missing \\['reward'\\]"):
        w.add_episode({k: v for k, v in good.items() if k != "reward"}, task="t")
    with pytest.raises(ValueError, match="non-finite"):
        w.add_episode({**good, "action": np.full((7, 2), np.nan, np.float32)}, task="t")
    with pytest.raises(ValueError, match="no episodes"):
        w.close()
    w.add_episode(good, task="t")
    w.close()
    with pytest.raises(FileExistsError, match="overwrite"):
        LeRobotWriter(tmp_path / "w", fps=10, features=_features(video=False))
    with pytest.raises(ValueError, match="reserved"):
        LeRobotWriter(tmp_path / "x", fps=10, features={"index": Feature("int64", (1,))})
    with pytest.raises(ValueError, match="dtype='image'|dtype"):
        Feature("image", (8, 8, 3))


def test_parquet_columns_are_fixed_size_lists(written):
    root, _ = written
    table = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert pa.types.is_fixed_size_list(table.schema.field("action").type)
    assert table.schema.field("reward").type == pa.float32()  # shape (1,) features are plain columns
    assert CAM not in table.column_names  # cameras live only in the mp4s


def test_unsupported_features_are_skipped_with_a_warning(tmp_path, written):
    root, eps = written
    d = tmp_path / "extra"
    shutil.copytree(root, d)
    info = json.loads((d / "meta/info.json").read_text())
    info["features"]["observation.images.png"] = {"dtype": "image", "shape": [8, 8, 3], "names": None}
    (d / "meta/info.json").write_text(json.dumps(info))
    with pytest.warns(UserWarning, match="observation.images.png"):
        ds = LeRobotReader(d)
    assert "observation.images.png" not in ds.features
    np.testing.assert_array_equal(ds.column("action"), np.concatenate([e["action"] for e in eps]))
    info["features"]["action"] = {"dtype": "float32", "shape": [0]}
    (d / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetFormatError, match="feature 'action'"):
        LeRobotReader(d)
