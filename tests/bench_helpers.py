"""Importing the benchmark scripts (benchmarks/*.py) from tests, one way for every test file."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module. The scripts import their neighbours (common, sweep, serving_load) by
    plain name, some inside functions, so the folder stays on sys.path; appended, so that a script's name never
    shadows an installed module."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))
    return importlib.import_module(name)
