"""Loader for referring-expression grounding: RefCOCO, RefCOCO+ and RefCOCOg, one BoxRecord per sentence.

The released data (the `refer` toolkit's layout) per dataset folder:

    refcoco/refs(unc).p     pickled list of refs: {ref_id, ann_id, image_id, split, category_id,
                            sent_ids, sentences: [{sent, raw, tokens, sent_id}], file_name}
    refcoco/instances.json  COCO style: images [{id, width, height, file_name}],
                            annotations [{id, image_id, bbox: [x, y, w, h], category_id}]

RefCOCO and RefCOCO+ use the "unc" split (train, val, testA, testB); RefCOCOg the "umd" split (train, val,
test) or the older "google" one (train, val). Boxes come out as [x1, y1, x2, y2] in pixels.

By default (invalid="drop", out_of_range="clip"; see driftkit.grounding.records) a ref whose annotation is
missing or has an empty box is dropped with its sentences, a sentence without text is dropped, and a box that
leaves the image by more than PIXEL_TOLERANCE is clipped; one GroundingDataWarning counts them.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path

from driftkit.grounding.records import (
    PIXEL_TOLERANCE,
    BoxRecord,
    GroundingDataError,
    LoadReport,
    fit_interval,
    parse_float,
    read_json,
    require_file,
)

REF_SPLITS = ("train", "val", "test", "testA", "testB")
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


class _PlainUnpickler(pickle.Unpickler):
    """Refs files hold only lists, dicts, strings and numbers; refusing every class makes loading a file
    from elsewhere unable to run code, and turns a wrong file into a clear error."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refuses to build {module}.{name}; a refs file holds only plain data")


def _load_refs(path: Path) -> list:
    try:
        # The refs files were pickled by Python 2: latin1 maps every byte of a py2 str to one character.
        refs = _PlainUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise GroundingDataError(f"{path}: not a refs pickle ({e})") from None
    if not isinstance(refs, list):
        raise GroundingDataError(f"{path}: expected a pickled list of refs, got {type(refs).__name__}")
    return refs


