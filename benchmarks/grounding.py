"""Grounding sweep: every decoder spec x 3 training seeds on a synthetic grounding task, mean ± std over seeds.

    python benchmarks/grounding.py --task spatial              # CPU default, sized for < 1 h per task on 2 cores
    python benchmarks/grounding.py --task temporal --large     # GPU: qwen2_5_vl-mid, more data and steps
    python benchmarks/grounding.py --task spatial --estimate   # time a few steps per decoder, project the sweep
    python benchmarks/grounding.py --task spatial --smoke      # a few steps on a few examples: pipeline check

Each run writes <out>/runs/<spec>-seed<s>/results.json (driftkit.grounding.experiment); a rerun skips the runs
already there, or already in <out>.json with the same config (the runs/ folder is not committed, the aggregate
is), so an interrupted sweep resumes on a fresh clone. After every run the aggregate is rewritten to <out>.json and
<out>.md (command and machine at the top): one row per evaluation variant with mean ± std (sample std over
seeds) of each metric, NFE and ms per prediction, then the refinement table: the strict metric (R@1 IoU=0.7 or
Acc@0.9) and mIoU of each residual decoder minus its base, paired by seed, both against the standalone base
decoder and against the residual decoder's own base head.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import write_results
from driftkit.grounding.evaluate import constant_baseline
from driftkit.grounding.pretrain_model import pretrained_meta
from driftkit.grounding.experiment import (
    DECODER_SPECS, GroundingExperimentConfig, backbone_input_size, build_datasets, parse_decoder_spec, run_experiment,
    run_text_answers, TEXT_LABEL,
)

RESULTS = Path(__file__).parent / "results"
SIZES = {
    # 1000 steps x 6 decoders x 3 seeds: about 45 min per task on 2 CPU cores (see docs/grounding.md). 112-pixel
    # input: Qwen2.5-VL merges 28x28 pixels into one token, so 16 image tokens, and one token per 28-pixel frame.
    "cpu": dict(backbone="qwen2_5_vl-tiny", steps=1000, batch_size=32, lr=1e-3, train_size=8192, test_size=256,
                image_size=112, frame_size=28, frame_gap=0),
    "large": dict(backbone="qwen2_5_vl-mid", steps=4000, batch_size=32, train_size=16384, test_size=1024,
                  hidden_dim=256, depth=3, lr=1e-4, warmup_steps=200, image_size=224, frame_size=48,
                  device="cuda"),
    "smoke": dict(backbone="qwen2_5_vl-tiny", steps=3, batch_size=4, train_size=8, test_size=8, eval_batch_size=8,
                  latency_repeats=2, log_every=1, hidden_dim=32, depth=1),
}
STRICT = {"spatial": "Acc@0.9", "temporal": "R@1 IoU=0.7"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("spatial", "temporal"), required=True)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--large", action="store_true", help="GPU sizing: qwen2_5_vl-mid, 16k examples, 4000 steps.")
    size.add_argument("--smoke", action="store_true", help="3 steps on 8 examples, to check the pipeline.")
    p.add_argument("--estimate", action="store_true", help="Time a few steps per decoder and print the projected "
                   "runtime of the sweep; trains nothing to completion and writes no results.")
    p.add_argument("--decoders", nargs="+", default=list(DECODER_SPECS), help="Decoder specs to sweep.")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, help="Override the sizing's training steps.")
    p.add_argument("--backbone", help="Override the sizing's backbone: a preset, e.g. paligemma-tiny, or a checkpoint "
                   "directory, e.g. a text-pretrained VLM (benchmarks/grounding_pretrain.py); a checkpoint that "
                   "records its question templates also gets the row of its own text answers.")
    p.add_argument("--mode", choices=("frozen", "lora", "full"), help="Backbone training mode (default: full).")
    p.add_argument("--kinds", nargs="+", help="Spatial expression kinds (default: the referring mix); e.g. "
                   "'single' for the localisation-only level. Named in the default output stem.")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default).")
    p.add_argument("--out", type=Path, help="Output stem (default benchmarks/results/grounding-<task>[-large]).")
    args = p.parse_args(argv)
    for spec in args.decoders:
        parse_decoder_spec(spec)  # fail before any training on a typo
    return args


def make_config(args, spec: str, seed: int) -> GroundingExperimentConfig:
    sizing = dict(SIZES["large" if args.large else "smoke" if args.smoke else "cpu"])
    if args.steps:
        sizing["steps"] = args.steps
    if args.backbone:
        sizing["backbone"] = args.backbone
        meta = pretrained_meta(args.backbone)  # None for a preset or a checkpoint without its answers file
        if meta is not None:  # ask in the pretraining's layout: its image side, its frames (tiled with no gap)
            frames = meta.get("num_frames", 16)  # exports before num_frames was recorded used 16
            layout = meta.get("frame_layout", "grid")
            side = meta["image_size"] if layout == "frames" else meta["image_size"] // math.ceil(math.sqrt(frames))
            sizing.update(image_size=meta["image_size"], num_frames=frames, frame_gap=0, frame_size=side,
                          frame_layout=layout, clip_seconds=meta.get("clip_seconds", 16.0))
    if args.mode:
        sizing["mode"] = args.mode
    if args.kinds:
        sizing["kinds"] = tuple(args.kinds)
    return GroundingExperimentConfig(task=args.task, decoder=spec, seed=seed, **sizing)


def run_dir(out: Path, spec: str, seed: int) -> Path:
    return out / "runs" / f"{spec.replace('[', '_').replace(']', '')}-seed{seed}"


def sweep(args, out: Path) -> list[dict]:
    results = []
    datasets = build_datasets(make_config(args, args.decoders[0], args.seeds[0]))  # one copy for every run
    baseline = constant_baseline(*datasets, args.task)
    committed = committed_runs(out)
    text = text_row(args, out, datasets, committed)
    if text is not None:
        results.append(text)
    for seed in args.seeds:  # seed-major: a partial sweep already covers every decoder
        for spec in args.decoders:
            cfg, path = make_config(args, spec, seed), run_dir(out, spec, seed)
            found = finished_run(cfg, path / "results.json", committed.get((spec, seed)))
            if found is None:
                start = time.perf_counter()
                found = run_experiment(cfg, path, datasets)
                print(f"{spec} seed {seed}: {time.perf_counter() - start:.0f} s")
            results.append(found)
            write_summary(args, out, results, baseline)
    return results


def committed_runs(out: Path) -> dict[tuple[str, int], dict]:
    """(decoder, seed) -> run, from an aggregate <out>.json an earlier sweep wrote; {} when there is none."""
    path = out.with_suffix(".json")
    if not path.is_file():
        return {}
    return {(r["decoder"], r["seed"]): {**r, "source": str(path)} for r in json.loads(path.read_text())["runs"]
            if "config" in r}  # aggregates written before runs recorded their config cannot be checked: rerun


def finished_run(cfg: GroundingExperimentConfig, done: Path, committed: dict | None, name: str = "") -> dict | None:
    """The run's results if it already ran with this config (its results.json first, else the aggregate's
    record), None if it has to run; exits when a finished run was written with another config."""
    if done.is_file():
        found, source = json.loads(done.read_text()), done
    elif committed is not None:
        found, source = committed, committed["source"]
    else:
        return None
    name = name or cfg.decoder
    if found["config"] != json.loads(json.dumps(cfg.to_dict())):
        sys.exit(f"{source}: {name} seed {cfg.seed} was run with another config; use another --out or "
                 "delete it")
    print(f"skip {name} seed {cfg.seed}: done in {source}")
    return found


def text_row(args, out: Path, datasets, committed: dict) -> dict | None:
    """The checkpoint's own text answers (DRIFT's "Qwen-VL" row), once: they do not depend on a training seed."""
    cfg, path = make_config(args, args.decoders[0], args.seeds[0]), out / "runs" / "text"
    found = finished_run(cfg, path / "results.json", committed.get(("text", cfg.seed)), "text")
    return found if found is not None else run_text_answers(cfg, path, datasets)


# ---- aggregation ---------------------------------------------------------------------------------------------
def mean_std(values: list[float], digits: int = 2) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def by_label(results: list[dict]) -> dict[str, list[dict]]:
    """Evaluation label -> its evaluations over seeds, in sweep order."""
    rows: dict[str, list[dict]] = {}
    for res in results:
        for ev in res["evaluations"]:
            rows.setdefault(ev["label"], []).append({**ev, "seed": res["seed"]})
    return rows


def main_table(results: list[dict], baseline: dict) -> str:
    rows = by_label(results)
    metrics = list(baseline)
    head = ["decoder (evaluation)", *metrics, "NFE", "ms/pred (batched)", "ms latency (batch 1)", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for label, evs in rows.items():
        cells = [mean_std([e["metrics"][m] for e in evs]) for m in metrics]
        latency = [e["latency_ms"] for e in evs if e["latency_ms"] is not None]
        cells += [str(evs[0]["nfe"]), mean_std([e["ms_per_prediction"] for e in evs]), mean_std(latency, 1),
                  str(len(evs))]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    cells = [f"{baseline[m]:.2f}" for m in metrics] + ["0", "–", "–", "–"]
    lines.append("| " + " | ".join(["constant: mean training target (ignores the input)", *cells]) + " |")
    return "\n".join(lines)


def refinement_table(results: list[dict], task: str) -> str:
    """Residual decoder minus its base, paired by seed: the standalone base run and the run's own base head."""
    rows, strict = by_label(results), STRICT[task]
    head = ["residual (evaluation)", "compared with", f"Δ {strict}", "Δ mIoU", "pairs"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|---:|"]
    for res_label, evs in rows.items():
        if res_label == TEXT_LABEL:
            continue
        spec = parse_decoder_spec(res_label.split(" ")[0])
        if spec.name not in ("residual_flow", "residual_drift") or res_label.endswith(" base"):
            continue
        base = spec.options.get("base", "regression")
        for other in (base, f"{spec.spec} base"):
            pairs = {e["seed"]: e for e in rows.get(other, [])}
            diffs = [(e["metrics"][strict] - pairs[e["seed"]]["metrics"][strict],
                      e["metrics"]["mIoU"] - pairs[e["seed"]]["metrics"]["mIoU"]) for e in evs if e["seed"] in pairs]
            if diffs:
                lines.append(f"| {res_label} | {other} | {mean_std([d[0] for d in diffs])} | "
                             f"{mean_std([d[1] for d in diffs])} | {len(diffs)} |")
    return "\n".join(lines)


def write_summary(args, out: Path, results: list[dict], baseline: dict) -> None:
    cfg = results[0]["config"]
    settings = {k: cfg.get(k) for k in ("backbone", "mode", "steps", "batch_size", "lr", "train_size", "test_size",
                                        "cond", "hidden_dim", "depth", "kinds", "image_size", "num_frames",
                                        "frame_size", "frame_gap", "frame_layout")}
    settings["input_size"] = backbone_input_size(GroundingExperimentConfig(**cfg))
    table = (f"Task: {args.task}; settings: {json.dumps(settings)}; seeds {sorted({r['seed'] for r in results})}.\n"
             f"Percentages; mean ± sample std over training seeds (the data are the same for every seed). "
             f"{results[0]['postprocess'].capitalize()}. 'T=0': the same weights sampled at temperature 0; "
             "'base': a residual decoder's base head alone.\n\n" + main_table(results, baseline) +
             "\n\nDoes residual refinement beat its base at high IoU? Differences in percentage points, paired by "
             "seed (positive = refinement better).\n\n" + refinement_table(results, args.task))
    runs = [{k: r[k] for k in ("decoder", "seed", "config", "postprocess", "train", "evaluations", "total_seconds")}
            for r in results]
    write_results(out.with_suffix(".json"), {"task": args.task, "settings": settings, "constant_baseline": baseline,
                                             "runs": runs}, table)


# ---- runtime estimate ------------------------------------------------------------------------------------------
def estimate(args, probe_steps: int = 10) -> float:
    """Projected seconds of the sweep: per decoder, one short run (probe_steps training steps, start-up included,
    so an over-estimate) scaled to the sizing's steps, plus the evaluation of all its variants (batch-1 latency
    included) on 32 test examples scaled to test_size, plus building the data once."""
    cfg0 = make_config(args, args.decoders[0], args.seeds[0])
    start = time.perf_counter()
    train, test = build_datasets(cfg0)
    data_s = time.perf_counter() - start
    total = data_s
    print(f"data ({cfg0.train_size} + {cfg0.test_size} examples): {data_s:.1f} s, once per sweep")
    for spec in args.decoders:
        cfg = dataclasses.replace(make_config(args, spec, args.seeds[0]), steps=probe_steps, log_every=probe_steps)
        scratch = Path(tempfile.mkdtemp(prefix="driftkit-grounding-estimate-"))
        t = time.perf_counter()
        result = run_experiment(cfg, scratch, datasets=(train, Subset(test, 32)))
        step_s = result["train"]["seconds"] / probe_steps
        eval_s = (time.perf_counter() - t - result["train"]["seconds"]) * cfg0.test_size / 32
        run_s = step_s * cfg0.steps + eval_s
        total += run_s * len(args.seeds)
        print(f"{spec}: {step_s:.3f} s/step, eval {eval_s:.1f} s -> {run_s / 60:.1f} min per run")
    print(f"projected sweep ({len(args.decoders)} decoders x {len(args.seeds)} seeds, {cfg0.steps} steps): "
          f"{total / 60:.0f} min with {torch.get_num_threads()} torch thread(s)")
    return total


class Subset:
    """The first n examples of a grounding dataset (for timing the evaluation)."""

    def __init__(self, data, n: int):
        self.data, self.n = data, min(n, len(data))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.data[i]

    def targets(self):
        return self.data.targets()[: self.n]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.estimate:
        estimate(args)
        return
    suffix = ("-" + "-".join(args.kinds) if args.kinds else "") + ("-large" if args.large else "-smoke" if args.smoke
                                                                   else "")
    out = args.out or RESULTS / f"grounding-{args.task}{suffix}"
    results = sweep(args, out)
    print(f"wrote {out.with_suffix('.md')} ({len(results)} runs)")


if __name__ == "__main__":
    main()
