"""Read a LeRobotDataset v3.0 from a local folder (pyarrow + PyAV; no lerobot dependency).

    ds = LeRobotReader(root)
    ds.column("observation.state")          # [N, 39] float32, frames in dataset order
    ds.video("observation.images.corner2")  # [N, H, W, 3] uint8, decoded on first use
    chunks = ds.action_chunks(horizon=16)   # actions [N, T, D], mask [N, T, D]
    ds.frame_tasks()                        # N language instructions

Every file the metadata points to is checked on opening; a missing or malformed one raises
DatasetFormatError naming it, and so does a path template that leads outside the dataset folder.
Statistics missing from meta/stats.json (lerobot's tools can leave it as {}) are rebuilt from the
per-episode `stats/...` columns of meta/episodes, or, for numeric features, from the data itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from driftkit.data import format as fmt
from driftkit.data.chunks import ActionChunks, make_action_chunks
from driftkit.data.format import DatasetFormatError, Feature
from driftkit.data.stats import REQUIRED_STATS, aggregate_stats, feature_stats, stats_from_row
from driftkit.data.video import read_video

_EPISODE_COLUMNS = ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
                    "dataset_from_index", "dataset_to_index")
_INDEX = {k: Feature(d, s) for k, (d, s) in fmt.INDEX_FEATURES.items()}


@dataclass(frozen=True)
class EpisodeInfo:
    index: int
    length: int
    tasks: tuple[str, ...]
    from_index: int
    """Global index of the episode's first frame."""
    to_index: int
    """One past the global index of its last frame."""
    data_file: tuple[int, int]
    """(chunk_index, file_index) of the parquet holding its frames."""
    video: dict
    """video key -> (chunk_index, file_index, from_timestamp)."""
    stats: dict = field(default_factory=dict)
    """feature -> {stat: float64 array} from the episode's `stats/<feature>/<stat>` columns (may be empty)."""


def read_parquet(path: Path) -> pa.Table:
    if not path.is_file():
        raise DatasetFormatError(f"missing parquet file {path}")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DatasetFormatError(f"cannot read parquet file {path}: {err}") from err


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t)


def _unnest(col: pa.Array, key: str, feature: Feature, where: Path) -> pa.Array:
    """Peel one list level per axis of the feature's shape, checking every row has that axis's size."""
    for axis, size in enumerate(feature.shape):
        if isinstance(col.type, pa.ExtensionType):  # datasets' ArrayND, when datasets is imported
            col = col.storage
        if not _is_list(col.type):
            raise DatasetFormatError(f"{where}: column {key!r} has type {col.type} with {axis} list level(s); "
                                     f"the feature's shape {list(feature.shape)} needs {len(feature.shape)}")
        lengths = np.asarray(col.value_lengths()) if not pa.types.is_fixed_size_list(col.type) else \
            np.full(len(col), col.type.list_size)
        if col.null_count or (lengths != size).any():
            raise DatasetFormatError(f"{where}: column {key!r} has rows with null or wrong-sized lists on axis "
                                     f"{axis}, expected shape {list(feature.shape)} per frame")
        col = col.flatten()
    return col


def _column_to_numpy(table: pa.Table, key: str, feature: Feature, where: Path) -> np.ndarray:
    """A scalar or (nested) list column -> [N, *shape] array of the feature's dtype."""
    col = table.column(key).combine_chunks()
    n = len(col)
    if not _is_list(col.type) and not isinstance(col.type, pa.ExtensionType):
        if feature.shape != (1,):
            raise DatasetFormatError(f"{where}: column {key!r} is scalar but the feature has shape "
                                     f"{list(feature.shape)}")
    else:
        col = _unnest(col, key, feature, where)
    if col.null_count:
        raise DatasetFormatError(f"{where}: column {key!r} holds {col.null_count} null values")
    return col.to_numpy(zero_copy_only=False).reshape(n, *feature.shape).astype(feature.dtype, copy=False)


