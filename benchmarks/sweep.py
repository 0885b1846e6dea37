"""The Meta-World decoder sweep shared by metaworld_mt10.py (state) and metaworld_vla.py (VLA): collect once,
train and evaluate every (configuration, training seed), one result file per run, a summary rebuilt from them.

Each finished run is written to <results>/<config>__seed<k>.json as soon as its evaluation ends; a rerun skips
the runs whose file exists, so an interrupted sweep resumes where it stopped (a half-trained checkpoint resumes
too). Configurations that share a checkpoint (flow 10 vs 1 step, drift vs drift + KeyStone, a residual decoder
vs its own base) train it once. The summary (summary.md, summary.json, success_vs_latency.png) lists what has
not run yet.
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from common import machine
from driftkit.atomic import write_text_atomic


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
    preset: str | None = None
    """Training preset when it is not the sweep's own (e.g. metaworld-fast for the FAST rows)."""
    sets: tuple[str, ...] = ()
    """Further --set overrides of this configuration's training (e.g. the query tokens lm_tokens reads)."""
    train_scale: int = 1
    """Training steps as a multiple of the sweep's --train-steps (a longer-training diagnostic)."""

    def steps(self, args) -> int:
        return self.train_scale * args.train_steps


@dataclass(frozen=True)
class Bench:
    """What differs between the sweeps: their configurations, questions, task groups and the three stages."""

    title: str
    script: str
    preset: str
    configs: dict[str, Run]
    multi_seed: tuple[str, ...]
    questions: tuple[tuple[str, ...], ...]
    """(config a, config b, question) over all tasks, or (..., group) over one task group."""
    groups: dict[str, tuple[str, ...]]
    """Task groups reported beside "all" (e.g. multimodal, precision, easy)."""
    collect: Callable  # (args) -> CollectConfig
    train_sets: Callable  # (args, run, seed, data, out) -> list of --set overrides
    eval_config: Callable  # (args, run) -> EvalConfig
    setup: Callable  # (args) -> one paragraph describing the settings
    seeds_of: Callable | None = None
    """(args, config) -> its training seeds as "0,1,2"; default: args.seeds for multi_seed, else args.other_seeds."""


def ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def plan(bench: Bench, args) -> list[tuple[str, int]]:
    """(config, training seed) in run order: the first seed of every configuration first, so a sweep cut short
    still holds one run of each; then the extra seeds."""
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in bench.configs]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}; known: {list(bench.configs)}")
    default = lambda a, c: a.seeds if c in bench.multi_seed else a.other_seeds  # noqa: E731
    seeds = {c: ints((bench.seeds_of or default)(args, c)) for c in configs}
    order = sorted({s for v in seeds.values() for s in v})
    return [(c, s) for s in order for c in configs if s in seeds[c]]


def run_path(results: Path, config: str, seed: int) -> Path:
    return results / f"{config}__seed{seed}.json"


# ---- the three stages: collect, train, evaluate --------------------------------------------------------
def collect_command(cfg) -> list[str]:
    cmd = ["driftkit", "collect", "--tasks", ",".join(cfg.tasks), "--episodes", str(cfg.episodes),
           "--noise-std", str(cfg.noise_std), "--alt-path-prob", str(cfg.alt_path_prob),
           "--max-steps", str(cfg.max_steps)]
    return cmd + (["--image", "--image-size", str(cfg.image_size)] if cfg.image else [])


def ensure_data(bench: Bench, args, data: Path) -> None:
    """Collect the demonstrations unless a complete dataset is already there."""
    from driftkit.envs.collect import collect

    if (data / "meta" / "driftkit_collection.json").is_file():  # written last: the collection completed
        return
    cfg = bench.collect(args)
    print("$", shlex.join(collect_command(cfg) + ["--out", str(data)]), flush=True)
    collect(cfg, data, overwrite=True, progress=False)


