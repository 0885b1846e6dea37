"""Grounding loaders on small files in each dataset's released format, and their errors on bad input."""

import json
import pickle
import struct
import warnings

import numpy as np
import pytest

from driftkit.grounding import (
    BoxRecord,
    GroundingDataError,
    GroundingDataWarning,
    MomentRecord,
    load_activitynet_captions,
    load_charades_sta,
    load_durations,
    load_refcoco,
    load_refer,
    stack_targets,
)

# The first columns of Charades_v1_test.csv; quoted fields hold commas, as in the real file.
CHARADES_CSV = (
    "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
    '3MSZA,HR43,Bedroom,6,7,Yes,"A person turns on a light, then sits.",light;chair,"Turns on, sits",'
    "c001 1.0 5.0,31.96\n"
    "AO8RW,HR12,Kitchen,5,7,Yes,Opens a fridge.,fridge,Opens,,20.5\n"
)
CHARADES_STA = "3MSZA 24.3 30.4##person turn a light on.\r\n\r\nAO8RW 0.0 6.9##a person opens a fridge ##twice.\r\n"


STRICT = {"invalid": "raise", "out_of_range": "raise"}


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def load_warnings(record) -> list[str]:
    """The messages of the GroundingDataWarnings among the recorded warnings."""
    return [str(w.message) for w in record if issubclass(w.category, GroundingDataWarning)]


