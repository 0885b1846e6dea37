"""Meta-World MT10 (state-based): every decoder trained on the same scripted-expert demonstrations and
evaluated closed loop, over several training seeds.

    python benchmarks/metaworld_mt10.py                 # collect once, train + evaluate every run, summarise
    python benchmarks/metaworld_mt10.py --summary-only  # rebuild summary.md/.json/.png from the run files

Each finished run (one configuration, one training seed) is written to
benchmarks/results/metaworld-mt10/<config>__seed<k>.json as soon as its evaluation ends; a rerun skips the
runs whose file exists, so an interrupted sweep resumes where it stopped. Demonstrations and checkpoints live
under --work-dir (runs/ is git-ignored); configurations that share a checkpoint (flow 10 vs 1 step, drift vs
drift + KeyStone) train it once. The summary (summary.md, summary.json, success_vs_latency.png) is rebuilt
from all run files at the end, and lists the configurations that have not run yet.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common import machine

RESULTS = Path("benchmarks/results/metaworld-mt10")


@dataclass(frozen=True)
class Run:
    """A training configuration (decoder + options) and how its checkpoint is evaluated."""

    train: str
    """Key of the trained checkpoint (shared by configurations that evaluate one checkpoint two ways)."""
    decoder: str
    options: dict = field(default_factory=dict)
    """decoder_options set with --set model.decoder_options.<key>=<value>."""
    eval: dict = field(default_factory=dict)
    """Extra evaluation settings: steps, num_samples, select."""
    note: str = ""


CONFIGS: dict[str, Run] = {
    "flow-10": Run("flow", "flow", {"steps": 10}, note="flow matching, 10 Euler steps"),
    "flow-1": Run("flow", "flow", {"steps": 10}, {"steps": 1}, note="the flow-10 checkpoint run with 1 Euler step"),
    "drift": Run("drift", "drift", {"grouping": "action_dim"}, note="one-step drifting generator, action_dim groups"),
    "drift+keystone8": Run("drift", "drift", {"grouping": "action_dim"}, {"num_samples": 8, "select": "keystone"},
                           note="the drift checkpoint, K=8 samples, KeyStone selection"),
    "regression": Run("regression", "regression", note="MLP head, L1; deterministic"),
    "residual_flow": Run("residual_flow", "residual_flow", note="regression base + 10-step flow refiner"),
    "residual_drift": Run("residual_drift", "residual_drift", note="regression base + one-step drifting refiner"),
    "tokens": Run("tokens", "tokens", note="256 uniform bins per action value, argmax"),
    "drift-chunk": Run("drift-chunk", "drift", {"grouping": "chunk"}, note="drift, whole chunk as one group"),
    "drift-timestep": Run("drift-timestep", "drift", {"grouping": "timestep"}, note="drift, one group per step"),
    "discrete_flow": Run("discrete_flow", "discrete_flow", note="discrete flow matching over 256 bins"),
}
MULTI_SEED = ("flow-10", "flow-1", "drift", "drift+keystone8")
# The questions the summary answers: (config a, config b, question).
QUESTIONS = (
    ("drift", "flow-10", "Does one-step drift match 10-step flow?"),
    ("flow-1", "flow-10", "Does truncating flow to 1 step lose success?"),
    ("residual_flow", "regression", "Does residual_flow beat its base predictor (regression)?"),
    ("residual_drift", "regression", "Does residual_drift beat its base predictor (regression)?"),
    ("drift+keystone8", "drift", "Does KeyStone (K=8) help drift?"),
    ("flow-10", "regression", "Does 10-step flow beat plain regression on this data?"),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS), help="Comma-separated configurations to run.")
    p.add_argument("--seeds", default="0,1,2", help=f"Training seeds of {', '.join(MULTI_SEED)}.")
    p.add_argument("--other-seeds", default="0", help="Training seeds of the other configurations.")
    p.add_argument("--episodes-per-task", type=int, default=20, help="Demonstrations kept per task.")
    p.add_argument("--noise-std", type=float, default=0.1)
    p.add_argument("--alt-path-prob", type=float, default=0.5)
    p.add_argument("--collect-max-steps", type=int, default=500)
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=128, help="Width of the encoder and of every decoder net.")
    p.add_argument("--eval-episodes", type=int, default=10, help="Episodes per task and evaluation seed.")
    p.add_argument("--eval-seeds", default="0,1")
    p.add_argument("--eval-max-steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", default="runs/metaworld-mt10", help="Demonstrations and checkpoints.")
    p.add_argument("--results", default=str(RESULTS), help="Run files and the summary.")
    p.add_argument("--summary-only", action="store_true", help="Only rebuild the summary from the run files.")
    return p.parse_args(argv)


def plan(args) -> list[tuple[str, int]]:
    """(config, training seed) in run order: the first seed of every configuration first (those the summary's
    questions need at the front), so a sweep cut short still holds one run of each; then the extra seeds."""
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}; known: {list(CONFIGS)}")
    seeds = {c: _ints(args.seeds if c in MULTI_SEED else args.other_seeds) for c in configs}
    order = sorted({s for v in seeds.values() for s in v})
    return [(c, s) for s in order for c in configs if s in seeds[c]]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def run_path(results: Path, config: str, seed: int) -> Path:
    return results / f"{config}__seed{seed}.json"


# ---- the three stages: collect, train, evaluate --------------------------------------------------------
def collect_command(args, data: Path) -> list[str]:
    return ["driftkit", "collect", "--tasks", "mt10", "--episodes", str(args.episodes_per_task),
            "--noise-std", str(args.noise_std), "--alt-path-prob", str(args.alt_path_prob),
            "--max-steps", str(args.collect_max_steps), "--out", str(data)]


def ensure_data(args, data: Path) -> None:
    """Collect the MT10 demonstrations unless a complete dataset is already there."""
    from driftkit.envs.collect import CollectConfig, collect

    if (data / "meta" / "driftkit_collection.json").is_file():  # written last: the collection completed
        return
    print("$", shlex.join(collect_command(args, data)), flush=True)
    cfg = CollectConfig(tasks=["mt10"], episodes=args.episodes_per_task, noise_std=args.noise_std,
                        alt_path_prob=args.alt_path_prob, max_steps=args.collect_max_steps)
    collect(cfg, data, overwrite=True, progress=False)


def train_overrides(args, run: Run, seed: int, data: Path, out: Path) -> list[str]:
    h = args.hidden
    sets = [f"decoder={run.decoder}", f"data.root={data}", "model.num_tasks=10", f"model.hidden_dim={h}",
            f"model.cond_dim={h}", f"model.decoder_options.hidden_dim={h}",
            *(f"model.decoder_options.{k}={v}" for k, v in run.options.items()),
            f"steps={args.train_steps}", f"warmup={min(500, args.train_steps // 10)}",
            f"batch_size={args.batch_size}", f"lr={args.lr}", f"seed={seed}", f"output_dir={out}",
            f"checkpoint_every={args.train_steps}", "keep_checkpoints=1", "log_every=100",
            "progress=false", "tensorboard=false"]
    return sets


def train_checkpoint(args, run: Run, seed: int, data: Path) -> tuple[Path, float, list[str]]:
    """The run's final checkpoint, training (or resuming) it first when needed; returns the seconds spent."""
    from accelerate.state import AcceleratorState

    from driftkit.train.checkpoint import latest_checkpoint, read_trainer_state
    from driftkit.train.config import make_config
    from driftkit.train.trainer import train

    out = Path(args.work_dir) / "train" / f"{run.train}__seed{seed}"
    sets = train_overrides(args, run, seed, data, out)
    command = ["driftkit", "train", "--preset", "metaworld-state", *[a for s in sets for a in ("--set", s)]]
    found = latest_checkpoint(out)
    if found is not None and read_trainer_state(found).step == args.train_steps:
        return found, 0.0, command
    if found is not None:
        sets.append("resume=latest")
    print("$", shlex.join(command), flush=True)
    start = time.perf_counter()
    try:
        result = train(make_config("metaworld-state", sets))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # the next run builds its own Accelerator
    return result.checkpoint, time.perf_counter() - start, command


