"""`driftkit demo`: train every decoder on the built-in tasks, print one table, write a plot and JSON."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from driftkit.demo.runner import TrainSettings, evaluate, train_policy
from driftkit.demo.tasks import make_task


@dataclass
class Entry:
    """One row of the demo: a decoder, its options, and how it is sampled at evaluation."""

    label: str
    decoder: str
    options: dict = field(default_factory=dict)
    steps: int | None = None
    """Sampling steps override (e.g. flow truncated to 1 step)."""
    reuse: str | None = None
    """Label of an entry whose trained model this row evaluates differently (no retraining)."""
    temperature: float | None = None
    """Sampling temperature of this row's evaluation (None = the decoder's own), e.g. 0 for a T=0 row."""
    batch_size: int | None = None


ENTRIES = [
    Entry("regression", "regression"),
    Entry("tokens", "tokens"),
    Entry("flow", "flow"),
    Entry("flow (1 step)", "flow", steps=1, reuse="flow"),
    Entry("residual_flow", "residual_flow"),
    Entry("residual_flow (T=0)", "residual_flow", reuse="residual_flow", temperature=0.0),
    Entry("drift", "drift", batch_size=128),
    Entry("residual_drift", "residual_drift", batch_size=128),
    Entry("residual_drift (T=0)", "residual_drift", reuse="residual_drift", temperature=0.0),
    Entry("discrete_flow", "discrete_flow"),
]

DISCRETE_FLOW_VARIANTS = [
    Entry("discrete_flow", "discrete_flow"),
    Entry("discrete_flow (head)", "discrete_flow", {"velocity": "head"}),
    Entry("discrete_flow (embedding d)", "discrete_flow", {"distance": "embedding"}),
    Entry("discrete_flow (head, embedding d)", "discrete_flow", {"velocity": "head", "distance": "embedding"}),
]
"""DFM-VLA's two velocities (posterior vs head) x two metric-path distances (bins vs the decoder's own token
embeddings); run with run_suite(settings, DISCRETE_FLOW_VARIANTS) (docs/decoders.md, discrete_flow)."""


@dataclass
class SuiteSettings:
    tasks: tuple[str, ...] = ("bimodal", "precision")
    train: TrainSettings = field(default_factory=lambda: TrainSettings(steps=1200, batch_size=256))
    eval_samples: int = 500
    k: int = 8
    out_dir: str = "outputs/demo"


@dataclass
class SuiteRun:
    rows: list[dict]
    """One result per (task, entry)."""
    models: dict
    """(task, entry label) -> trained decoder."""
    checkpoints: dict = field(default_factory=dict)
    """(task, entry label) -> the trainer checkpoint that decoder was saved in."""


def run_dir(out_dir: str | Path, task: str, label: str) -> Path:
    """<out_dir>/runs/<task>/<label with anything but letters, digits, '.', '_' and '-' as '_'>."""
    return Path(out_dir) / "runs" / task / (re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "_")


def run_suite(settings: SuiteSettings, entries: list[Entry] = ENTRIES, progress: bool = True) -> SuiteRun:
    """Train (through driftkit.train.train, one run directory per task and trained entry) and score every
    entry on every task. A run directory left by an earlier suite run is replaced, as its results are."""
    trained = list(dict.fromkeys(e.reuse or e.label for e in entries))
    if len({run_dir("", "", label).name for label in trained}) != len(trained):
        raise ValueError(f"the trained entries {trained} do not map to distinct run directories")
    rows, models, checkpoints = [], {}, {}
    for task_name in settings.tasks:
        task = make_task(task_name)
        for entry in entries:
            key = (task_name, entry.reuse or entry.label)
            start = time.perf_counter()
            if key not in models:
                batch_size = entry.batch_size or settings.train.batch_size
                train = dataclasses.replace(settings.train, batch_size=batch_size)
                path = run_dir(settings.out_dir, task_name, key[1])
                shutil.rmtree(path, ignore_errors=True)
                result = train_policy(entry.decoder, task, train, path, progress=progress, **entry.options)
                models[key], checkpoints[key] = result.policy.decoder.eval(), result.checkpoint
            seconds = time.perf_counter() - start
            scores = evaluate(models[key], task, n=settings.eval_samples, k=settings.k, steps=entry.steps,
                              temperature=entry.temperature)
            rows.append({"task": task_name, "decoder": entry.label, "train_s": seconds, **asdict(scores)})
            if progress:
                print(format_row(rows[-1]), flush=True)
    return SuiteRun(rows, models, checkpoints)


HEADER = ("| task | decoder | err (1 sample) | err (KeyStone K) | err (best of K) | on-mode % | mode shares % "
          "| NFE | ms/chunk | train s |")


def format_row(r: dict) -> str:
    shares = "/".join(f"{100 * s:.0f}" for s in r["mode_share"])
    errors = f"{r['err']:.4f} | {r['err_keystone']:.4f} | {r['err_best_of_k']:.4f}"
    return (f"| {r['task']} | {r['decoder']} | {errors} | {100 * r['on_mode']:.1f} | {shares} | {r['nfe']} "
            f"| {r['ms_per_chunk']:.2f} | {r['train_s']:.0f} |")


def markdown_table(rows: list[dict]) -> str:
    sep = "|" + "---|" * (HEADER.count("|") - 1)
    return "\n".join([HEADER, sep, *map(format_row, rows)])


def write_results(run: SuiteRun, settings: SuiteSettings) -> Path:
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"settings": asdict(settings), "rows": run.rows}, indent=2))
    (out / "results.md").write_text(markdown_table(run.rows) + "\n")
    from driftkit.demo.plot import plot_suite  # matplotlib only when writing

    plot_suite(run.rows, run.models, make_task("bimodal"), out / "demo.png")
    return out
