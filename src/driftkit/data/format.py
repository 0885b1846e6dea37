"""The LeRobotDataset v3.0 on-disk layout, written down once for the reader and the writer.

    root/
      meta/info.json                                  schema: fps, features, path templates, totals
      meta/stats.json                                 per feature: mean/std/min/max/count/q01..q99 (lists)
      meta/tasks.parquet                              task string (pandas index) -> task_index
      meta/episodes/chunk-000/file-000.parquet        one row per episode: length, tasks, from/to indices,
                                                      data and video file locations
      data/chunk-000/file-000.parquet                 one row per frame, many episodes per file
      videos/<video_key>/chunk-000/file-000.mp4       frames of many episodes back to back

A file's location is (chunk_index, file_index); a chunk holds at most `chunks_size` files. Vector features
are stored as fixed-size lists, shape (1,) features as plain columns, "video" features only in the mp4s.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
DEFAULT_CHUNKS_SIZE = 1000
DEFAULT_DATA_FILE_MB = 100
DEFAULT_VIDEO_FILE_MB = 200

NUMERIC_DTYPES = ("float32", "float64", "int64", "int32", "bool")
FEATURE_DTYPES = NUMERIC_DTYPES + ("video",)

# Columns every v3 frame carries besides the user's features.
INDEX_FEATURES = {
    "timestamp": ("float32", (1,)),
    "frame_index": ("int64", (1,)),
    "episode_index": ("int64", (1,)),
    "index": ("int64", (1,)),
    "task_index": ("int64", (1,)),
}
REQUIRED_INFO_KEYS = ("codebase_version", "fps", "features", "data_path", "total_episodes", "total_frames")
STAT_QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)


class DatasetFormatError(ValueError):
    """A LeRobot dataset file is missing or does not follow the v3.0 layout; the message names the file."""


@dataclass(frozen=True)
class Feature:
    """One entry of info.json's "features"."""

    dtype: str
    """float32 | float64 | int64 | int32 | bool | video."""
    shape: tuple[int, ...]
    """Per-frame shape: (D,) for vectors, (1,) for scalars, (H, W, 3) for video."""
    names: tuple[str, ...] | None = None
    """Optional per-dimension names (vectors) or axis names (video)."""

    def __post_init__(self):
        if self.dtype not in FEATURE_DTYPES:
            raise ValueError(f"got feature dtype={self.dtype!r}, must be one of {list(FEATURE_DTYPES)}")
        shape = tuple(int(s) for s in self.shape)
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"got feature shape={self.shape!r}, must be non-empty positive ints")
        if self.dtype == "video" and (len(shape) != 3 or shape[2] != 3):
            raise ValueError(f"got video feature shape={self.shape!r}, must be (H, W, 3)")
        if self.dtype != "video" and len(shape) != 1:
            raise ValueError(f"got feature shape={self.shape!r}, numeric features must be 1-D (D,)")
        object.__setattr__(self, "shape", shape)
        if self.names is not None:
            object.__setattr__(self, "names", tuple(self.names))

    @property
    def is_video(self) -> bool:
        return self.dtype == "video"

    def to_json(self, fps: float) -> dict:
        names = None if self.names is None else list(self.names)
        out = {"dtype": self.dtype, "shape": list(self.shape), "names": names}
        if self.is_video:
            h, w, c = self.shape
            out["info"] = {"video.fps": float(fps), "video.height": h, "video.width": w, "video.channels": c,
                           "video.codec": "h264", "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                           "has_audio": False}
        else:
            out["fps"] = float(fps)
        return out

    @classmethod
    def from_json(cls, key: str, entry, where: str) -> "Feature":
        if not isinstance(entry, dict) or "dtype" not in entry or "shape" not in entry:
            raise DatasetFormatError(f"{where}: feature {key!r} must be an object with 'dtype' and 'shape'")
        try:
            return cls(dtype=entry["dtype"], shape=tuple(entry["shape"]), names=_flat_names(entry.get("names")))
        except (ValueError, TypeError) as err:
            raise DatasetFormatError(f"{where}: feature {key!r}: {err}") from err


def _flat_names(names):
    """info.json allows names as a list or as {"motors": [...]}; keep a flat tuple of strings or None."""
    if names is None:
        return None
    if isinstance(names, dict):
        names = [n for v in names.values() for n in (v if isinstance(v, list) else [v])]
    return tuple(str(n) for n in names)


def file_location(file_number: int, chunks_size: int) -> dict:
    """The n-th file written (0-based) -> {"chunk_index", "file_index"}."""
    return {"chunk_index": file_number // chunks_size, "file_index": file_number % chunks_size}


def read_json(root: Path, rel: str) -> dict:
    path = Path(root) / rel
    if not path.is_file():
        raise DatasetFormatError(f"missing {rel} in dataset {root} (expected file {path})")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetFormatError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise DatasetFormatError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def load_info(root: Path) -> tuple[dict, dict[str, Feature]]:
    """Read and check meta/info.json -> (info dict, features without the index columns)."""
    info = read_json(root, INFO_PATH)
    where = str(Path(root) / INFO_PATH)
    missing = [k for k in REQUIRED_INFO_KEYS if k not in info]
    if missing:
        raise DatasetFormatError(f"{where} lacks required key(s) {missing}")
    version = str(info["codebase_version"])
    if not version.startswith("v3."):
        raise DatasetFormatError(f"{where} has codebase_version={version!r}; this reader handles v3.x only "
                                 "(convert v2.x datasets with LeRobot's converter first)")
    if not isinstance(info["fps"], (int, float)) or info["fps"] <= 0:
        raise DatasetFormatError(f"{where} has fps={info['fps']!r}, must be a positive number")
    if not isinstance(info["features"], dict):
        raise DatasetFormatError(f"{where}: 'features' must be an object")
    features = {}
    for key, entry in info["features"].items():
        if key in INDEX_FEATURES:
            continue
        if isinstance(entry, dict) and entry.get("dtype") not in FEATURE_DTYPES:
            # e.g. PNG "image" or "string" columns: the rest of the dataset stays usable without them.
            warnings.warn(f"{where}: skipping feature {key!r} of unsupported dtype {entry.get('dtype')!r}")
            continue
        features[key] = Feature.from_json(key, entry, where)
    if any(f.is_video for f in features.values()) and not info.get("video_path"):
        raise DatasetFormatError(f"{where} declares video features but no 'video_path' template")
    return info, features
