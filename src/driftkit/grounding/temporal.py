"""Loaders for temporal grounding: Charades-STA and ActivityNet-Captions, one MomentRecord per sentence.

Charades-STA (charades_sta_{train,test}.txt), one moment per line, times in seconds:

    3MSZA 24.3 30.4##person turn a light on.

Video durations are not in those files; they come from Charades_v1_{train,test}.csv (columns include `id`
and `length`), from a json {video_id: seconds}, or from a dict.

ActivityNet-Captions (train.json, val_1.json, val_2.json):

    {"v_QOlSCBRmfWY": {"duration": 82.73, "timestamps": [[0.83, 19.86], ...], "sentences": [" A woman ...", ...]}}

What the released files hold, and what the defaults (invalid="drop", out_of_range="clip") do with it
(counts from the copies microsoft/2D-TAN ships): charades_sta_train.txt has 4 lines with end < start (dropped,
as 2D-TAN drops them) and ~15 % of Charades-STA ends run past the csv length (median 0.9 s, up to 1.5 s:
clipped); ActivityNet train.json has 2 timestamps with end < start and 2 empty ones (dropped), and ends past
the duration by ~1e-14 s (within TIME_TOLERANCE: snapped) or by 0.01 s (clipped). Files may start with a UTF-8
byte-order mark.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

from driftkit.grounding.records import (
    TIME_TOLERANCE,
    GroundingDataError,
    LoadReport,
    MomentRecord,
    parse_float,
    read_json,
    read_text,
    require_file,
)

DurationSource = str | Path | Mapping[str, float] | Sequence[str | Path]


def _read_lines(path: Path) -> list[str]:
    # Only \n (and \r\n) end a line: str.splitlines would also split on \u2028, \x1c... inside a sentence.
    return [line.removesuffix("\r") for line in read_text(path).split("\n")]


def _check_duration(value, where: str, video_id: str) -> float:
    d = parse_float(value, where, f"duration of video {video_id!r}")
    if d <= 0:
        raise GroundingDataError(f"{where}: duration of video {video_id!r} must be > 0, got {value!r}")
    return d


def _durations_from_csv(path: Path) -> dict[str, float]:
    # Charades_v1 csvs quote fields that hold commas (scripts, descriptions): a csv reader, not str.split.
    with path.open(encoding="utf-8-sig", newline="") as f:
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
    data = read_json(path)
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


def load_charades_sta(annotations: str | Path, durations: DurationSource, out_of_range: str = "clip",
                      invalid: str = "drop", tolerance: float = TIME_TOLERANCE) -> list[MomentRecord]:
    """One MomentRecord per valid non-blank line of a Charades-STA annotation file, in file order.

    durations: see load_durations; a video missing from them is always an error (the inputs do not match).
    invalid: "drop" (default) or "raise" for lines that do not parse or have end <= start.
    out_of_range: "clip" (default) or "raise" for moments past [0, duration] by more than `tolerance` seconds.
    What was dropped or clipped is counted in one GroundingDataWarning (see driftkit.grounding.records).
    """
    report = LoadReport(Path(annotations), invalid, out_of_range, tolerance)
    path = require_file(annotations, "Charades-STA annotation file")
    lengths = load_durations(durations)
    records = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            video_id, start, end, sentence = _parse_charades_line(line, where)
            if video_id not in lengths:
                raise GroundingDataError(f"{where}: no duration given for video {video_id!r} (the durations "
                                         f"do not cover this file; pass the csv of its split)", droppable=False)
            start, end = report.fit(start, end, lengths[video_id], where, "moment")
        except GroundingDataError as e:
            report.drop(e)
            continue
        records.append(MomentRecord(video_id, sentence, start, end, lengths[video_id], where))
    report.finish(len(records))
    return records


def _activitynet_entry(video_id: str, entry, where: str) -> tuple[float, list, list]:
    """(duration, timestamps, sentences) of one video's entry, checked for shape."""
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
    return duration, stamps, sentences


def _activitynet_moment(video_id: str, duration: float, stamp, sentence, at: str, report: LoadReport
                        ) -> MomentRecord:
    if not isinstance(stamp, (list, tuple)) or len(stamp) != 2:
        raise GroundingDataError(f"{at}: timestamp must be [start, end], got {stamp!r}")
    if not isinstance(sentence, str) or not sentence.strip():
        raise GroundingDataError(f"{at}: sentence must be a non-empty string, got {sentence!r}")
    start, end = parse_float(stamp[0], at, "start"), parse_float(stamp[1], at, "end")
    start, end = report.fit(start, end, duration, at, "moment")
    return MomentRecord(video_id, sentence.strip(), start, end, duration, at)


def load_activitynet_captions(annotations: str | Path, out_of_range: str = "clip", invalid: str = "drop",
                              tolerance: float = TIME_TOLERANCE) -> list[MomentRecord]:
    """One MomentRecord per valid (video, sentence) of an ActivityNet-Captions json, in file order.

    invalid: "drop" (default) or "raise" for a malformed video entry or timestamp, or one with end <= start.
    out_of_range: "clip" (default) or "raise" for timestamps past [0, duration] by more than `tolerance`
    seconds. What was dropped or clipped is counted in one GroundingDataWarning.
    """
    report = LoadReport(Path(annotations), invalid, out_of_range, tolerance, unit=("entry", "entries"))
    path = require_file(annotations, "ActivityNet-Captions annotation file")
    data = read_json(path)
    if not isinstance(data, dict):
        raise GroundingDataError(f"{path}: expected a JSON object {{video_id: {{...}}}}, got {type(data).__name__}")
    records = []
    for video_id, entry in data.items():
        try:
            duration, stamps, sentences = _activitynet_entry(video_id, entry, f"{path}: video {video_id!r}")
        except GroundingDataError as e:
            report.drop(e)
            continue
        for i, (stamp, sentence) in enumerate(zip(stamps, sentences)):
            try:
                records.append(_activitynet_moment(video_id, duration, stamp, sentence, f"{path}:{video_id}[{i}]",
                                                   report))
            except GroundingDataError as e:
                report.drop(e)
    report.finish(len(records))
    return records