class LeRobotReader:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetFormatError(f"dataset folder {self.root} does not exist")
        self.info, self.features = fmt.load_info(self.root)
        self.fps = float(self.info["fps"])
        self.tasks = self._load_tasks()
        self.episodes = self._load_episodes()
        self._columns = self._load_data()
        self.stats = self._load_stats()
        self._videos: dict[str, np.ndarray] = {}
        self._check_videos_exist()

    # ---- loading -------------------------------------------------------------------------------------
    def _read_stats_json(self) -> dict[str, dict[str, np.ndarray]]:
        path = self.root / fmt.STATS_PATH
        if not path.is_file():
            return {}
        raw = fmt.read_json(self.root, fmt.STATS_PATH)
        out = {}
        for key, entry in raw.items():
            if not isinstance(entry, dict):
                raise DatasetFormatError(f"{path}: stats of {key!r} must be an object of lists")
            try:
                out[key] = {name: np.asarray(v, dtype=np.float64) for name, v in entry.items()}
            except (TypeError, ValueError) as err:
                raise DatasetFormatError(f"{path}: stats of {key!r} are not numeric lists: {err}") from err
        return out

    def _load_stats(self) -> dict[str, dict[str, np.ndarray]]:
        """stats.json, with every feature it lacks rebuilt the way lerobot's tools do: aggregated from the
        episodes' own statistics; failing those, computed from the frames (numeric features only)."""
        stats = self._read_stats_json()
        for key, feat in {**_INDEX, **self.features}.items():
            if key in stats:
                continue
            parts = [ep.stats.get(key, {}) for ep in self.episodes]
            if all(all(s in p for s in REQUIRED_STATS) for p in parts):
                try:
                    stats[key] = aggregate_stats(parts)
                    continue
                except ValueError:  # shapes disagree between episodes: fall back to the frames
                    pass
            if not feat.is_video:
                stats[key] = {k: np.asarray(v, np.float64) for k, v in feature_stats(self._columns[key]).items()}
        return stats

    def _load_tasks(self) -> list[str]:
        path = fmt.inside_root(self.root, self.root / fmt.TASKS_PATH, fmt.TASKS_PATH)
        table = read_parquet(path)
        names = table.column_names
        task_col = "task" if "task" in names else "__index_level_0__" if "__index_level_0__" in names else None
        if task_col is None or "task_index" not in names:
            raise DatasetFormatError(f"{path} must have a 'task_index' column and the task strings "
                                     f"(column or pandas index 'task'), found columns {names}")
        tasks = table.column(task_col).to_pylist()
        order = table.column("task_index").to_pylist()
        if sorted(order) != list(range(len(order))):
            raise DatasetFormatError(f"{path}: task_index must be 0..{len(order) - 1}, got {order}")
        out = [""] * len(order)
        for i, t in zip(order, tasks):
            out[i] = t
        return out

    def _episode_rows(self) -> list[tuple[Path, dict]]:
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetFormatError(f"missing episode metadata: no {fmt.EPISODES_PATH} files in {self.root}")
        rows = []
        for path in files:
            table = read_parquet(fmt.inside_root(self.root, path, str(path)))
            missing = [c for c in _EPISODE_COLUMNS if c not in table.column_names]
            if missing:
                raise DatasetFormatError(f"{path} lacks episode column(s) {missing}")
            rows.extend((path, r) for r in table.to_pylist())
        rows.sort(key=lambda pr: pr[1]["episode_index"])
        if len(rows) != int(self.info["total_episodes"]):
            raise DatasetFormatError(f"{self.root / fmt.INFO_PATH} says total_episodes="
                                     f"{self.info['total_episodes']} but episode metadata lists {len(rows)}")
        return rows

    def _load_episodes(self) -> list[EpisodeInfo]:
        video_keys = [k for k, f in self.features.items() if f.is_video]
        episodes = []
        for path, r in self._episode_rows():
            video = {}
            for key in video_keys:
                cols = [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
                if any(c not in r for c in cols):
                    raise DatasetFormatError(f"{path}: episode metadata lacks {cols} for video feature {key!r}")
                video[key] = (int(r[cols[0]]), int(r[cols[1]]), float(r[cols[2]]))
            try:
                stats = stats_from_row(r)
            except (TypeError, ValueError) as err:
                raise DatasetFormatError(f"{path}: stats columns of episode {r['episode_index']} are not "
                                         f"numeric arrays: {err}") from err
            episodes.append(EpisodeInfo(
                index=int(r["episode_index"]), length=int(r["length"]), tasks=tuple(r["tasks"] or ()),
                from_index=int(r["dataset_from_index"]), to_index=int(r["dataset_to_index"]),
                data_file=(int(r["data/chunk_index"]), int(r["data/file_index"])), video=video, stats=stats))
        return episodes

    def _load_data(self) -> dict[str, np.ndarray]:
        columns_of = {**_INDEX, **{k: f for k, f in self.features.items() if not f.is_video}}
        parts: dict[str, list[np.ndarray]] = {k: [] for k in columns_of}
        for chunk, file in dict.fromkeys(ep.data_file for ep in self.episodes):
            path = fmt.template_path(self.root, self.info["data_path"], "data_path",
                                     chunk_index=chunk, file_index=file)
            table = read_parquet(path)
            for key, feat in columns_of.items():
                if key not in table.column_names:
                    raise DatasetFormatError(f"{path} lacks column {key!r} declared in {fmt.INFO_PATH}")
                parts[key].append(_column_to_numpy(table, key, feat, path))
        columns = {k: np.concatenate(v) for k, v in parts.items()}
        order = np.argsort(columns["index"][:, 0], kind="stable")
        columns = {k: v[order] for k, v in columns.items()}
        self._check_frames(columns)
        return columns

    def _check_frames(self, columns: dict[str, np.ndarray]) -> None:
        n = len(columns["index"])
        if n != int(self.info["total_frames"]) or not np.array_equal(columns["index"][:, 0], np.arange(n)):
            raise DatasetFormatError(f"data files hold {n} frames with indices that are not 0..N-1, while "
                                     f"{fmt.INFO_PATH} says total_frames={self.info['total_frames']}")
        for ep in self.episodes:
            got = columns["episode_index"][ep.from_index:ep.to_index, 0]
            if ep.to_index - ep.from_index != ep.length or not (got == ep.index).all():
                raise DatasetFormatError(f"episode {ep.index}: frames {ep.from_index}..{ep.to_index - 1} in the "
                                         f"data files do not all belong to it (length {ep.length})")

    def _video_path(self, key: str, chunk: int, file: int) -> Path:
        return fmt.template_path(self.root, self.info["video_path"], "video_path",
                                 video_key=key, chunk_index=chunk, file_index=file)

    def _check_videos_exist(self) -> None:
        for ep in self.episodes:
            for key, (chunk, file, _) in ep.video.items():
                if not self._video_path(key, chunk, file).is_file():
                    raise DatasetFormatError(f"missing video file {self._video_path(key, chunk, file)} "
                                             f"(episode {ep.index}, feature {key!r})")

    # ---- access --------------------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return len(self._columns["index"])

    def __len__(self) -> int:
        return self.num_frames

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.is_video]

    def column(self, key: str) -> np.ndarray:
        """A numeric feature or index column for every frame -> [N, *shape] ([N, 1] for scalars)."""
        if key not in self._columns:
            raise KeyError(f"no numeric column {key!r}; have {sorted(self._columns)}")
        return self._columns[key]

    def video(self, key: str) -> np.ndarray:
        """All frames of a camera in dataset order -> [N, H, W, 3] uint8 whatever layout info.json declares
        (decoded once, then cached)."""
        if key not in self.video_keys:
            raise KeyError(f"no video feature {key!r}; have {self.video_keys}")
        if key not in self._videos:
            self._videos[key] = self._decode_video(key)
        return self._videos[key]

    def _decode_video(self, key: str) -> np.ndarray:
        decoded: dict[tuple[int, int], np.ndarray] = {}
        out = np.empty((self.num_frames, *self.features[key].frame_shape), dtype=np.uint8)
        for ep in self.episodes:
            chunk, file, t0 = ep.video[key]
            path = self._video_path(key, chunk, file)
            if (chunk, file) not in decoded:
                decoded[(chunk, file)] = read_video(path, self.fps)
            frames = decoded[(chunk, file)]
            start = int(round(t0 * self.fps))
            if start + ep.length > len(frames) or frames.shape[1:] != out.shape[1:]:
                raise DatasetFormatError(f"{path} has {len(frames)} frames of shape {list(frames.shape[1:])}; "
                                         f"episode {ep.index} needs frames {start}..{start + ep.length - 1} "
                                         f"of shape {list(out.shape[1:])}")
            out[ep.from_index:ep.to_index] = frames[start:start + ep.length]
        return out

    def frame_tasks(self) -> list[str]:
        """The language instruction of every frame (via task_index)."""
        return [self.tasks[i] for i in self._columns["task_index"][:, 0]]

    def episode_ends(self) -> np.ndarray:
        """[N]: one past the last frame of each frame's episode."""
        ends = np.empty(self.num_frames, dtype=np.int64)
        for ep in self.episodes:
            ends[ep.from_index:ep.to_index] = ep.to_index
        return ends

    def action_chunks(self, horizon: int, key: str = "action") -> ActionChunks:
        """Chunks of `horizon` actions starting at every frame, padded past each episode's end."""
        return make_action_chunks(self.column(key), self.episode_ends(), horizon)

    def norm_stats(self, key: str = "action"):
        """Statistics of a feature -> driftkit.NormStats (for decoder.set_stats)."""
        import torch

        from driftkit.normalize import NormStats

        if key not in self.stats:
            if key in self.features:
                raise DatasetFormatError(f"no statistics for feature {key!r}: {self.root / fmt.STATS_PATH} lacks "
                                         f"them and meta/episodes has no complete stats/{key}/... columns")
            raise KeyError(f"{self.root / fmt.STATS_PATH} has no statistics for {key!r}")
        s = self.stats[key]
        missing = [n for n in ("mean", "std", "q01", "q99") if n not in s]
        if missing:
            raise DatasetFormatError(f"{self.root / fmt.STATS_PATH}: stats of {key!r} lack {missing}")
        return NormStats(**{n: torch.as_tensor(s[n], dtype=torch.float32) for n in ("mean", "std", "q01", "q99")})
