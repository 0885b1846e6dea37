"""Write a LeRobotDataset v3.0 from whole episodes (no lerobot dependency: pyarrow + PyAV).

    with LeRobotWriter(root, fps=80, features={"observation.state": Feature("float32", (39,)),
                                               "action": Feature("float32", (4,))}) as w:
        w.add_episode({"observation.state": states, "action": actions}, task="reach the goal")

Episodes are appended to the current data file (and, for cameras, the current mp4 per camera); when the
data file grows past `data_file_mb` both roll over to the next (chunk, file) location together. Every
episode row of meta/episodes carries its own `stats/<feature>/<stat>` columns, index columns included, as
lerobot writes them: its dataset tools rebuild meta/stats.json from those.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from driftkit.data import format as fmt
from driftkit.data.format import Feature
from driftkit.data.stats import feature_stats, image_stats, stats_columns
from driftkit.data.video import VideoWriter

_ARROW = {"float32": pa.float32(), "float64": pa.float64(), "int64": pa.int64(), "int32": pa.int32(),
          "bool": pa.bool_()}
_VIDEO_STATS_STRIDE = 5  # keep every 5th camera frame for the statistics
_INDEX = {k: Feature(d, s) for k, (d, s) in fmt.INDEX_FEATURES.items()}


def frame_column(value: np.ndarray, feature: Feature) -> pa.Array:
    """[N, *shape] -> the parquet column lerobot (through Hugging Face datasets) writes for the feature:
    a plain column for (1,), a fixed-size list for (D,), nested lists (ArrayND storage) for more axes."""
    if feature.shape == (1,):
        return pa.array(value.reshape(-1), type=_ARROW[feature.dtype])
    arr = pa.array(value.reshape(-1), type=_ARROW[feature.dtype])
    for size in reversed(feature.shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    if len(feature.shape) == 1:
        return arr
    nested = _ARROW[feature.dtype]
    for _ in feature.shape:
        nested = pa.list_(nested)
    return arr.cast(nested)


def huggingface_metadata(features: dict[str, Feature]) -> bytes:
    """The b"huggingface" schema metadata of a data parquet file: datasets' Features JSON of its columns."""
    hf = {k: f.hf_feature() for k, f in features.items() if not f.is_video}
    return json.dumps({"info": {"features": hf}}).encode()


