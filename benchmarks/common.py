"""Shared helpers for benchmark scripts: timing, machine description, result files."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from driftkit.atomic import write_text_atomic
from driftkit.timing import median_ms  # noqa: F401  (re-exported: the scripts import it from here)


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_results(path: Path, payload: dict, table: str) -> None:
    """Write JSON (with the command and machine) and a markdown file next to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": " ".join(shlex.quote(a) for a in sys.argv), "machine": machine(), **payload}
    write_text_atomic(path, json.dumps(payload, indent=2))
    header = f"Command: `{payload['command']}`\n\nMachine: {json.dumps(payload['machine'])}\n\n"
    write_text_atomic(path.with_suffix(".md"), header + table + "\n")
