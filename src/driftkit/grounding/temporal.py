"""Loaders for temporal grounding: Charades-STA and ActivityNet-Captions, one MomentRecord per sentence.

Charades-STA (charades_sta_{train,test}.txt), one moment per line, times in seconds:

    3MSZA 24.3 30.4##person turn a light on.

Video durations are not in those files; they come from Charades_v1_{train,test}.csv (columns include `id`
and `length`), from a json {video_id: seconds}, or from a dict.

ActivityNet-Captions (train.json, val_1.json, val_2.json):

    {"v_QOlSCBRmfWY": {"duration": 82.73, "timestamps": [[0.83, 19.86], ...], "sentences": [" A woman ...", ...]}}
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from driftkit.grounding.records import (
    GroundingDataError,
    MomentRecord,
    check_out_of_range,
    fit_interval,
    parse_float,
    require_file,
)

DurationSource = str | Path | Mapping[str, float] | Sequence[str | Path]


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise GroundingDataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GroundingDataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def _check_duration(value, where: str, video_id: str) -> float:
    d = parse_float(value, where, f"duration of video {video_id!r}")
    if d <= 0:
        raise GroundingDataError(f"{where}: duration of video {video_id!r} must be > 0, got {value!r}")
    return d


def _durations_from_csv(path: Path) -> dict[str, float]:
    # Charades_v1 csvs quote fields that hold commas (scripts, descriptions): a csv reader, not str.split.
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if "id" not in cols or "length" not in cols:
            raise GroundingDataError(f"{path}:1: duration csv needs columns 'id' and 'length', found {cols}")
        out = {}
        for row in reader:
            where = f"{path}:{reader.line_num}"
            vid = (row["id"] or "").strip()
            if not vid:
                raise GroundingDataError(f"{where}: empty video id")
            out[vid] = _check_duration(row["length"], where, vid)
    return out


def load_durations(source: DurationSource) -> dict[str, float]:
    """{video_id: seconds} from a csv with `id` and `length` columns (Charades_v1_*.csv), a json object
    {video_id: seconds}, a dict, or a list of such files (merged; e.g. the train and test csvs)."""
    if isinstance(source, Mapping):
        return {str(k): _check_duration(v, "durations", str(k)) for k, v in source.items()}
    if not isinstance(source, (str, Path)):
        merged: dict[str, float] = {}
        for item in source:
            merged.update(load_durations(item))
        return merged
    path = require_file(source, "video duration file")
    if path.suffix.lower() != ".json":
        return _durations_from_csv(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise GroundingDataError(f"{path}: expected a JSON object {{video_id: seconds}}, got {type(data).__name__}")
    return {str(k): _check_duration(v, f"{path}: key {k!r}", str(k)) for k, v in data.items()}


def _parse_charades_line(line: str, where: str) -> tuple[str, float, float, str]:
    head, sep, sentence = line.partition("##")
    parts = head.split()
    if not sep or len(parts) != 3:
        raise GroundingDataError(f"{where}: expected 'VIDEO_ID START END##SENTENCE', got {line!r}")
    video_id, start, end = parts
    sentence = sentence.strip()
    if not sentence:
        raise GroundingDataError(f"{where}: empty sentence after '##' in {line!r}")
    return video_id, parse_float(start, where, "start"), parse_float(end, where, "end"), sentence


def load_charades_sta(annotations: str | Path, durations: DurationSource, out_of_range: str = "raise"
                      ) -> list[MomentRecord]:
    """One MomentRecord per non-blank line of a Charades-STA annotation file, in file order.

    durations: see load_durations. out_of_range: "raise" or "clip" for moments outside [0, duration]
    (a few Charades-STA ends overrun the csv length slightly; evaluation code in the field clips them).
    """
    check_out_of_range(out_of_range)
    path = require_file(annotations, "Charades-STA annotation file")
    lengths = load_durations(durations)
    records = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        video_id, start, end, sentence = _parse_charades_line(line, where)
        if video_id not in lengths:
            raise GroundingDataError(f"{where}: no duration given for video {video_id!r}")
        duration = lengths[video_id]
        start, end = fit_interval(start, end, duration, out_of_range, where, "moment")
        records.append(MomentRecord(video_id, sentence, start, end, duration, where))
    return records


def _activitynet_video(path: Path, video_id: str, entry, out_of_range: str) -> list[MomentRecord]:
    where = f"{path}: video {video_id!r}"
    if not isinstance(entry, dict) or not {"duration", "timestamps", "sentences"} <= entry.keys():
        got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise GroundingDataError(f"{where}: needs keys 'duration', 'timestamps', 'sentences', got {got}")
    duration = _check_duration(entry["duration"], where, video_id)
    stamps, sentences = entry["timestamps"], entry["sentences"]
    if not isinstance(stamps, list) or not isinstance(sentences, list) or len(stamps) != len(sentences):
        raise GroundingDataError(
            f"{where}: 'timestamps' and 'sentences' must be lists of equal length, got "
            f"{len(stamps) if isinstance(stamps, list) else stamps!r} and "
            f"{len(sentences) if isinstance(sentences, list) else sentences!r}"
        )
    records = []
    for i, (stamp, sentence) in enumerate(zip(stamps, sentences)):
        at = f"{path}:{video_id}[{i}]"
        if not isinstance(stamp, (list, tuple)) or len(stamp) != 2:
            raise GroundingDataError(f"{at}: timestamp must be [start, end], got {stamp!r}")
        if not isinstance(sentence, str) or not sentence.strip():
            raise GroundingDataError(f"{at}: sentence must be a non-empty string, got {sentence!r}")
        start, end = parse_float(stamp[0], at, "start"), parse_float(stamp[1], at, "end")
        start, end = fit_interval(start, end, duration, out_of_range, at, "moment")
        records.append(MomentRecord(video_id, sentence.strip(), start, end, duration, at))
    return records


def load_activitynet_captions(annotations: str | Path, out_of_range: str = "raise") -> list[MomentRecord]:
    """One MomentRecord per (video, sentence) of an ActivityNet-Captions json, in file order.

    out_of_range: "raise" or "clip" for timestamps outside [0, duration] (the released files have some
    that overrun the duration).
    """
    check_out_of_range(out_of_range)
    path = require_file(annotations, "ActivityNet-Captions annotation file")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise GroundingDataError(f"{path}: expected a JSON object {{video_id: {{...}}}}, got {type(data).__name__}")
    records = []
    for video_id, entry in data.items():
        records.extend(_activitynet_video(path, video_id, entry, out_of_range))
    return records
