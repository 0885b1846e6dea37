"""drift's two one-step forms (DriftOptions.one_step) on a small net: skip x_0 + v(x_0, 0) vs direct v(x_0, 1).

    python benchmarks/drift_one_step.py --threads 1 --seeds 0,1,2

The setting of tests/test_decoders_learn.py (a 1-D two-mode chunk of 4 steps, a 64-wide 2-block MLP, 1000
steps, batch 128, lr 2e-3), where the notes saw a plain f(noise) collapse to the mean. The demo-suite
comparison (default net) is `python benchmarks/variants.py drift`. Results: benchmarks/results/drift_one_step.md.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict
from pathlib import Path

import torch

from common import write_results
from driftkit.demo.runner import TrainSettings, evaluate, train_decoder
from driftkit.demo.tasks import make_task

TASK = dict(horizon=4, steady_dim=False, cond_dim=4)
TOL = 0.3  # the modes sit 1.37 apart (RMS over the chunk): within 0.3 is on a mode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    task = make_task("bimodal", **TASK)
    runs = []
    for one_step in ("skip", "direct"):
        for seed in map(int, args.seeds.split(",")):
            settings = TrainSettings(steps=1000, batch_size=128, hidden_dim=64, depth=2, lr=2e-3, seed=seed)
            scores = evaluate(train_decoder("drift", task, settings, one_step=one_step), task, n=400, k=4, tol=TOL)
            runs.append({"one_step": one_step, "seed": seed, **asdict(scores)})
            print(f"{one_step:6s} seed {seed}: err {scores.err:.3f} on-mode {scores.on_mode:.3f}", flush=True)
    write_results(Path("benchmarks/results/drift_one_step.json"), {"args": vars(args), "runs": runs}, table(runs))


def table(runs: list[dict]) -> str:
    lines = ["| one_step | seed | err (1 sample) | on-mode % | mode shares % |", "|---|---|---|---|---|"]
    for r in runs:
        shares = "/".join(f"{100 * s:.0f}" for s in r["mode_share"])
        lines.append(f"| {r['one_step']} | {r['seed']} | {r['err']:.3f} | {100 * r['on_mode']:.1f} | {shares} |")
    for form in ("skip", "direct"):
        errs = [r["err"] for r in runs if r["one_step"] == form]
        collapsed = sum(r["on_mode"] < 0.05 for r in runs if r["one_step"] == form)
        lines.append(f"| {form}, mean | {len(errs)} seeds | {statistics.mean(errs):.3f} | collapsed: {collapsed} | |")
    return "\n".join(lines) + "\n\nerr: RMS distance to the nearest true mode; collapsed: on-mode below 5%."


if __name__ == "__main__":
    main()