def train_checkpoint(bench: Bench, args, run: Run, seed: int, data: Path) -> tuple[Path, float, list[str]]:
    """The run's final checkpoint, training (or resuming) it first when needed; returns the seconds spent."""
    from accelerate.state import AcceleratorState

    from driftkit.train.checkpoint import latest_checkpoint, read_trainer_state
    from driftkit.train.config import make_config
    from driftkit.train.trainer import train

    out = Path(args.work_dir) / "train" / f"{run.train}__seed{seed}"
    sets = bench.train_sets(args, run, seed, data, out)
    preset = run.preset or bench.preset
    command = ["driftkit", "train", "--preset", preset, *[a for s in sets for a in ("--set", s)]]
    found = latest_checkpoint(out)
    if found is not None and read_trainer_state(found).step == run.steps(args):
        return found, 0.0, command
    if found is not None:
        sets.append("resume=latest")
    print("$", shlex.join(command), flush=True)
    start = time.perf_counter()
    try:
        result = train(make_config(preset, sets))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # the next run builds its own Accelerator
    return result.checkpoint, time.perf_counter() - start, command


def evaluate_checkpoint(bench: Bench, args, config: str, run: Run, checkpoint: Path, data: Path
                        ) -> tuple[dict, float, list[str]]:
    from driftkit.data import task_index_map
    from driftkit.eval import evaluate

    cfg = bench.eval_config(args, run)
    workers = getattr(args, "eval_workers", 1)
    command = ["driftkit", "eval", "--checkpoint", str(checkpoint), "--tasks", ",".join(cfg.tasks),
               "--episodes", str(cfg.episodes), "--seeds", ",".join(map(str, cfg.seeds)),
               "--max-steps", str(cfg.max_steps),
               *[a for k, v in run.eval.items() for a in (f"--{k.replace('_', '-')}", str(v))],
               *(["--image"] if cfg.image else []), *(["--workers", str(workers)] if workers > 1 else []),
               "--out", str(Path(args.work_dir) / "eval" / config)]
    print("$", shlex.join(command), flush=True)
    start = time.perf_counter()
    results = evaluate({config: str(checkpoint)}, cfg, task_maps={config: task_index_map(data)},
                       progress=False, workers=workers)
    return results, time.perf_counter() - start, command


def run_one(bench: Bench, args, config: str, seed: int, data: Path, results_dir: Path, command: str) -> Path:
    run = bench.configs[config]
    checkpoint, train_s, train_cmd = train_checkpoint(bench, args, run, seed, data)
    results, eval_s, eval_cmd = evaluate_checkpoint(bench, args, config, run, checkpoint, data)
    episodes = [{k: e[k] for k in ("task", "seed", "episode", "success", "length")} for e in results["episodes"]]
    record = {
        "config": config, "training_seed": seed, "sweep_command": command, "decoder": run.decoder,
        "decoder_options": run.options, "preset": run.preset or bench.preset,
        "eval_options": run.eval, "note": run.note, "checkpoint": str(checkpoint),
        "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
        "commands": {"collect": shlex.join(collect_command(bench.collect(args)) + ["--out", str(data)]),
                     "train": shlex.join(train_cmd), "eval": shlex.join(eval_cmd)},
        "settings": {k: v for k, v in vars(args).items() if k not in ("configs", "summary_only")},
        "machine": machine(), "eval_config": results["config"], "summary": results["summary"],
        "seed_points": results["seed_points"], "episodes": episodes,
    }
    path = run_path(results_dir, config, seed)
    write_text_atomic(path, json.dumps(record, indent=2))  # a run file exists only once complete: resuming relies on it
    return path


# ---- the summary --------------------------------------------------------------------------------------
@dataclass
class ConfigStats:
    config: str
    seeds: list[int]
    rates: list[float]
    """Success rate over all episodes, one per training seed."""
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
    per_group: dict[str, float]
    """Success per task group (mean over training seeds of the rate over the group's episodes)."""
    per_group_se: dict[str, float]
    """Standard error of each per_group rate, taken as `se` is."""
    eval_seed_std: float | None
    """Std across evaluation seeds of the success rate (pooled over training seeds): the evaluation-seed floor."""
    train_seconds: float
    eval_seconds: float


def _rate(episodes: list[dict]) -> float:
    return sum(e["success"] for e in episodes) / len(episodes) if episodes else float("nan")


def _standard_error(per_seed: list[list[dict]]) -> tuple[float, float, float | None]:
    """Episodes of each training seed -> (binomial SE of the pooled rate, the SE used for comparisons: the
    larger of that and seed std / sqrt(#seeds), the seed std or None with one seed)."""
    pooled = [e for episodes in per_seed for e in episodes]
    p = _rate(pooled)
    binom = math.sqrt(p * (1 - p) / len(pooled))
    seed_std = statistics.stdev(_rate(episodes) for episodes in per_seed) if len(per_seed) > 1 else None
    return binom, (max(binom, seed_std / math.sqrt(len(per_seed))) if seed_std is not None else binom), seed_std


