"""Shared helpers for benchmark scripts: timing, machine description, result files."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch


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


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(fn, device: str, repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of fn() in milliseconds, synchronising the device around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def write_results(path: Path, payload: dict, table: str) -> None:
    """Write JSON (with the command and machine) and a markdown file next to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": " ".join(shlex.quote(a) for a in sys.argv), "machine": machine(), **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    header = f"Command: `{payload['command']}`\n\nMachine: {json.dumps(payload['machine'])}\n\n"
    path.with_suffix(".md").write_text(header + table + "\n")
