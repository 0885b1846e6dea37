"""Compare decoder variants on the built-in tasks over several training seeds (mean and spread).

    python benchmarks/variants.py residual      # residual parameterisations, source widths, schedules
    python benchmarks/variants.py drift         # drift groupings, the scale weighting, the one-step output

Results go to benchmarks/results/variants-<set>.json (+ .md), written after every run; rerunning skips the runs
already there, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from dataclasses import asdict
from pathlib import Path

import torch

from common import write_results
from driftkit.demo.runner import TrainSettings, evaluate, train_decoder
from driftkit.demo.tasks import make_task

TOKENS4 = {"base": "tokens", "base_options": {"num_bins": 4}}
SETS = {
    "residual": {
        "tokens (4 bins, the base)": ("tokens", {"num_bins": 4}),
        "residual_flow[tokens4] residual coords, auto sigma": ("residual_flow", TOKENS4),
        "residual_flow[tokens4] residual coords, auto sigma, T=0": ("residual_flow", {**TOKENS4, "temperature": 0.0}),
        "residual_flow[tokens4] absolute coords, auto sigma": ("residual_flow", {**TOKENS4, "parameterization": "absolute"}),
        "residual_flow[tokens4] residual coords, sigma=0.1": ("residual_flow", {**TOKENS4, "source_std": 0.1}),
        "residual_flow[tokens4] staged (half base)": ("residual_flow", {**TOKENS4, "schedule": "staged", "base_steps": 600}),
        "residual_drift[tokens4] auto sigma": ("residual_drift", TOKENS4),
        "residual_drift[tokens4] auto sigma, T=0": ("residual_drift", {**TOKENS4, "temperature": 0.0}),
    },
    "drift": {
        "flow (10 steps)": ("flow", {}),
        "drift action_dim, scale weighting": ("drift", {}),
        "drift action_dim, reference (no weighting)": ("drift", {"scale_weighting": False}),
        "drift chunk, scale weighting": ("drift", {"grouping": "chunk"}),
        "drift timestep, scale weighting": ("drift", {"grouping": "timestep"}),
        "drift action_dim, direct output": ("drift", {"one_step": "direct"}),
        "drift chunk, direct output": ("drift", {"grouping": "chunk", "one_step": "direct"}),
    },
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("set", choices=sorted(SETS))
    p.add_argument("--tasks", default="bimodal,precision")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(f"benchmarks/results/variants-{args.set}.json")
    runs = json.loads(out.read_text())["runs"] if out.exists() else []
    done = {(r["task"], r["variant"], r["seed"]) for r in runs}
    trained: dict[str, object] = {}  # temperature only changes sampling: variants differing in it share a model
    for task_name in args.tasks.split(","):
        task = make_task(task_name)
        for label, (name, options) in SETS[args.set].items():
            for seed in map(int, args.seeds.split(",")):
                if (task_name, label, seed) in done:
                    continue
                settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, seed=seed)
                train_options = {k: v for k, v in options.items() if k != "temperature"}
                key = json.dumps([task_name, name, train_options, seed], sort_keys=True)
                if key not in trained:
                    dec = train_decoder(name, task, settings, **train_options)
                    trained[key] = (dec, dec.config)
                dec, config = trained[key]
                dec.config = dataclasses.replace(config, **options) if "temperature" in options else config
                scores = evaluate(dec, task, n=500)
                runs.append({"task": task_name, "variant": label, "seed": seed, **asdict(scores)})
                print(f"{task_name:9s} {label:55s} seed {seed}: err {scores.err:.4f} on-mode {scores.on_mode:.2f}",
                      flush=True)
                write_results(out, {"args": vars(args), "runs": runs}, table(runs))


def table(runs: list[dict]) -> str:
    lines = ["| task | variant | seeds | err (1 sample) | err (KeyStone K=8) | on-mode % | NFE |",
             "|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["task"], r["variant"]), []).append(r)
    fmt = lambda xs, scale=1.0: (f"{scale * statistics.mean(xs):.4g} ± {scale * statistics.stdev(xs):.2g}"  # noqa: E731
                                 if len(xs) > 1 else f"{scale * xs[0]:.4g}")
    for (task, variant), rs in groups.items():
        lines.append(f"| {task} | {variant} | {len(rs)} | {fmt([r['err'] for r in rs])} "
                     f"| {fmt([r['err_keystone'] for r in rs])} | {fmt([r['on_mode'] for r in rs], 100)} "
                     f"| {rs[0]['nfe']} |")
    return "\n".join(lines) + "\n\nerr: RMS distance to the nearest true mode, target units; mean ± std over seeds."


if __name__ == "__main__":
    main()
