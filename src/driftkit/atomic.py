"""Atomic writes: a directory or a file appears complete under its final name, or not at all.

    with atomic_dir("ckpt/") as tmp:      # write into tmp; on success it is flushed and renamed to ckpt/
        (tmp / "config.json").write_text(...)
    write_text_atomic("results.json", text)

Every save path of the project (policies, decoders, training checkpoints, results files) goes through here,
so an interrupted save never leaves a half-written directory or file in place of the old one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_dir(path: str | os.PathLike, tmp: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `path`; when the block ends without error, flush it to disk
    and rename it to `path` (an existing `path` is replaced only then). On error the temporary is removed.

    tmp: a temporary directory the caller already created (e.g. one that several processes write into)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tmp) if tmp is not None else Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield work
        fsync_tree(work)
        replace_dir(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, flush it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename tmp to final; an existing final is moved aside until then, and removed after."""
    aside = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush every file, then the directories, so the rename cannot expose a partly written tree."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(root))
