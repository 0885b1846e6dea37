"""Where a grounding head's misses come from: finished runs of benchmarks/grounding.py, their evaluation
variants redrawn from the training checkpoint exactly as the sweep drew them (same seed, same batches: the
script checks that R@1 and mIoU match the run's results.json), each split into signed start / end errors,
length ratio and centre error (driftkit.grounding.extent_errors). A head that widens every span and one that
misplaces it can score the same mIoU; these columns tell them apart.

    python benchmarks/grounding_extents.py \\
        --runs benchmarks/results/grounding-temporal-qwen3-lora/runs/drift-seed0 \\
        --out benchmarks/results/grounding-extents-temporal-qwen3-lora

The runs' checkpoints are not committed (runs/ is git-ignored): run the grounding sweep first. Results go to
<out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from driftkit.grounding import extent_errors  # noqa: E402
from driftkit.grounding.evaluate import eval_variants, postprocess, predict_split, scorer  # noqa: E402
from driftkit.grounding.experiment import GroundingExperimentConfig, build_datasets  # noqa: E402
from driftkit.policy import load_policy  # noqa: E402
from driftkit.train.checkpoint import latest_checkpoint  # noqa: E402

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="Run folders of benchmarks/grounding.py.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def inspect_run(run: Path) -> list[dict]:
    """One row per evaluation variant of a finished run: its recomputed metrics and extent errors."""
    results = json.loads((run / "results.json").read_text())
    cfg = GroundingExperimentConfig(**results["config"])
    checkpoint = latest_checkpoint(run)
    if checkpoint is None:
        raise FileNotFoundError(f"{run} has no training checkpoint (expected {run}/checkpoints/step_*)")
    _, test = build_datasets(replace(cfg, train_size=cfg.batch_size))  # the test split ignores train_size
    policy = load_policy(checkpoint).eval()
    rows, logged = [], {e["label"]: e["metrics"] for e in results["evaluations"]}
    for variant in eval_variants(policy, cfg.decoder):
        raw, gt = predict_split(policy, test, variant, cfg.seed, cfg.eval_batch_size)
        pred = postprocess(raw)[0]
        scores = scorer(cfg.task)(pred, gt)
        metrics = dict(zip(scores.columns(), scores.percentages()))
        if any(abs(v - logged[variant.label][k]) > 1e-6 for k, v in metrics.items()):
            raise RuntimeError(f"{run} {variant.label}: redrawn metrics {metrics} differ from the logged "
                               f"{logged[variant.label]}; the checkpoint is not the one the sweep scored")
        rows.append({"run": run.name, "label": variant.label, "seed": cfg.seed, "metrics": metrics,
                     "extents": extent_errors(pred, gt)})
        print(f"{run.name} {variant.label}: {rows[-1]['extents']}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    metric_names = list(rows[0]["metrics"])
    head = ["evaluation", "seed", *metric_names, "start/lo error", "end/hi error", "length ratio", "centre error (abs)"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        signed = [f"{r['extents'][k]:+.3f}" for k in ("lo_error", "hi_error")]
        cells = [r["label"], str(r["seed"]), *(f"{r['metrics'][m]:.2f}" for m in metric_names), *signed,
                 f"{r['extents']['size_ratio']:.3f}", f"{r['extents']['centre_error']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Errors in fractions of the clip (moments) or of the image side (boxes), after the sweep's "
            "postprocess; means over the test queries. Length ratio: mean predicted / true length.")
    return note + "\n\n" + "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [row for run in args.runs for row in inspect_run(run)]
    write_results(args.out.with_suffix(".json"), {"runs": [str(r) for r in args.runs], "rows": rows}, table(rows))
    print(f"wrote {args.out}.json and .md")


if __name__ == "__main__":
    main()