def evaluate_checkpoint(args, config: str, run: Run, checkpoint: Path, data: Path) -> tuple[dict, float, list[str]]:
    from driftkit.data import task_index_map
    from driftkit.eval import EvalConfig, evaluate
    from driftkit.policy import load_policy

    cfg = EvalConfig(tasks=["mt10"], episodes=args.eval_episodes, seeds=_ints(args.eval_seeds),
                     max_steps=args.eval_max_steps, **run.eval)
    command = ["driftkit", "eval", "--checkpoint", str(checkpoint), "--tasks", "mt10", "--episodes",
               str(cfg.episodes), "--seeds", args.eval_seeds, "--max-steps", str(cfg.max_steps),
               *[a for k, v in run.eval.items() for a in (f"--{k.replace('_', '-')}", str(v))],
               "--out", str(Path(args.work_dir) / "eval" / config)]
    print("$", shlex.join(command), flush=True)
    start = time.perf_counter()
    results = evaluate({config: load_policy(checkpoint)}, cfg, task_maps={config: task_index_map(data)},
                       progress=False)
    return results, time.perf_counter() - start, command


def run_one(args, config: str, seed: int, data: Path, results_dir: Path, command: str) -> Path:
    run = CONFIGS[config]
    checkpoint, train_s, train_cmd = train_checkpoint(args, run, seed, data)
    results, eval_s, eval_cmd = evaluate_checkpoint(args, config, run, checkpoint, data)
    episodes = [{k: e[k] for k in ("task", "seed", "episode", "success", "length")} for e in results["episodes"]]
    record = {
        "config": config, "training_seed": seed, "sweep_command": command, "decoder": run.decoder,
        "decoder_options": run.options,
        "eval_options": run.eval, "note": run.note, "checkpoint": str(checkpoint),
        "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
        "commands": {"collect": shlex.join(collect_command(args, data)), "train": shlex.join(train_cmd),
                     "eval": shlex.join(eval_cmd)},
        "settings": {k: v for k, v in vars(args).items() if k not in ("configs", "summary_only")},
        "machine": machine(), "eval_config": results["config"], "summary": results["summary"],
        "seed_points": results["seed_points"], "episodes": episodes,
    }
    path = run_path(results_dir, config, seed)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)  # a run file exists only once complete: that is what resuming relies on
    return path


