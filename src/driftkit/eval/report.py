"""Evaluation results as files: results.json, a markdown table, and a success-vs-latency plot."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from driftkit.atomic import write_text_atomic
from driftkit.envs.tasks import DIFFICULTY
from driftkit.eval.stats import EpisodeOutcome, GroupSummary, seed_points


def _clean(value):
    """NaN/inf -> None so the JSON is standard (json.dumps would write NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def results_dict(outcomes: list[EpisodeOutcome], summary: list[GroupSummary], config: dict) -> dict:
    return _clean({"config": config, "summary": [asdict(s) for s in summary],
                   "seed_points": seed_points(outcomes), "episodes": [asdict(o) for o in outcomes]})


def write_json(path: str | Path, results: dict) -> Path:
    return write_text_atomic(path, json.dumps(results, indent=2, allow_nan=False))


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _stages(ms: dict[str, float]) -> str:
    """'0.12 / 3.40 / 1.05' for the stages preprocess, prefix and decoder ('-' where a policy has no such stage)."""
    return " / ".join(_fmt(ms.get(k), ".2f") for k in ("preprocess", "prefix", "decoder"))


def markdown_table(summary: list[GroupSummary]) -> str:
    """One row per (decoder, task or split): success % +- binomial SE, seed std, length, ms and NFE per chunk."""
    head = ("| decoder | group | tasks | episodes | success % | ± SE | seed std | mean length | ms/chunk | "
            "preprocess / prefix / decoder ms | NFE/chunk |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for s in summary:
        group = f"**{s.group}**" if s.group == "all" or s.group in DIFFICULTY else s.group
        lines.append(
            f"| {s.decoder} | {group} | {s.n_tasks} | {s.n_episodes} | {100 * s.success_rate:.1f} | "
            f"{100 * s.success_se:.1f} | {_fmt(None if s.seed_std is None else 100 * s.seed_std, '.1f')} | "
            f"{s.mean_length:.1f} | {_fmt(s.chunk_ms_median, '.2f')} | {_stages(s.stage_ms_median)} | "
            f"{_fmt(s.nfe, 'd')} |")
    return "\n".join(lines) + "\n"


def plot_success_vs_latency(points: list[dict], path: str | Path, title: str = "") -> Path:
    """Scatter of success rate against median ms per chunk, one point per (decoder, seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    decoders = list(dict.fromkeys(p["decoder"] for p in points))
    for i, decoder in enumerate(decoders):
        mine = [p for p in points if p["decoder"] == decoder]
        ax.scatter([p["chunk_ms_median"] for p in mine], [100 * p["success_rate"] for p in mine],
                   label=decoder, color=plt.cm.tab10(i % 10), s=36, alpha=0.85)
    xs = [p["chunk_ms_median"] for p in points if math.isfinite(p["chunk_ms_median"]) and p["chunk_ms_median"] > 0]
    if xs and max(xs) / min(xs) > 20:  # decoders from one network call to hundreds: a log axis shows both
        ax.set_xscale("log")
    ax.set_xlabel("median ms per action chunk")
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(title or "success vs latency (one point per decoder and seed)")
    ax.grid(alpha=0.3)
    if decoders:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