def config_stats(bench: Bench, config: str, records: list[dict]) -> ConfigStats:
    rows = [next(r for r in rec["summary"] if r["group"] == "all") for rec in records]
    rates = [_rate(rec["episodes"]) for rec in records]
    everything = [e for rec in records for e in rec["episodes"]]
    n = len(everything)
    binom, se, seed_std = _standard_error([rec["episodes"] for rec in records])
    tasks = list(dict.fromkeys(e["task"] for e in records[0]["episodes"]))
    per_task = {t: statistics.mean(_rate([e for e in rec["episodes"] if e["task"] == t]) for rec in records)
                for t in tasks}
    in_group = {g: [[e for e in rec["episodes"] if e["task"] in members] for rec in records]
                for g, members in bench.groups.items() if any(t in members for t in tasks)}
    per_group = {g: statistics.mean(_rate(episodes) for episodes in per_seed) for g, per_seed in in_group.items()}
    per_group_se = {g: _standard_error(per_seed)[1] for g, per_seed in in_group.items()}
    eval_seeds = sorted({e["seed"] for e in everything})
    by_eval = [_rate([e for e in everything if e["seed"] == s]) for s in eval_seeds]
    return ConfigStats(
        config=config, seeds=[rec["training_seed"] for rec in records], rates=rates, n_episodes=n,
        mean=statistics.mean(rates), seed_std=seed_std, binomial_se=binom, se=se,
        mean_length=statistics.mean(r["mean_length"] for r in rows), nfe=rows[0]["nfe"],
        chunk_ms=statistics.median(r["chunk_ms_median"] for r in rows), per_task=per_task, per_group=per_group,
        per_group_se=per_group_se,
        eval_seed_std=statistics.stdev(by_eval) if len(by_eval) > 1 else None,
        train_seconds=sum(rec["train_seconds"] for rec in records),
        eval_seconds=sum(rec["eval_seconds"] for rec in records))


def _measures(group: str) -> tuple[Callable, Callable]:
    """(rate, SE) of a configuration over all tasks, or over one task group."""
    if group == "all":
        return (lambda s: s.mean), (lambda s: s.se)
    return (lambda s: s.per_group[group]), (lambda s: s.per_group_se[group])


def answer(stats: dict[str, ConfigStats], name_a: str, name_b: str, question: str, group: str = "all") -> str:
    """One plain sentence: the two rates (over all tasks, or over one task group), their difference, and whether
    it exceeds 2 standard errors."""
    a, b = stats.get(name_a), stats.get(name_b)
    if a is None or b is None:
        missing = [n for n in (name_a, name_b) if n not in stats]
        return f"**{question}** Not answered: {', '.join(missing)} has not run yet."
    rate, se = _measures(group)
    diff = rate(a) - rate(b)
    noise = 2 * math.sqrt(se(a) ** 2 + se(b) ** 2)
    verdict = ("the difference is inside the noise (|diff| <= 2 SE of the difference)" if abs(diff) <= noise
               else f"{a.config} is {'better' if diff > 0 else 'worse'} by more than the noise")
    where = "" if group == "all" else f" on the {group} group"
    return (f"**{question}** {a.config} {100 * rate(a):.1f}% ({len(a.rates)} seed(s)) vs {b.config} "
            f"{100 * rate(b):.1f}% ({len(b.rates)} seed(s)){where}: difference {100 * diff:+.1f} points, noise "
            f"floor (2 SE) ±{100 * noise:.1f}; {verdict}.")


def _tied(stats: list[ConfigStats], rate: Callable, se: Callable) -> tuple[ConfigStats, list[ConfigStats]]:
    """The configuration with the highest rate, and every configuration within 2 SE of the difference of it."""
    best = max(stats, key=rate)
    return best, [s for s in stats if abs(rate(best) - rate(s)) <= 2 * math.sqrt(se(best) ** 2 + se(s) ** 2)]


def _dominates(a: ConfigStats, b: ConfigStats) -> bool:
    return a.mean >= b.mean and a.chunk_ms <= b.chunk_ms and (a.mean > b.mean or a.chunk_ms < b.chunk_ms)


