"""The LeRobotDataset v3.0 on-disk layout, written down once for the reader and the writer.

    root/
      meta/info.json                                  schema: fps, features, path templates, totals
      meta/stats.json                                 per feature: mean/std/min/max/count/q01..q99 (lists)
      meta/tasks.parquet                              task string (pandas index) -> task_index
      meta/episodes/chunk-000/file-000.parquet        one row per episode: length, tasks, from/to indices,
                                                      data and video file locations, stats/<feature>/<stat>
      data/chunk-000/file-000.parquet                 one row per frame, many episodes per file
      videos/<video_key>/chunk-000/file-000.mp4       frames of many episodes back to back

A file's location is (chunk_index, file_index); a chunk holds at most `chunks_size` files. Shape (1,)
features are stored as plain columns, (D,) features as fixed-size lists, features of more axes as nested
lists (the storage of Hugging Face datasets' ArrayND), "video" features only in the mp4s. A video feature is
(H, W, 3) or channel-first (3, H, W); its axis names say which.
"""

from __future__ import annotations

import json
import string
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
DATA_PATH_FIELDS = frozenset({"chunk_index", "file_index"})
VIDEO_PATH_FIELDS = frozenset({"video_key", "chunk_index", "file_index"})
DEFAULT_CHUNKS_SIZE = 1000
DEFAULT_DATA_FILE_MB = 100
DEFAULT_VIDEO_FILE_MB = 200

NUMERIC_DTYPES = ("float32", "float64", "int64", "int32", "bool")
FEATURE_DTYPES = NUMERIC_DTYPES + ("video",)
MAX_NUMERIC_AXES = 5  # Hugging Face datasets stores at most Array5D
_CHANNEL_NAMES = ("channel", "channels")

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


def json_number(x: float) -> int | float:
    """fps as LeRobot writes it: an int when integral (30, not 30.0)."""
    return int(x) if float(x).is_integer() else float(x)


