"""Metrics sinks of the main process: a JSONL file (always) and TensorBoard (when installed)."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLogger:
    """log(step, {name: float}) appends one JSON line to <output_dir>/metrics.jsonl and, when
    torch.utils.tensorboard can be imported, writes scalars under <output_dir>/tensorboard."""

    def __init__(self, output_dir: str | Path, enabled: bool = True, tensorboard: bool = True, start_step: int = 0):
        """start_step: rows logged after this step by an interrupted run are dropped, since the resumed
        run logs those steps again."""
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [row for row in read_metrics(output_dir) if row["step"] <= start_step]
            self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra (driftkit[logging])
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(output_dir: str | Path) -> list[dict]:
    """The rows of <output_dir>/metrics.jsonl."""
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
