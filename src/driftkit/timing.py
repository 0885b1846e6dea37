"""One timer for evaluators, benchmarks and policies: wall time in milliseconds, synchronising the device.

    timer = StageTimer(device)
    with timer.stage("prefix"):
        ...
    timer.ms          # {"prefix": 3.1, ...} summed per stage since the last reset()
    median_ms(fn, device, repeats=30, warmup=5)
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch


def sync(device: torch.device | str | None) -> None:
    """Wait for queued GPU work, so a timer measures the work and not only its launch."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class StageTimer:
    """Sums the wall time of named stages (ms)."""

    def __init__(self, device: torch.device | str | None = None):
        self.device = device
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        sync(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.ms[name] = self.ms.get(name, 0.0) + 1000.0 * (time.perf_counter() - start)

    def reset(self) -> dict[str, float]:
        """Return the stage times so far and start again."""
        out, self.ms = self.ms, {}
        return out


@contextmanager
def null_stage(name: str) -> Iterator[None]:
    """Stand-in for StageTimer.stage when nobody is timing."""
    yield


def stage_of(timer: StageTimer | None) -> Callable[[str], object]:
    """timer.stage, or a no-op with the same signature when timer is None."""
    return timer.stage if timer is not None else null_stage


def median_ms(fn: Callable[[], object], device: torch.device | str | None = None, repeats: int = 30,
              warmup: int = 5) -> float:
    """Median wall time of fn() in milliseconds over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    timer = StageTimer(device)
    times = []
    for _ in range(repeats):
        with timer.stage("call"):
            fn()
        times.append(timer.reset()["call"])
    return sorted(times)[len(times) // 2]