@dataclass(frozen=True)
class Feature:
    """One entry of info.json's "features"."""

    dtype: str
    """float32 | float64 | int64 | int32 | bool | video."""
    shape: tuple[int, ...]
    """Per-frame shape: (1,) scalars, (D,) vectors, up to 5 axes for other numeric features;
    (H, W, 3) or channel-first (3, H, W) for video."""
    names: tuple[str, ...] | None = None
    """Optional per-dimension names (vectors) or axis names (video: "channels" marks the channel axis)."""

    def __post_init__(self):
        if self.dtype not in FEATURE_DTYPES:
            raise ValueError(f"got feature dtype={self.dtype!r}, must be one of {list(FEATURE_DTYPES)}")
        shape = tuple(int(s) for s in self.shape)
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"got feature shape={self.shape!r}, must be non-empty positive ints")
        if self.dtype != "video" and len(shape) > MAX_NUMERIC_AXES:
            raise ValueError(f"got feature shape={self.shape!r}, numeric features have at most "
                             f"{MAX_NUMERIC_AXES} axes")
        object.__setattr__(self, "shape", shape)
        if self.names is not None:
            object.__setattr__(self, "names", tuple(self.names))
        if self.dtype == "video":
            _video_channel_axis(shape, self.names)  # raises on a shape without an RGB channel axis

    @property
    def is_video(self) -> bool:
        return self.dtype == "video"

    @property
    def channels_first(self) -> bool:
        """Video stored as (3, H, W) in info.json (frames still come out of the reader as [N, H, W, 3])."""
        return self.is_video and _video_channel_axis(self.shape, self.names) == 0

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of a video feature, whatever the declared layout."""
        if not self.is_video:
            raise ValueError(f"frame_shape is for video features, this one has dtype={self.dtype!r}")
        return (*self.shape[1:], 3) if self.channels_first else self.shape  # type: ignore[return-value]

    def to_json(self, fps: float) -> dict:
        names = None if self.names is None else list(self.names)
        out = {"dtype": self.dtype, "shape": list(self.shape), "names": names}
        if self.is_video:
            h, w, c = self.frame_shape
            out["info"] = {"video.fps": json_number(fps), "video.height": h, "video.width": w,
                           "video.channels": c, "video.codec": "h264", "video.pix_fmt": "yuv420p",
                           "video.is_depth_map": False, "has_audio": False}
        else:
            out["fps"] = json_number(fps)
        return out

    def hf_feature(self) -> dict:
        """This column's entry in Hugging Face datasets' Features JSON (what lerobot's data parquet files
        carry under the b"huggingface" schema metadata key)."""
        if self.is_video:
            raise ValueError("video features have no parquet column")
        value = {"dtype": self.dtype, "_type": "Value"}
        if self.shape == (1,):
            return value
        if len(self.shape) == 1:
            return {"feature": value, "length": self.shape[0], "_type": "List"}
        return {"shape": list(self.shape), "dtype": self.dtype, "_type": f"Array{len(self.shape)}D"}

    @classmethod
    def from_json(cls, key: str, entry, where: str) -> "Feature":
        if not isinstance(entry, dict) or "dtype" not in entry or "shape" not in entry:
            raise DatasetFormatError(f"{where}: feature {key!r} must be an object with 'dtype' and 'shape'")
        try:
            return cls(dtype=entry["dtype"], shape=tuple(entry["shape"]), names=_flat_names(entry.get("names")))
        except (ValueError, TypeError) as err:
            raise DatasetFormatError(f"{where}: feature {key!r}: {err}") from err


def _video_channel_axis(shape: tuple[int, ...], names: tuple[str, ...] | None) -> int:
    """0 for (3, H, W), 2 for (H, W, 3). Names decide when they mark a channel axis (as lerobot reads them);
    otherwise the axis of size 3, the last one when both are."""
    if len(shape) != 3:
        raise ValueError(f"got video feature shape={shape!r}, must be (H, W, 3) or (3, H, W)")
    marked = [i for i in (0, 2) if names is not None and len(names) == 3 and names[i] in _CHANNEL_NAMES]
    axis = marked[0] if marked else 2 if shape[2] == 3 else 0 if shape[0] == 3 else None
    if axis is None or shape[axis] != 3:
        raise ValueError(f"got video feature shape={shape!r} with names={names!r}; need 3 (RGB) channels "
                         "first or last")
    return axis


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


def check_template(template, fields: frozenset[str], where: str, key: str) -> str:
    """A path template of info.json may only use `fields`, by plain name (no attribute or index lookups)."""
    if not isinstance(template, str) or not template:
        raise DatasetFormatError(f"{where}: {key} must be a non-empty string, got {template!r}")
    try:
        used = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise DatasetFormatError(f"{where}: {key} template {template!r} is malformed: {err}") from err
    bad = [f for f in used if f not in fields]
    if bad:
        raise DatasetFormatError(f"{where}: {key} template {template!r} uses field(s) {bad}; "
                                 f"allowed: {sorted(fields)}")
    return template


def inside_root(root: Path, path: Path, what: str) -> Path:
    """`path` with symlinks and '..' resolved; a DatasetFormatError unless it stays inside the dataset root
    (a dataset comes from elsewhere: its metadata must not make the reader open other files)."""
    base, resolved = Path(root).resolve(), Path(path).resolve()
    if not resolved.is_relative_to(base):
        raise DatasetFormatError(f"{what} points to {resolved}, outside the dataset root {base}")
    return resolved


def template_path(root: Path, template: str, key: str, **fields) -> Path:
    """Fill an info.json path template and check the file it names lies inside the dataset root."""
    try:
        rel = template.format(**fields)
    except (KeyError, IndexError, ValueError, AttributeError) as err:
        raise DatasetFormatError(f"{Path(root) / INFO_PATH}: {key} template {template!r} cannot be filled "
                                 f"with {fields}: {err}") from err
    return inside_root(root, Path(root) / rel, f"{key} template {template!r} (with {fields})")


def read_json(root: Path, rel: str) -> dict:
    path = Path(root) / rel
    if not path.is_file():
        raise DatasetFormatError(f"missing {rel} in dataset {root} (expected file {path})")
    inside_root(root, path, str(path))
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
    if isinstance(info["fps"], bool) or not isinstance(info["fps"], (int, float)) or not info["fps"] > 0:
        raise DatasetFormatError(f"{where} has fps={info['fps']!r}, must be a positive number")
    if not isinstance(info["features"], dict):
        raise DatasetFormatError(f"{where}: 'features' must be an object")
    check_template(info["data_path"], DATA_PATH_FIELDS, where, "data_path")
    features = _load_features(info["features"], where)
    if any(f.is_video for f in features.values()):
        if not info.get("video_path"):
            raise DatasetFormatError(f"{where} declares video features but no 'video_path' template")
        check_template(info["video_path"], VIDEO_PATH_FIELDS, where, "video_path")
    return info, features


def _load_features(entries: dict, where: str) -> dict[str, Feature]:
    features = {}
    for key, entry in entries.items():
        if key in INDEX_FEATURES:
            continue
        if isinstance(entry, dict) and entry.get("dtype") not in FEATURE_DTYPES:
            # e.g. PNG "image" or "string" columns: the rest of the dataset stays usable without them.
            warnings.warn(f"{where}: skipping feature {key!r} of unsupported dtype {entry.get('dtype')!r}")
            continue
        features[key] = Feature.from_json(key, entry, where)
    return features