# ---- the summary --------------------------------------------------------------------------------------
@dataclass
class ConfigStats:
    config: str
    seeds: list[int]
    rates: list[float]
    """Success rate over all MT10 episodes, one per training seed."""
    n_episodes: int
    """Episodes pooled over the training seeds."""
    mean: float
    seed_std: float | None
    binomial_se: float
    se: float
    """Standard error of `mean` used for comparisons: the larger of the pooled binomial SE and
    seed_std / sqrt(#seeds) (the second also counts training-seed variance)."""
    mean_length: float
    nfe: int | None
    chunk_ms: float
    per_task: dict[str, float]
    train_seconds: float
    eval_seconds: float


def config_stats(config: str, records: list[dict]) -> ConfigStats:
    rows = [next(r for r in rec["summary"] if r["group"] == "all") for rec in records]
    rates = [r["success_rate"] for r in rows]
    n = sum(r["n_episodes"] for r in rows)
    pooled = sum(r["success_rate"] * r["n_episodes"] for r in rows) / n
    seed_std = statistics.stdev(rates) if len(rates) > 1 else None
    binom = math.sqrt(pooled * (1 - pooled) / n)
    se = max(binom, seed_std / math.sqrt(len(rates))) if seed_std is not None else binom
    tasks = [r["group"] for r in records[0]["summary"] if r["group"] not in ("all", "easy", "medium", "hard",
                                                                              "very_hard")]
    per_task = {t: statistics.mean(next(r["success_rate"] for r in rec["summary"] if r["group"] == t)
                                   for rec in records) for t in tasks}
    return ConfigStats(
        config=config, seeds=[rec["training_seed"] for rec in records], rates=rates, n_episodes=n,
        mean=statistics.mean(rates), seed_std=seed_std, binomial_se=binom, se=se,
        mean_length=statistics.mean(r["mean_length"] for r in rows), nfe=rows[0]["nfe"],
        chunk_ms=statistics.median(r["chunk_ms_median"] for r in rows), per_task=per_task,
        train_seconds=sum(rec["train_seconds"] for rec in records),
        eval_seconds=sum(rec["eval_seconds"] for rec in records))