def leaders_markdown(stats: dict[str, ConfigStats], groups: list[str]) -> list[str]:
    """Which configuration is best per task group, which are inside its noise, and which is best per
    millisecond: the fastest inside the noise of the best, and the success-vs-latency Pareto front."""
    rows = list(stats.values())
    lines = ["", "## Best per task group and per millisecond\n",
             "| group | best (success %) | inside its noise (2 SE of the difference) | fastest inside the noise |",
             "|---|---|---|---|"]
    for group in ["all", *groups]:
        have = [s for s in rows if group == "all" or group in s.per_group]
        rate, se = _measures(group)
        best, tied = _tied(have, rate, se)
        fastest = min(tied, key=lambda s: s.chunk_ms)
        lines.append(f"| {group} | {best.config} ({_pct(rate(best))}) | "
                     f"{', '.join(s.config for s in tied if s is not best) or '-'} | "
                     f"{fastest.config} ({fastest.chunk_ms:.1f} ms) |")
    front = sorted((s for s in rows if not any(_dominates(o, s) for o in rows)), key=lambda s: s.chunk_ms)
    lines += ["", "Pareto front over all tasks (no other configuration is at least as successful and at most as "
              "slow, and better in one): " + ", ".join(f"{s.config} ({_pct(s.mean)} %, {s.chunk_ms:.1f} ms)" for s in front) + "."]
    return lines


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def headline_markdown(stats: dict[str, ConfigStats], groups: list[str]) -> list[str]:
    """The compact table the README and docs quote: per-seed rates, the pooled rate ± the SE used for
    comparisons, success per task group, NFE and ms per chunk."""
    lines = ["", "## Headline table (as quoted in the README and docs)\n",
             "| configuration (training seeds: % each) | success % ± SE | " + " | ".join(groups)
             + " | NFE | ms/chunk |", "|---|---|" + "---|" * len(groups) + "---|---|"]
    for s in stats.values():
        seeds = f"{len(s.rates)}: " + ", ".join(f"{100 * r:.0f}" for r in s.rates) if len(s.rates) > 1 else "1"
        per_group = " | ".join(f"{100 * s.per_group[g]:.0f}" if g in s.per_group else "-" for g in groups)
        lines.append(f"| {s.config} ({seeds}) | {_pct(s.mean)} ± {_pct(s.se)} | {per_group} | "
                     f"{s.nfe if s.nfe else '-'} | {s.chunk_ms:.1f} |")
    return lines


def _table(title: str, names: list[str], stats: dict[str, ConfigStats], values: Callable) -> list[str]:
    short = [n.removesuffix("-v3") for n in names]
    return ["", f"## {title}\n", "| configuration | " + " | ".join(short) + " |", "|---|" + "---:|" * len(names),
            *[f"| {s.config} | " + " | ".join(_pct(values(s).get(n)) for n in names) + " |" for s in stats.values()]]