class LeRobotWriter:
    def __init__(self, root: str | Path, fps: int, features: dict[str, Feature], robot_type: str | None = None,
                 chunks_size: int = fmt.DEFAULT_CHUNKS_SIZE, data_file_mb: float = fmt.DEFAULT_DATA_FILE_MB,
                 overwrite: bool = False):
        self.root = Path(root)
        if int(fps) != fps or fps <= 0:
            raise ValueError(f"got fps={fps!r}, must be a positive integer")
        clash = sorted(set(features) & set(fmt.INDEX_FEATURES))
        if clash:
            raise ValueError(f"feature names {clash} are reserved for LeRobot's index columns")
        slashed = sorted(k for k in features if "/" in k)
        if slashed:
            raise ValueError(f"feature names {slashed} contain '/', which LeRobot's stats columns reserve")
        if (self.root / fmt.INFO_PATH).exists() and not overwrite:
            raise FileExistsError(f"{self.root} already holds a dataset; pass overwrite=True to replace it")
        if overwrite and (self.root / fmt.INFO_PATH).exists():
            for sub in ("meta", "data", "videos"):
                shutil.rmtree(self.root / sub, ignore_errors=True)
        self.fps, self.features, self.robot_type = int(fps), dict(features), robot_type
        self.chunks_size, self.data_file_mb = int(chunks_size), float(data_file_mb)
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict] = []
        self._stat_values: dict[str, list[np.ndarray]] = {k: [] for k in {**_INDEX, **self.features}}
        self._file_number = 0
        self._rows: dict[str, list] = {}
        self._rows_bytes = 0
        self._videos: dict[str, VideoWriter] = {}
        self._total_frames = 0
        self._closed = False

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.is_video]

    def add_episode(self, frames: dict[str, np.ndarray], task: str) -> int:
        """frames: feature name -> [N, *shape] array (video: [N, H, W, 3] or, for a channel-first feature,
        [N, 3, H, W] uint8). Returns the episode index."""
        if self._closed:
            raise RuntimeError("the writer is closed")
        n = self._check_episode(frames, task)
        ep = len(self._episodes)
        task_index = self._tasks.setdefault(task, len(self._tasks))
        start = self._total_frames
        loc = fmt.file_location(self._file_number, self.chunks_size)
        row = {"episode_index": ep, "tasks": [task], "length": n,
               "data/chunk_index": loc["chunk_index"], "data/file_index": loc["file_index"],
               "dataset_from_index": start, "dataset_to_index": start + n}
        columns = {"index": np.arange(start, start + n, dtype=np.int64),
                   "episode_index": np.full(n, ep, dtype=np.int64),
                   "frame_index": np.arange(n, dtype=np.int64),
                   "timestamp": (np.arange(n) / self.fps).astype(np.float32),
                   "task_index": np.full(n, task_index, dtype=np.int64)}
        episode_stats = {}
        for key, feat in self.features.items():
            value = np.asarray(frames[key])
            if feat.is_video:
                value = self._hwc(key, feat, value)
                row.update(self._append_video(key, feat, value, loc))
                sample = value[::_VIDEO_STATS_STRIDE]
                self._stat_values[key].append(sample)
                episode_stats[key] = image_stats(sample)
            else:
                columns[key] = value.astype(feat.dtype, copy=False)
        for key, value in columns.items():
            self._stat_values[key].append(value)
            episode_stats[key] = feature_stats(value)
            self._rows.setdefault(key, []).append(value)
            self._rows_bytes += value.nbytes
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        row.update(stats_columns(episode_stats))
        self._episodes.append(row)
        self._total_frames += n
        if self._rows_bytes > self.data_file_mb * 1024**2:
            self._flush_files()
        return ep

    def _check_episode(self, frames: dict[str, np.ndarray], task: str) -> int:
        if not isinstance(task, str) or not task:
            raise ValueError(f"got task={task!r}, must be a non-empty string")
        missing = sorted(set(self.features) - set(frames))
        extra = sorted(set(frames) - set(self.features))
        if missing or extra:
            raise ValueError(f"episode frames must have exactly the declared features: missing {missing}, "
                             f"undeclared {extra}")
        lengths = {k: len(v) for k, v in frames.items()}
        if len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise ValueError(f"every feature needs the same non-zero number of frames, got {lengths}")
        for key, feat in self.features.items():
            shape = tuple(np.shape(frames[key])[1:])
            # Like lerobot, a camera's frames may come channel-first or channel-last whatever was declared.
            allowed = (feat.shape, feat.frame_shape) if feat.is_video else (feat.shape,)
            if shape not in allowed:
                raise ValueError(f"feature {key!r} has per-frame shape {list(shape)}, declared "
                                 f"{list(feat.shape)}")
            value = np.asarray(frames[key])
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                raise ValueError(f"feature {key!r} contains non-finite values")
        return next(iter(lengths.values()))

    @staticmethod
    def _hwc(key: str, feat: Feature, frames: np.ndarray) -> np.ndarray:
        """Camera frames -> [N, H, W, 3] uint8, the layout the encoder takes."""
        if frames.dtype != np.uint8:
            raise ValueError(f"video feature {key!r} must be uint8 frames, got dtype {frames.dtype}")
        if frames.shape[1:] == feat.frame_shape:
            return frames
        return np.ascontiguousarray(np.moveaxis(frames, 1, -1))

    def _append_video(self, key: str, feat: Feature, frames: np.ndarray, loc: dict) -> dict:
        writer = self._videos.get(key)
        if writer is None:
            path = self.root / fmt.VIDEO_PATH.format(video_key=key, **loc)
            h, w, _ = feat.frame_shape
            writer = self._videos[key] = VideoWriter(path, self.fps, h, w)
        t0 = writer.frames_written / self.fps
        writer.write(frames)
        return {f"videos/{key}/chunk_index": loc["chunk_index"], f"videos/{key}/file_index": loc["file_index"],
                f"videos/{key}/from_timestamp": t0, f"videos/{key}/to_timestamp": t0 + len(frames) / self.fps}

    def _flush_files(self) -> None:
        """Write the current data parquet and close the current mp4s; later episodes go to the next file."""
        if not self._rows:
            return
        loc = fmt.file_location(self._file_number, self.chunks_size)
        path = self.root / fmt.DATA_PATH.format(**loc)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self._frame_table(), path)
        for writer in self._videos.values():
            writer.close()
        self._videos, self._rows, self._rows_bytes = {}, {}, 0
        self._file_number += 1

    def _frame_table(self) -> pa.Table:
        columns = {**_INDEX, **{k: f for k, f in self.features.items() if not f.is_video}}
        arrays = [frame_column(np.concatenate(self._rows[k]), f) for k, f in columns.items()]
        table = pa.Table.from_arrays(arrays, names=list(columns))
        return table.replace_schema_metadata({b"huggingface": huggingface_metadata(columns)})

    def close(self) -> Path:
        """Flush the last files and write meta/ (info, stats, tasks, episodes). Returns the dataset root."""
        if self._closed:
            return self.root
        if not self._episodes:
            raise ValueError(f"no episodes were added to {self.root}; nothing to write")
        self._flush_files()
        self._closed = True
        self._write_episodes()
        self._write_tasks()
        stats = {}
        for key, feat in {**_INDEX, **self.features}.items():
            values = np.concatenate(self._stat_values[key])
            stats[key] = image_stats(values) if feat.is_video else feature_stats(values)
        self._write_json(fmt.STATS_PATH, stats)
        self._write_json(fmt.INFO_PATH, self._info())
        return self.root

    def _info(self) -> dict:
        features = {k: {"dtype": d, "shape": list(s), "names": None} for k, (d, s) in fmt.INDEX_FEATURES.items()}
        features.update({k: f.to_json(self.fps) for k, f in self.features.items()})
        n_ep = len(self._episodes)
        return {"codebase_version": fmt.CODEBASE_VERSION, "robot_type": self.robot_type,
                "total_episodes": n_ep, "total_frames": self._total_frames, "total_tasks": len(self._tasks),
                "chunks_size": self.chunks_size, "data_files_size_in_mb": fmt.json_number(self.data_file_mb),
                "video_files_size_in_mb": fmt.DEFAULT_VIDEO_FILE_MB, "fps": self.fps,
                "splits": {"train": f"0:{n_ep}"}, "data_path": fmt.DATA_PATH,
                "video_path": fmt.VIDEO_PATH if self.video_keys else None, "features": features}

    def _write_episodes(self) -> None:
        path = self.root / fmt.EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = {k: [row[k] for row in self._episodes] for k in self._episodes[0]}
        table = pa.table({k: (pa.array(v, type=pa.list_(pa.string())) if k == "tasks" else pa.array(v))
                          for k, v in columns.items()})
        pq.write_table(table, path)

    def _write_tasks(self) -> None:
        # LeRobot reads this with pandas, the task string being the index; the pandas metadata says so.
        tasks = sorted(self._tasks, key=self._tasks.get)
        table = pa.table({"task": pa.array(tasks, type=pa.string()),
                          "task_index": pa.array([self._tasks[t] for t in tasks], type=pa.int64())})
        pandas_meta = {"index_columns": ["task"], "column_indexes": [], "creator": {"library": "driftkit"},
                       "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                    "numpy_type": "int64", "metadata": None},
                                   {"name": "task", "field_name": "task", "pandas_type": "unicode",
                                    "numpy_type": "object", "metadata": None}]}
        table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        path = self.root / fmt.TASKS_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)

    def _write_json(self, rel: str, value: dict) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=2), encoding="utf-8")

    def __enter__(self) -> "LeRobotWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            for writer in self._videos.values():
                writer.close()