def answer(stats: dict[str, ConfigStats], name_a: str, name_b: str, question: str) -> str:
    """One plain sentence: the two rates, their difference, and whether it exceeds 2 standard errors."""
    a, b = stats.get(name_a), stats.get(name_b)
    if a is None or b is None:
        missing = [n for n in (name_a, name_b) if n not in stats]
        return f"**{question}** Not answered: {', '.join(missing)} has not run yet."
    diff = a.mean - b.mean
    noise = 2 * math.sqrt(a.se**2 + b.se**2)
    verdict = ("the difference is inside the noise (|diff| <= 2 SE of the difference)" if abs(diff) <= noise
               else f"{a.config} is {'better' if diff > 0 else 'worse'} by more than the noise")
    return (f"**{question}** {a.config} {100 * a.mean:.1f}% ({len(a.rates)} seed(s)) vs {b.config} "
            f"{100 * b.mean:.1f}% ({len(b.rates)} seed(s)): difference {100 * diff:+.1f} points, noise floor "
            f"(2 SE) ±{100 * noise:.1f}; {verdict}.")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def summary_markdown(stats: dict[str, ConfigStats], missing: list[str], header: dict) -> str:
    lines = [f"# Meta-World MT10 (state-based) — decoder comparison\n",
             f"Command: `{header['command']}`\n", f"Machine: `{json.dumps(header['machine'])}`\n",
             f"Setup: {header['setup']}\n", "## Answers\n"]
    lines += [f"- {answer(stats, a, b, q)}" for a, b, q in QUESTIONS]
    lines += ["", "## All configurations (success over all 10 tasks)\n",
              "| configuration | training seeds | episodes | success % (mean over seeds) | ± seed std | "
              "± binomial SE | per-seed % | mean length | NFE/chunk | ms/chunk (median) |",
              "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for s in stats.values():
        per_seed = ", ".join(f"{100 * r:.0f}" for r in s.rates)
        lines.append(f"| {s.config} | {len(s.seeds)} | {s.n_episodes} | {_pct(s.mean)} | {_pct(s.seed_std)} | "
                     f"{_pct(s.binomial_se)} | {per_seed} | {s.mean_length:.0f} | {s.nfe if s.nfe else '-'} | "
                     f"{s.chunk_ms:.2f} |")
    if missing:
        lines += ["", f"Not run yet (no result file): {', '.join(missing)}."]
    if stats:
        tasks = list(next(iter(stats.values())).per_task)
        lines += ["", "## Success % per task (mean over training seeds)\n",
                  "| configuration | " + " | ".join(t.removesuffix("-v3") for t in tasks) + " |",
                  "|---|" + "---:|" * len(tasks)]
        lines += [f"| {s.config} | " + " | ".join(f"{100 * s.per_task[t]:.0f}" for t in tasks) + " |"
                  for s in stats.values()]
    lines += ["", "Success %: mean over training seeds of the success rate over all MT10 episodes. Seed std: "
              "sample std across training seeds. Binomial SE: sqrt(p(1-p)/n) over the pooled episodes. The noise "
              "floor of a comparison is 2 x sqrt(SE_a^2 + SE_b^2), with SE the larger of the binomial SE and "
              "seed std / sqrt(#seeds). ms/chunk: median wall time of one predict() on the CPU (batch 1)."]
    return "\n".join(lines) + "\n"


def write_summary(args, results_dir: Path, command: str) -> Path:
    records: dict[str, list[dict]] = {}
    for path in sorted(results_dir.glob("*__seed*.json")):
        rec = json.loads(path.read_text())
        records.setdefault(rec["config"], []).append(rec)
    stats = {c: config_stats(c, sorted(records[c], key=lambda r: r["training_seed"])) for c in CONFIGS
             if c in records}
    missing = [f"{c} (seed {s})" for c, s in plan(args) if not run_path(results_dir, c, s).exists()]
    # Describe the settings the runs were made with (a --summary-only call may not repeat them).
    done = [rec for recs in records.values() for rec in recs]
    if done and "settings" in done[0]:
        args = argparse.Namespace(**{**vars(args), **done[0]["settings"]})
    setup = (f"{args.episodes_per_task} demonstrations per task (Gaussian action noise std {args.noise_std}, "
             f"left/right detour probability {args.alt_path_prob}); {args.train_steps} training steps, batch "
             f"{args.batch_size}, lr {args.lr}, width {args.hidden}, horizon 16, 8 actions executed per chunk; "
             f"evaluation: {args.eval_episodes} episodes per task x evaluation seeds {args.eval_seeds}, at most "
             f"{args.eval_max_steps} steps; torch threads {args.threads}.")
    made_by = list(dict.fromkeys(rec.get("sweep_command", command) for rec in done))
    header = {"command": " && ".join(made_by or [command]), "machine": machine(), "setup": setup}
    (results_dir / "summary.md").write_text(summary_markdown(stats, missing, header))
    payload = {**header, "configs": {c: vars(s) for c, s in stats.items()}, "not_run": missing,
               "answers": [answer(stats, a, b, q) for a, b, q in QUESTIONS]}
    (results_dir / "summary.json").write_text(json.dumps(payload, indent=2))
    plot(stats, records, results_dir / "success_vs_latency.png")
    return results_dir / "summary.md"


def plot(stats: dict[str, ConfigStats], records: dict[str, list[dict]], path: Path) -> None:
    """Success against median ms per chunk, one point per (configuration, training seed); eleven
    configurations need more distinct colours than driftkit.eval's tab10 plot has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 4.5))
    for i, config in enumerate(stats):
        rows = [next(r for r in rec["summary"] if r["group"] == "all") for rec in records[config]]
        ax.scatter([r["chunk_ms_median"] for r in rows], [100 * r["success_rate"] for r in rows], label=config,
                   color=plt.cm.tab20(i % 20), marker="os^Dv<>p*hX"[i % 11], s=40, alpha=0.9)
    ax.set_xscale("log")
    ax.set_xlabel("median ms per action chunk (CPU, batch 1)")
    ax.set_ylabel("MT10 success rate (%)")
    ax.set_title("MT10: one point per configuration and training seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/metaworld_mt10.py", *(sys.argv[1:] if argv is None else argv)])
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        data = (Path(args.work_dir) / "data").resolve()
        ensure_data(args, data)
        for config, seed in plan(args):
            if run_path(results_dir, config, seed).exists():
                continue
            start = time.perf_counter()
            try:
                path = run_one(args, config, seed, data, results_dir, command)
            except Exception:  # one broken configuration should not stop the sweep; a rerun retries it
                traceback.print_exc()
                print(f"[{time.strftime('%H:%M:%S')}] {config} seed {seed}: FAILED (no run file written)", flush=True)
                continue
            rate = next(r for r in json.loads(path.read_text())["summary"] if r["group"] == "all")["success_rate"]
            print(f"[{time.strftime('%H:%M:%S')}] {config} seed {seed}: success {100 * rate:.1f}% "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            write_summary(args, results_dir, command)
    print("wrote", write_summary(args, results_dir, command), flush=True)


if __name__ == "__main__":
    main()