def no_warning(fn, *args, **kwargs):
    """fn(*args, **kwargs), failing if it warns about the data."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", GroundingDataWarning)
        return fn(*args, **kwargs)


@pytest.fixture
def charades(tmp_path):
    ann = write(tmp_path / "charades_sta_test.txt", CHARADES_STA)
    return ann, write(tmp_path / "Charades_v1_test.csv", CHARADES_CSV)


def test_charades_records_targets_and_sources(charades):
    ann, csv_path = charades
    records = no_warning(load_charades_sta, ann, csv_path)
    assert records == [
        MomentRecord("3MSZA", "person turn a light on.", 24.3, 30.4, 31.96, f"{ann}:1"),
        MomentRecord("AO8RW", "a person opens a fridge ##twice.", 0.0, 6.9, 20.5, f"{ann}:3"),
    ]
    np.testing.assert_allclose(records[0].target(), [[24.3, 30.4]], rtol=1e-6)
    np.testing.assert_allclose(records[0].target(normalize=True), [[24.3 / 31.96, 30.4 / 31.96]], rtol=1e-6)
    assert stack_targets(records, normalize=True).shape == (2, 1, 2)


def test_duration_sources_agree(charades, tmp_path):
    ann, csv_path = charades
    want = {"3MSZA": 31.96, "AO8RW": 20.5}
    assert load_durations(csv_path) == want
    assert load_durations(write(tmp_path / "d.json", json.dumps(want))) == want
    head, first, second = CHARADES_CSV.splitlines()
    split = [write(tmp_path / "a.csv", f"{head}\n{first}\n"), write(tmp_path / "b.csv", f"{head}\n{second}\n")]
    assert load_durations(split) == want
    assert load_charades_sta(ann, want) == load_charades_sta(ann, csv_path)


@pytest.mark.parametrize(
    "line, match",
    [
        ("3MSZA 24.3 30.4 person turn a light on.", "expected 'VIDEO_ID START END##SENTENCE'"),
        ("3MSZA 24.3##person turn a light on.", "expected 'VIDEO_ID START END##SENTENCE'"),
        ("3MSZA 24.3 abc##person.", "end must be a number, got 'abc'"),
        ("3MSZA 24.3 nan##person.", "end must be finite"),
        ("3MSZA 24.3 30.4##   ", "empty sentence"),
        ("3MSZA 9.0 4.0##person.", "moment end 4.0 < start 9.0"),
        ("3MSZA 4.0 4.0##person.", r"moment is empty \(start == end == 4.0\)"),
        ("3MSZA 32.0 35.0##person.", r"wholly outside \[0, 31.96\]"),
        ("XXXXX 1.0 2.0##person.", "no duration given for video 'XXXXX'"),
        ("3MSZA 30.0 33.0##person.", r"outside \[0, 31.96\] by more than the tolerance 0.001.*out_of_range='clip'"),
    ],
)
def test_charades_bad_line_strict_mode_names_file_and_line(charades, line, match):
    ann, csv_path = charades
    bad = write(ann, f"AO8RW 0.0 6.9##fine.\n{line}\n")
    with pytest.raises(GroundingDataError, match=rf"charades_sta_test\.txt:2: .*{match}"):
        load_charades_sta(bad, csv_path, **STRICT)


@pytest.mark.parametrize("line", [
    "3MSZA 24.3 30.4 person.", "3MSZA 24.3##person.", "3MSZA 24.3 abc##person.", "3MSZA 24.3 nan##person.",
    "3MSZA 24.3 30.4##   ", "3MSZA 9.0 4.0##person.", "3MSZA 4.0 4.0##person.", "3MSZA 32.0 35.0##person.",
])
def test_charades_bad_line_dropped_by_default_with_one_warning(charades, line):
    ann, csv_path = charades
    bad = write(ann, f"AO8RW 0.0 6.9##fine.\n{line}\nAO8RW 1.0 2.0##also fine.\n")
    with pytest.warns(GroundingDataWarning) as got:
        records = load_charades_sta(bad, csv_path)
    assert [r.source for r in records] == [f"{bad}:1", f"{bad}:3"]
    (message,) = load_warnings(got)
    assert "dropped 1 invalid line (charades_sta_test.txt:2: " in message and "clipped" not in message


def test_charades_inputs_that_disagree_raise_in_every_mode(charades):
    ann, csv_path = charades
    write(ann, "AO8RW 0.0 6.9##fine.\nXXXXX 1.0 2.0##no such video in the csv.\n")
    with pytest.raises(GroundingDataError, match=r":2: no duration given for video 'XXXXX'"):
        load_charades_sta(ann, csv_path)
    write(ann, "AO8RW 9.0 4.0##bad.\nAO8RW x 4.0##bad.\n")
    with pytest.raises(GroundingDataError, match=r"every entry is invalid \(2 invalid lines; first: .*:1: "):
        load_charades_sta(ann, csv_path)


def test_charades_clip_mode(charades):
    ann, csv_path = charades
    write(ann, "3MSZA -0.5 33.0##overruns both ends.\n")
    with pytest.warns(GroundingDataWarning, match=r"clipped 1 of 1 moments .* \(median 1.04 s, max 1.04 s\)"):
        (r,) = load_charades_sta(ann, csv_path, out_of_range="clip")
    assert (r.start, r.end) == (0.0, 31.96)
    write(ann, "3MSZA 32.0 35.0##wholly after the end.\n")
    with pytest.raises(GroundingDataError, match=r":1: .*wholly outside \[0, 31.96\]"):
        load_charades_sta(ann, csv_path, out_of_range="clip", invalid="raise")
    with pytest.raises(ValueError, match="got out_of_range='drop'"):
        load_charades_sta(ann, csv_path, out_of_range="drop")
    with pytest.raises(ValueError, match="got invalid='skip'"):
        load_charades_sta(ann, csv_path, invalid="skip")
    with pytest.raises(ValueError, match="got tolerance=-1"):
        load_charades_sta(ann, csv_path, tolerance=-1)


def test_bad_duration_files(charades, tmp_path):
    ann, _ = charades
    no_length = write(tmp_path / "x.csv", "id,scene\n3MSZA,Bedroom\n")
    with pytest.raises(GroundingDataError, match=r"x\.csv:1: .*'id' and 'length'.*\['id', 'scene'\]"):
        load_charades_sta(ann, no_length)
    negative = write(tmp_path / "y.csv", "id,length\n3MSZA,31.9\nAO8RW,-2\n")
    with pytest.raises(GroundingDataError, match=r"y\.csv:3: duration of video 'AO8RW' must be > 0"):
        load_durations(negative)
    with pytest.raises(GroundingDataError, match="duration of video 'v' must be a number"):
        load_durations({"v": "long"})
    with pytest.raises(FileNotFoundError, match=r"video duration file not found: .*missing\.csv"):
        load_charades_sta(ann, tmp_path / "missing.csv")
    with pytest.raises(FileNotFoundError, match=r"Charades-STA annotation file not found: .*nope\.txt"):
        load_charades_sta(tmp_path / "nope.txt", {"3MSZA": 1.0})


# An excerpt in the layout of charades_sta_train.txt (invented ids and sentences) with the kinds of line the
# released file has: ends past the csv length by about a second, and end < start (line 8252 of the real file
# reads '<id> 8.0 7.0##...' for a 6.25 s video; lines 9623-9624 are one such line twice).
TRAIN_CSV = "id,subject,scene,length\nQ7ZB1,HR01,Hall,29.42\nW3NX8,HR02,Garage,6.25\nH5TT2,HR03,Pantry,12.17\n"
TRAIN_STA = (
    "Q7ZB1 0.0 6.9##a person puts a cup on the table.\n"
    "Q7ZB1 20.8 30.0##the person picks up a phone.\n"
    "W3NX8 8.0 7.0##person closing a door.\n"
    "W3NX8 1.2 5.0##a person is laughing.\n"
    "H5TT2 20.9 12.0##person sitting on a chair.\n"
    "H5TT2 38.0 13.0##a person holds a towel.\n"
    "H5TT2 38.0 13.0##a person holds a towel.\n"
    "H5TT2 0.0 11.2##person runs in.\n"
)


@pytest.fixture
def charades_train(tmp_path):
    return write(tmp_path / "charades_sta_train.txt", TRAIN_STA), write(tmp_path / "Charades_v1_train.csv", TRAIN_CSV)


def test_charades_train_excerpt_loads_by_default_with_one_counting_warning(charades_train):
    ann, csv_path = charades_train
    with pytest.warns(GroundingDataWarning) as got:
        records = load_charades_sta(ann, csv_path)
    assert [(r.source.rsplit(":", 1)[1], r.start, r.end) for r in records] == [
        ("1", 0.0, 6.9), ("2", 20.8, 29.42), ("4", 1.2, 5.0), ("8", 0.0, 11.2)]
    (message,) = load_warnings(got)
    assert message.startswith(f"{ann}: dropped 4 invalid lines (charades_sta_train.txt:3: moment end 7.0 < start "
                              "8.0; charades_sta_train.txt:5: moment end 12.0 < start 20.9; "
                              "charades_sta_train.txt:6: moment end 13.0 < start 38.0; and 1 more)")
    assert "clipped 1 of 4 moments that overran [0, duration] by more than 0.001 s (median 0.58 s" in message


def test_charades_train_excerpt_strict_modes_name_file_and_line(charades_train):
    ann, csv_path = charades_train
    with pytest.raises(GroundingDataError, match=r"charades_sta_train\.txt:3: moment end 7\.0 < start 8\.0$"):
        load_charades_sta(ann, csv_path, invalid="raise")
    with pytest.raises(GroundingDataError, match=r"charades_sta_train\.txt:2: moment \[20\.8, 30\.0\] lies outside"):
        load_charades_sta(ann, csv_path, out_of_range="raise")


def test_line_separators_inside_a_sentence_do_not_split_the_line(charades):
    ann, csv_path = charades
    write(ann, "AO8RW 0.0 6.9##a person opens\u2028a fridge.\r\nAO8RW 1.0 2.0##then sits.\r\n")
    records = no_warning(load_charades_sta, ann, csv_path)
    assert [(r.query, r.source) for r in records] == [("a person opens\u2028a fridge.", f"{ann}:1"),
                                                      ("then sits.", f"{ann}:2")]


BOM = "\ufeff"


def test_byte_order_marks_are_skipped(charades, tmp_path):
    ann, csv_path = charades
    write(ann, BOM + CHARADES_STA)
    write(csv_path, BOM + CHARADES_CSV)
    want = no_warning(load_charades_sta, ann, {"3MSZA": 31.96, "AO8RW": 20.5})
    assert want[0].video_id == "3MSZA"
    assert load_durations(csv_path) == {"3MSZA": 31.96, "AO8RW": 20.5}
    assert no_warning(load_charades_sta, ann, csv_path) == want
    durations = write(tmp_path / "durations.json", BOM + json.dumps({"3MSZA": 31.96, "AO8RW": 20.5}))
    assert no_warning(load_charades_sta, ann, durations) == want
    anet = write(tmp_path / "val_1.json", BOM + json.dumps(ANET))
    assert len(no_warning(load_activitynet_captions, anet)) == 3
    refs, inst = make_refcoco(tmp_path / "refcoco")
    write(inst, BOM + inst.read_text(encoding="utf-8"))
    assert len(no_warning(load_refcoco, refs, inst)) == 4


ANET = {
    "v_QOlSCBRmfWY": {
        "duration": 82.73,
        "timestamps": [[0.83, 19.86], [17.37, 60.81]],
        "sentences": ["  A young woman is seen standing in a room.", " She then begins dancing."],
    },
    "v_ehGHCYKzyZ8": {"duration": 61.72, "timestamps": [[0, 8.79]], "sentences": ["A man is talking."]},
}


def test_activitynet_records(tmp_path):
    path = write(tmp_path / "val_1.json", json.dumps(ANET))
    records = load_activitynet_captions(path)
    assert [(r.video_id, r.start, r.end, r.duration) for r in records] == [
        ("v_QOlSCBRmfWY", 0.83, 19.86, 82.73), ("v_QOlSCBRmfWY", 17.37, 60.81, 82.73),
        ("v_ehGHCYKzyZ8", 0.0, 8.79, 61.72),
    ]
    assert records[1].query == "She then begins dancing."
    assert records[1].source == f"{path}:v_QOlSCBRmfWY[1]"


def _anet_with(tmp_path, **entry):
    return write(tmp_path / "train.json", json.dumps({"v_a": {"duration": 10.0, "timestamps": [[1, 2]],
                                                               "sentences": ["x"], **entry}}))


@pytest.mark.parametrize(
    "entry, match",
    [
        ({"timestamps": [[1, 2], [3, 4]]}, "must be lists of equal length, got 2 and 1"),
        ({"timestamps": [[1, 2, 3]]}, r"train\.json:v_a\[0\]: timestamp must be \[start, end\]"),
        ({"timestamps": [[5, 4]]}, r"train\.json:v_a\[0\]: moment end 4.0 < start 5.0"),
        ({"timestamps": [[5, 12]]}, r"train\.json:v_a\[0\]: moment \[5.0, 12.0\] lies outside \[0, 10.0\]"),
        ({"sentences": [""]}, r"v_a\[0\]: sentence must be a non-empty string"),
        ({"duration": 0}, "duration of video 'v_a' must be > 0"),
    ],
)
def test_activitynet_bad_entries_strict_mode_names_video_and_index(tmp_path, entry, match):
    with pytest.raises(GroundingDataError, match=match):
        load_activitynet_captions(_anet_with(tmp_path, **entry), **STRICT)


def test_activitynet_clip_and_bad_json(tmp_path):
    with pytest.warns(GroundingDataWarning, match="clipped 1 of 1 moments"):
        (r,) = load_activitynet_captions(_anet_with(tmp_path, timestamps=[[5, 12]]), out_of_range="clip")
    assert (r.start, r.end) == (5.0, 10.0)
    broken = write(tmp_path / "val_2.json", '{"v_a": {"duration": 1.0,\n "timestamps": [[0, 1]]\n')
    with pytest.raises(GroundingDataError, match=r"val_2\.json:\d+: invalid JSON"):
        load_activitynet_captions(broken)
    with pytest.raises(GroundingDataError, match="expected a JSON object"):
        load_activitynet_captions(write(tmp_path / "list.json", "[]"))


# An excerpt in the layout of ActivityNet-Captions train.json (invented ids and sentences) with what the released
# files hold: a duration stored as 70.28999999999999 with an end of 70.29 (float noise), an end 0.01 s past the
# duration (rounding), end < start (v_0bosp4-pyTM [61.29, 60.71] in the real file) and an empty moment.
ANET_TRAIN = (
    '{"v_aaaaaaaaaaa": {"duration": 70.28999999999999, "timestamps": [[0, 21.5], [57.64, 70.29]], '
    '"sentences": ["A man stands on a dock.", " He then dives into the lake."]}, '
    '"v_bbbbbbbbbbb": {"duration": 115.64, "timestamps": [[0, 28.91], [61.29, 60.71], [60.71, 70.54], '
    '[34.77, 34.77]], "sentences": ["A chef chops onions.", " She stirs a pot.", " She tastes it.", " Done."]}, '
    '"v_ccccccccccc": {"duration": 89.71, "timestamps": [[29.61, 89.72]], "sentences": ["Kids play ball."]}}'
)


def test_activitynet_train_excerpt_default_tolerates_noise_drops_and_clips(tmp_path):
    path = write(tmp_path / "train.json", ANET_TRAIN)
    with pytest.warns(GroundingDataWarning) as got:
        records = load_activitynet_captions(path)
    assert [(r.source.rsplit(":", 1)[1], r.start, r.end) for r in records] == [
        ("v_aaaaaaaaaaa[0]", 0.0, 21.5), ("v_aaaaaaaaaaa[1]", 57.64, 70.28999999999999),
        ("v_bbbbbbbbbbb[0]", 0.0, 28.91), ("v_bbbbbbbbbbb[2]", 60.71, 70.54), ("v_ccccccccccc[0]", 29.61, 89.71)]
    (message,) = load_warnings(got)
    assert message.startswith(f"{path}: dropped 2 invalid entries (train.json:v_bbbbbbbbbbb[1]: moment end 60.71 "
                              "< start 61.29; train.json:v_bbbbbbbbbbb[3]: moment is empty (start == end == 34.77))")
    # The float-noise end is inside the tolerance: only the 0.01 s overrun counts as clipped.
    assert "clipped 1 of 5 moments that overran [0, duration] by more than 0.001 s (median 0.01 s" in message


def test_activitynet_train_excerpt_strict_modes(tmp_path):
    path = write(tmp_path / "train.json", ANET_TRAIN)
    with pytest.raises(GroundingDataError, match=r"train\.json:v_bbbbbbbbbbb\[1\]: moment end 60\.71 < start"):
        load_activitynet_captions(path, invalid="raise")
    # Float noise passes even out_of_range="raise"; the first error is the 0.01 s overrun.
    with pytest.raises(GroundingDataError, match=r"train\.json:v_ccccccccccc\[0\]: moment \[29\.61, 89\.72\] lies "
                                                 r"outside \[0, 89\.71\] by more than the tolerance 0\.001"):
        load_activitynet_captions(path, out_of_range="raise")
    with pytest.warns(GroundingDataWarning, match="dropped 2 invalid entries") as got:
        records = load_activitynet_captions(path, out_of_range="raise", tolerance=0.011)
    assert records[-1].end == 89.71 and "clipped" not in load_warnings(got)[0]


def _ref(ref_id, ann_id, image_id, split, *sents):
    sentences = [{"sent": s, "raw": s.upper(), "sent_id": 10 * ref_id + j, "tokens": s.split()}
                 for j, s in enumerate(sents)]
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": 1,
            "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg"}


def make_refcoco(folder, refs=None, boxes=None, protocol=2):
    folder.mkdir(parents=True, exist_ok=True)
    boxes = boxes or {7: [10.0, 20.0, 30.0, 40.0], 8: [0.0, 0.0, 640.0, 480.0], 9: [100.0, 50.0, 20.0, 10.0]}
    instances = {
        "images": [{"id": 1, "width": 640, "height": 480, "file_name": "COCO_train2014_000000000001.jpg"},
                   {"id": 2, "width": 200, "height": 100, "file_name": "COCO_train2014_000000000002.jpg"}],
        "annotations": [{"id": k, "image_id": 1 if k < 9 else 2, "bbox": v, "category_id": 1}
                        for k, v in boxes.items()],
        "categories": [{"id": 1, "name": "person"}],
    }
    refs = refs if refs is not None else [
        _ref(0, 7, 1, "train", "man on left", "guy in red"),
        _ref(1, 8, 1, "testA", "whole picture"),
        _ref(2, 9, 2, "val", "small dog"),
    ]
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=protocol))
    write(folder / "instances.json", json.dumps(instances))
    return folder / "refs(unc).p", folder / "instances.json"


def test_refcoco_records_boxes_and_splits(tmp_path):
    refs, inst = make_refcoco(tmp_path / "refcoco")
    records = load_refcoco(refs, inst)
    assert [r.query for r in records] == ["man on left", "guy in red", "whole picture", "small dog"]
    r = records[0]
    assert isinstance(r, BoxRecord)
    assert (r.box, r.width, r.height, r.split, r.ref_id, r.ann_id, r.sent_id) == (
        (10.0, 20.0, 40.0, 60.0), 640.0, 480.0, "train", 0, 7, 0)
    assert r.file_name == "COCO_train2014_000000000001.jpg" and r.source == f"{refs}[ref 0].sentences[0]"
    np.testing.assert_allclose(records[3].target(), [[100.0, 50.0, 120.0, 60.0]])
    np.testing.assert_allclose(records[3].target(normalize=True), [[0.5, 0.5, 0.6, 0.6]], rtol=1e-6)
    np.testing.assert_allclose(records[2].target(normalize=True), [[0.0, 0.0, 1.0, 1.0]])
    assert [r.query for r in load_refcoco(refs, inst, splits="testA")] == ["whole picture"]
    assert [r.split for r in load_refcoco(refs, inst, splits=["val", "train"])] == ["train", "train", "val"]
    assert load_refcoco(refs, inst, text_key="raw")[0].query == "MAN ON LEFT"
    assert load_refer(tmp_path, "refcoco", splits="val")[0].query == "small dog"


def test_refcoco_split_errors(tmp_path):
    refs, inst = make_refcoco(tmp_path / "refcoco")
    with pytest.raises(ValueError, match=r"unknown split name\(s\) \['testC'\]"):
        load_refcoco(refs, inst, splits=["val", "testC"])
    present = r"it has \['testA', 'train', 'val'\]"
    with pytest.raises(ValueError, match=r"split\(s\) \['testB'\] not in .*refs\(unc\)\.p; " + present):
        load_refcoco(refs, inst, splits="testB")
    with pytest.raises(FileNotFoundError, match=r"refs\(umd\)\.p"):
        load_refer(tmp_path, "refcocog")


@pytest.mark.parametrize(
    "refs, boxes, match",
    [
        (None, {7: [600.0, 20.0, 50.0, 40.0], 8: [0, 0, 1, 1], 9: [0, 0, 1, 1]},
         r"\[ref 0\]: annotation 7 box x-range \(image width 640\) \[600.0, 650.0\] lies outside"),
        (None, {7: [10, 20, 0, 40], 8: [0, 0, 1, 1], 9: [0, 0, 1, 1]}, r"\[ref 0\]: .*width or height <= 0"),
        ([_ref(0, 7, 1, "train", "a"), _ref(1, 99, 1, "val", "b")], None, r"\[ref 1\]: ann_id 99 is not in"),
        ([_ref(0, 7, 5, "train", "a")], None, r"\[ref 0\]: image_id 5 is not in"),
        ([_ref(0, 9, 1, "train", "a")], None, r"\[ref 0\]: ann 9 belongs to image 2, not 1"),
        ([_ref(0, 7, 1, "train")], None, r"\[ref 0\]: 'sentences' must be a non-empty list"),
        ([{"ref_id": 0, "ann_id": 7}], None, r"\[ref 0\]: ref lacks \['image_id', 'split', 'sentences'\]"),
        ([{**_ref(0, 7, 1, "train", "a"), "sentences": [{"raw": "a"}]}], None,
         r"\[ref 0\]\.sentences\[0\]: needs a non-empty string 'sent'"),
    ],
)
def test_refcoco_bad_refs_strict_mode_name_the_ref(tmp_path, refs, boxes, match):
    refs_path, inst = make_refcoco(tmp_path / "refcoco", refs=refs, boxes=boxes)
    with pytest.raises(GroundingDataError, match=r"refs\(unc\)\.p" + match):
        load_refcoco(refs_path, inst, **STRICT)


def test_refcoco_clip_box_counts_records_not_axes(tmp_path):
    # Box 7 leaves the image on two axes; its ref has two sentences, so two of the four records hold it.
    refs, inst = make_refcoco(tmp_path / "r", boxes={7: [600.0, -5.0, 50.0, 40.0], 8: [0, 0, 1, 1], 9: [0, 0, 1, 1]})
    with pytest.warns(GroundingDataWarning) as got:
        assert load_refcoco(refs, inst)[0].box == (600.0, 0.0, 640.0, 35.0)
    (message,) = load_warnings(got)
    assert "clipped 2 of 4 boxes that overran the image by more than 0.001 px (median 10 px" in message


def test_refcoco_default_drops_bad_refs_and_sentences(tmp_path):
    refs = [_ref(0, 7, 1, "train", "man on left", "guy in red"), _ref(1, 99, 1, "val", "gone"),
            _ref(2, 9, 2, "val", "small dog")]
    refs[0]["sentences"][1]["sent"] = "  "
    refs_path, inst = make_refcoco(tmp_path / "refcoco", refs=refs,
                                   boxes={7: [10, 20, 30, 40], 8: [0, 0, 1, 1], 9: [10, 10, 0, 5]})
    with pytest.warns(GroundingDataWarning) as got:
        records = load_refcoco(refs_path, inst)
    assert [r.query for r in records] == ["man on left"]
    (message,) = load_warnings(got)
    assert message.startswith(f"{refs_path}: dropped 3 invalid entries (refs(unc).p[ref 0].sentences[1]: needs ")
    assert "refs(unc).p[ref 1]: ann_id 99 is not in instances.json" in message
    assert "refs(unc).p[ref 2]: annotation 9 bbox [10, 10, 0, 5] has width or height <= 0" in message


def test_refcoco_refuses_pickled_objects_and_bad_instances(tmp_path):
    import datetime

    refs, inst = make_refcoco(tmp_path / "r", refs=[datetime.date(2020, 1, 1)])
    with pytest.raises(GroundingDataError, match=r"not a refs pickle .*refuses to build datetime\.date"):
        load_refcoco(refs, inst)
    write(inst, json.dumps({"images": [{"id": 1, "width": 5}], "annotations": []}))
    with pytest.raises(GroundingDataError, match=r"instances\.json: images\[0\] lacks \['height', 'file_name'\]"):
        load_refcoco(refs, inst)


def _py2_pickle(obj) -> bytes:
    """Pickle bytes as Python 2's cPickle (protocol 2) writes them, with str as 8-bit SHORT_BINSTRING."""
    def enc(x):
        if isinstance(x, str):
            data = x.encode("utf-8")
            return b"U" + bytes([len(data)]) + data
        if isinstance(x, int):
            return b"J" + struct.pack("<i", x)
        if isinstance(x, list):
            return b"](" + b"".join(enc(v) for v in x) + b"e"
        return b"}(" + b"".join(enc(k) + enc(v) for k, v in x.items()) + b"u"
    return b"\x80\x02" + enc(obj) + b"."


def test_refcoco_reads_python2_pickles(tmp_path):
    refs, inst = make_refcoco(tmp_path / "r")
    ref = _ref(0, 7, 1, "train", "man in the café")
    del ref["sentences"][0]["tokens"]
    refs.write_bytes(_py2_pickle([ref]))
    (r,) = load_refcoco(refs, inst)
    assert (r.query, r.split, r.ann_id, r.box) == ("man in the café", "train", 7, (10.0, 20.0, 40.0, 60.0))


def test_stack_targets_rejects_mixed_and_empty(tmp_path):
    refs, inst = make_refcoco(tmp_path / "r")
    box = load_refcoco(refs, inst)[0]
    moment = MomentRecord("v", "q", 0.0, 1.0, 2.0, "x:1")
    with pytest.raises(ValueError, match="mix of record types"):
        stack_targets([box, moment])
    with pytest.raises(ValueError, match="empty"):
        stack_targets([])