def summary_markdown(bench: Bench, stats: dict[str, ConfigStats], missing: list[str], header: dict,
                     extra: str = "") -> str:
    lines = [f"# {bench.title}\n", f"Command: `{header['command']}`\n",
             f"Machine: `{json.dumps(header['machine'])}`\n", f"Setup: {header['setup']}\n", "## Answers\n"]
    lines += [f"- {answer(stats, *question)}" for question in bench.questions]
    lines += ["", "## All configurations (success over all tasks)\n",
              "| configuration | training seeds | episodes | success % (mean over seeds) | ± seed std | "
              "± eval-seed std | ± binomial SE | per-seed % | mean length | NFE/chunk | ms/chunk (median) |",
              "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for s in stats.values():
        per_seed = ", ".join(f"{100 * r:.0f}" for r in s.rates)
        lines.append(f"| {s.config} | {len(s.seeds)} | {s.n_episodes} | {_pct(s.mean)} | {_pct(s.seed_std)} | "
                     f"{_pct(s.eval_seed_std)} | {_pct(s.binomial_se)} | {per_seed} | {s.mean_length:.0f} | "
                     f"{s.nfe if s.nfe else '-'} | {s.chunk_ms:.2f} |")
    if missing:
        lines += ["", f"Not run yet (no result file): {', '.join(missing)}."]
    if stats:
        groups = [g for g in bench.groups if any(g in s.per_group for s in stats.values())]
        if groups:
            lines += _table("Success % per task group (mean over training seeds)", groups, stats,
                            lambda s: s.per_group)
        lines += _table("Success % per task (mean over training seeds)", list(next(iter(stats.values())).per_task),
                        stats, lambda s: s.per_task)
        lines += leaders_markdown(stats, groups)
        lines += headline_markdown(stats, groups)
    lines += ["", "Success %: mean over training seeds of the success rate over all episodes. Seed std: sample std "
              "across training seeds. Eval-seed std: sample std across evaluation seeds (episodes pooled over "
              "training seeds). Binomial SE: sqrt(p(1-p)/n) over the pooled episodes. The noise floor of a "
              "comparison is 2 x sqrt(SE_a^2 + SE_b^2), with SE the larger of the binomial SE and seed std / "
              "sqrt(#seeds). ms/chunk: median wall time of one predict() on the CPU (batch 1), measured inside "
              "the closed loop."]
    return "\n".join(lines) + "\n" + extra


def load_records(results_dir: Path) -> dict[str, list[dict]]:
    records: dict[str, list[dict]] = {}
    for path in sorted(results_dir.glob("*__seed*.json")):
        rec = json.loads(path.read_text())
        records.setdefault(rec["config"], []).append(rec)
    return records


def write_summary(bench: Bench, args, results_dir: Path, command: str, extra: str = "") -> Path:
    import argparse

    records = load_records(results_dir)
    stats = {c: config_stats(bench, c, sorted(records[c], key=lambda r: r["training_seed"]))
             for c in bench.configs if c in records}
    missing = [f"{c} (seed {s})" for c, s in plan(bench, args) if not run_path(results_dir, c, s).exists()]
    # Describe the settings the runs were made with (a --summary-only call may not repeat them).
    done = [rec for recs in records.values() for rec in recs]
    if done and "settings" in done[0]:
        args = argparse.Namespace(**{**vars(args), **done[0]["settings"]})
    made_by = list(dict.fromkeys(rec.get("sweep_command", command) for rec in done))
    header = {"command": " && ".join(made_by or [command]), "machine": machine(), "setup": bench.setup(args)}
    write_text_atomic(results_dir / "summary.md", summary_markdown(bench, stats, missing, header, extra))
    payload = {**header, "configs": {c: vars(s) for c, s in stats.items()}, "not_run": missing,
               "answers": [answer(stats, *question) for question in bench.questions]}
    write_text_atomic(results_dir / "summary.json", json.dumps(payload, indent=2))
    plot(bench, stats, records, results_dir / "success_vs_latency.png")
    return results_dir / "summary.md"


def plot(bench: Bench, stats: dict[str, ConfigStats], records: dict[str, list[dict]], path: Path) -> None:
    """Success against median ms per chunk, one point per (configuration, training seed); a dozen
    configurations need more distinct colours than driftkit.eval's tab10 plot has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 4.5))
    for i, config in enumerate(stats):
        rows = [next(r for r in rec["summary"] if r["group"] == "all") for rec in records[config]]
        ax.scatter([r["chunk_ms_median"] for r in rows], [100 * _rate(rec["episodes"]) for rec in records[config]],
                   label=config, color=plt.cm.tab20(i % 20), marker="os^Dv<>p*hX"[i % 11], s=40, alpha=0.9)
    ax.set_xscale("log")
    ax.set_xlabel("median ms per action chunk (CPU, batch 1)")
    ax.set_ylabel("success rate over all tasks (%)")
    ax.set_title(f"{bench.title}: one point per configuration and training seed", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(bench: Bench, args, argv=None, extra: Callable[[], str] = lambda: "") -> None:
    """Run every planned (config, seed) that has no result file yet, rebuilding the summary after each."""
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", bench.script, *(sys.argv[1:] if argv is None else argv)])
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        data = (Path(args.work_dir) / "data").resolve()
        ensure_data(bench, args, data)
        for config, seed in plan(bench, args):
            if run_path(results_dir, config, seed).exists():
                continue
            start = time.perf_counter()
            try:
                path = run_one(bench, args, config, seed, data, results_dir, command)
            except Exception:  # one broken configuration should not stop the sweep; a rerun retries it
                traceback.print_exc()
                print(f"[{time.strftime('%H:%M:%S')}] {config} seed {seed}: FAILED (no run file written)", flush=True)
                continue
            rate = _rate(json.loads(path.read_text())["episodes"])
            print(f"[{time.strftime('%H:%M:%S')}] {config} seed {seed}: success {100 * rate:.1f}% "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            write_summary(bench, args, results_dir, command, extra())
    print("wrote", write_summary(bench, args, results_dir, command, extra()), flush=True)