def _py2_text(s: str) -> str:
    """Undo latin1 decoding of a py2 UTF-8 str; text that was never UTF-8 bytes is returned unchanged."""
    try:
        return s.encode("latin1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return s


def _index_instances(path: Path) -> tuple[dict, dict]:
    """({image_id: image dict}, {ann_id: annotation dict}) from a COCO instances.json."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise GroundingDataError(f"{path}: expected a COCO object with 'images' and 'annotations' lists")
    indexed = []
    for key, fields in (("images", ("id", "width", "height", "file_name")), ("annotations", ("id", "bbox"))):
        table = {}
        for i, item in enumerate(data[key]):
            missing = [f for f in fields if not isinstance(item, dict) or f not in item]
            if missing:
                raise GroundingDataError(f"{path}: {key}[{i}] lacks {missing}")
            table[item["id"]] = item
        indexed.append(table)
    return indexed[0], indexed[1]


def _pixel_box(ann: dict, image: dict, where: str, report: LoadReport) -> tuple[tuple[float, ...], float]:
    """(COCO [x, y, w, h] -> [x1, y1, x2, y2] checked or clipped to the image, how far it overran the image)."""
    bbox = ann["bbox"]
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise GroundingDataError(f"{where}: annotation {ann['id']} bbox must be [x, y, w, h], got {bbox!r}")
    x, y, w, h = (parse_float(v, where, f"annotation {ann['id']} bbox") for v in bbox)
    if w <= 0 or h <= 0:
        raise GroundingDataError(f"{where}: annotation {ann['id']} bbox {bbox!r} has width or height <= 0")
    width = parse_float(image["width"], where, f"image {image['id']} width")
    height = parse_float(image["height"], where, f"image {image['id']} height")
    what = f"annotation {ann['id']} box"
    mode, tol = report.out_of_range, report.tolerance
    x1, x2 = fit_interval(x, x + w, width, mode, where, what + f" x-range (image width {width:g})", tol)
    y1, y2 = fit_interval(y, y + h, height, mode, where, what + f" y-range (image height {height:g})", tol)
    return (x1, y1, x2, y2), max(-x, x + w - width, -y, y + h - height)


def _parse_splits(splits: str | Sequence[str] | None) -> set[str] | None:
    if splits is None:
        return None
    wanted = {splits} if isinstance(splits, str) else set(splits)
    unknown = sorted(wanted - set(REF_SPLITS))
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}, must be among {list(REF_SPLITS)}")
    return wanted


def _ref_box(ref, where: str, images: dict, anns: dict, report: LoadReport) -> tuple[dict, dict, tuple, float]:
    """(image, annotation, [x1, y1, x2, y2], overrun) of one ref, or GroundingDataError naming what is wrong."""
    missing = [k for k in REF_KEYS if not isinstance(ref, dict) or k not in ref]
    if missing:
        raise GroundingDataError(f"{where}: ref lacks {missing}")
    image, ann = images.get(ref["image_id"]), anns.get(ref["ann_id"])
    if image is None:
        raise GroundingDataError(f"{where}: image_id {ref['image_id']!r} is not in instances.json")
    if ann is None:
        raise GroundingDataError(f"{where}: ann_id {ref['ann_id']!r} is not in instances.json")
    if ann.get("image_id", ref["image_id"]) != ref["image_id"]:
        raise GroundingDataError(f"{where}: ann {ref['ann_id']} belongs to image {ann['image_id']}, "
                                 f"not {ref['image_id']}")
    if not isinstance(ref["sentences"], list) or not ref["sentences"]:
        raise GroundingDataError(f"{where}: 'sentences' must be a non-empty list, got {ref['sentences']!r}")
    return image, ann, *_pixel_box(ann, image, where, report)


def _ref_records(ref, where: str, images: dict, anns: dict, text_key: str, report: LoadReport
                 ) -> list[BoxRecord]:
    """One BoxRecord per usable sentence of a ref; a bad ref raises, a bad sentence goes to the report."""
    image, ann, box, overrun = _ref_box(ref, where, images, anns, report)
    records = []
    for j, sent in enumerate(ref["sentences"]):
        at = f"{where}.sentences[{j}]"
        text = sent.get(text_key) if isinstance(sent, dict) else None
        if not isinstance(text, str) or not text.strip():
            report.drop(GroundingDataError(f"{at}: needs a non-empty string {text_key!r}, got {sent!r}"))
            continue
        records.append(BoxRecord(
            image_id=ref["image_id"], file_name=str(image["file_name"]), query=_py2_text(text.strip()),
            box=box, width=float(image["width"]), height=float(image["height"]), split=ref["split"],
            ref_id=ref["ref_id"], ann_id=ref["ann_id"], sent_id=sent.get("sent_id"),
            category_id=ref.get("category_id", ann.get("category_id")), source=at,
        ))
        report.note_overrun(overrun)  # once per record, whichever axes were clipped
    return records


def load_refcoco(refs: str | Path, instances: str | Path, splits: str | Sequence[str] | None = None,
                 out_of_range: str = "clip", text_key: str = "sent", invalid: str = "drop",
                 tolerance: float = PIXEL_TOLERANCE) -> list[BoxRecord]:
    """One BoxRecord per valid (ref, sentence) in the given splits (None = all), in refs-file order.

    splits: a name or names among REF_SPLITS; asking for one the file does not contain is an error.
    out_of_range: "clip" (default) or "raise" for boxes that leave the image by more than `tolerance`
    pixels. invalid: "drop" (default) or "raise" for a malformed ref (its sentences go with it) or sentence.
    text_key: "sent" (lower-cased, tokenised; what the field evaluates on) or "raw".
    """
    report = LoadReport(Path(refs), invalid, out_of_range, tolerance, unit=("entry", "entries"), kind="boxes",
                        limits="the image", measure="px")
    wanted = _parse_splits(splits)
    refs_path = require_file(refs, "refs pickle (refs(unc).p / refs(umd).p)")
    images, anns = _index_instances(require_file(instances, "COCO instances.json"))
    ref_list = _load_refs(refs_path)
    present = {r.get("split") for r in ref_list if isinstance(r, dict)}
    if wanted is not None and wanted - present:
        raise ValueError(f"split(s) {sorted(wanted - present)} not in {refs_path}; it has "
                         f"{sorted(str(s) for s in present)}")
    records = []
    for index, ref in enumerate(ref_list):
        if wanted is None or (isinstance(ref, dict) and ref.get("split") in wanted):
            try:
                records.extend(_ref_records(ref, f"{refs_path}[ref {index}]", images, anns, text_key, report))
            except GroundingDataError as e:
                report.drop(e)
    report.finish(len(records))
    return records


def load_refer(root: str | Path, dataset: str = "refcoco", split_by: str | None = None,
               splits: str | Sequence[str] | None = None, **options) -> list[BoxRecord]:
    """load_refcoco on the `refer` layout: root/<dataset>/refs(<split_by>).p and root/<dataset>/instances.json.

    split_by defaults to "unc" for refcoco and refcoco+, "umd" for refcocog. options go to load_refcoco.
    """
    if split_by is None:
        if dataset not in DEFAULT_SPLIT_BY:
            raise ValueError(f"got dataset={dataset!r} with no split_by; pass split_by or use one of "
                             f"{sorted(DEFAULT_SPLIT_BY)}")
        split_by = DEFAULT_SPLIT_BY[dataset]
    folder = Path(root) / dataset
    return load_refcoco(folder / f"refs({split_by}).p", folder / "instances.json", splits=splits, **options)
