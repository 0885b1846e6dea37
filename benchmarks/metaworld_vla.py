"""Meta-World through a VLA: a tiny VLM (smolvlm-tiny, random init, trained in full) reads the corner2 camera,
the instruction and the state; every decoder is trained on the same demonstrations and evaluated closed loop.

    python benchmarks/metaworld_vla.py                   # route check, collect, train + evaluate every run
    python benchmarks/metaworld_vla.py --summary-only    # rebuild summary.md/.json/.png from the run files
    python benchmarks/metaworld_vla.py --large ...       # the GPU-machine sizes (see LARGE)

Task groups, chosen by measurement (the route check runs first and is part of the summary):
- multimodal: reach-wall-v3 with left/right routes round the wall (driftkit.envs.routes); the step-wise mean of
  a left and a right route, replayed from the same start, runs into the wall and fails;
- precision: peg-insert-side-v3 and pick-place-v3, where the state-based MLP heads differ most (MT10 sweep);
- easy: drawer-close-v3 and button-press-topdown-v3 (100 % for every decoder state-based): a sanity floor.

One result file per (configuration, training seed) in benchmarks/results/metaworld-vla/, resumable; the
machinery is benchmarks/sweep.py, shared with metaworld_mt10.py. Demonstrations and checkpoints live under
--work-dir (runs/ is git-ignored). Configurations sharing a checkpoint train it once: flow-10 / flow-1, drift /
drift + KeyStone / drift at temperature 0, residual_flow[regression] / its own base, residual_flow[fast] / FAST
alone. The first training seed of every configuration runs first (cheapest-to-train first, the drifting ones
last), then the extra seeds. drift-3x and flow-10-3x train 3x the steps (Run.train_scale): drift's budget check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import sweep
from driftkit.atomic import write_text_atomic
from sweep import Run

RESULTS = Path("benchmarks/results/metaworld-vla")
GROUPS = {
    "multimodal": ("reach-wall-v3",),
    "precision": ("peg-insert-side-v3", "pick-place-v3"),
    "easy": ("drawer-close-v3", "button-press-topdown-v3"),
}
TASKS = [t for tasks in GROUPS.values() for t in tasks]
BASE_ONLY = {"steps": 0}  # a residual decoder with zero refinement steps returns its base prediction
LM_TOKEN_SETS = ("model.num_query_tokens=64", "model.cond=query")  # lm_tokens reads one query state per value

CONFIGS: dict[str, Run] = {
    "flow-10": Run("flow", "flow", {"steps": 10}, note="flow matching, 10 Euler steps"),
    "regression": Run("regression", "regression", note="query-token states -> chunk, L1; deterministic"),
    "residual_flow[regression]": Run("residual_flow", "residual_flow",
                                     note="DRIFT-MLP: regression base + 10-step flow refiner"),
    "lm_tokens": Run("lm_tokens", "lm_tokens", note="256 bins per value through the VLM's LM-head rows",
                     sets=LM_TOKEN_SETS),
    "fast": Run("fast", "residual_flow", eval=BASE_ONLY, preset="metaworld-fast",
                note="FAST tokens generated autoregressively through the LM head (the residual_flow[fast] "
                     "checkpoint with its refiner skipped)"),
    "residual_flow[fast]": Run("fast", "residual_flow", preset="metaworld-fast",
                               note="DRIFT-Tokenizer: FAST base + 10-step flow refiner"),
    "residual_flow[lm_tokens]": Run("residual_flow-lm_tokens", "residual_flow", {"base": "lm_tokens"},
                                    note="DRIFT-Tokenizer: lm_tokens base + 10-step flow refiner",
                                    sets=LM_TOKEN_SETS),
    "discrete_flow": Run("discrete_flow", "discrete_flow", note="discrete flow matching over 256 bins"),
    "flow-1": Run("flow", "flow", {"steps": 10}, {"steps": 1}, note="the flow-10 checkpoint run with 1 Euler step"),
    "residual_flow[regression]-base": Run("residual_flow", "residual_flow", eval=BASE_ONLY,
                                          note="the residual_flow[regression] checkpoint's own regression base"),
    "drift": Run("drift", "drift", {"grouping": "action_dim"}, note="one-step drifting generator, action_dim groups"),
    "drift+keystone8": Run("drift", "drift", {"grouping": "action_dim"}, {"num_samples": 8, "select": "keystone"},
                           note="the drift checkpoint, K=8 samples, KeyStone selection"),
    "drift-T0": Run("drift", "drift", {"grouping": "action_dim"}, {"temperature": 0.0},
                    note="the drift checkpoint at temperature 0: the generator at the noise mean, deterministic"),
    "residual_drift": Run("residual_drift", "residual_drift", note="regression base + one-step drifting refiner"),
    "drift-chunk": Run("drift-chunk", "drift", {"grouping": "chunk"}, note="drift, whole chunk as one group"),
    "drift-3x": Run("drift-3x", "drift", {"grouping": "action_dim"}, train_scale=3,
                    note="drift trained 3x as many steps: is its deficit a training budget?"),
    "flow-10-3x": Run("flow-3x", "flow", {"steps": 10}, train_scale=3,
                      note="flow-10 trained 3x as many steps: drift-3x's like-for-like comparison"),
    "drift-timestep": Run("drift-timestep", "drift", {"grouping": "timestep"}, note="drift, one group per step"),
}
MULTI_SEED = ("flow-10", "flow-1", "drift", "drift+keystone8", "residual_flow[regression]",
              "residual_flow[regression]-base")
ONE_SEED = ("drift-T0", "drift-3x", "flow-10-3x", "drift-timestep")
QUESTIONS = (
    ("drift", "flow-10", "Drift-VLA: does one-step drift match 10-step flow?"),
    ("flow-1", "flow-10", "Does truncating flow to 1 step lose success?"),
    ("drift+keystone8", "drift", "Does KeyStone (K=8) add anything to drift?"),
    ("drift-T0", "drift", "Does drift gain from sampling at temperature 0 (same checkpoints)?"),
    ("drift-chunk", "drift", "chunk grouping vs action_dim grouping"),
    ("drift-chunk", "flow-10", "Drift-VLA with chunk grouping: does one-step drift match 10-step flow?"),
    ("drift-timestep", "drift", "timestep grouping vs action_dim grouping"),
    ("drift-3x", "drift", "Does drift gain from 3x the training steps (same data, same schedule shape)?"),
    ("drift-3x", "flow-10", "Does drift at 3x the training steps reach flow-10 (at 1x)?"),
    ("drift-3x", "flow-10-3x", "Drift-VLA at 3x the training steps: does one-step drift match 10-step flow?"),
    ("flow-10-3x", "flow-10", "Does flow-10 gain from 3x the training steps?"),
    ("residual_flow[regression]", "residual_flow[regression]-base",
     "DRIFT-MLP: does residual flow beat its own regression base (same checkpoints)?"),
    ("residual_flow[regression]", "regression", "DRIFT-MLP: does residual flow beat a regression head?"),
    ("residual_flow[fast]", "fast", "DRIFT-Tokenizer: does residual flow beat its FAST base (same checkpoints)?"),
    ("residual_flow[lm_tokens]", "lm_tokens", "DRIFT-Tokenizer: does residual flow beat lm_tokens?"),
    ("residual_flow[regression]", "flow-10", "Does residual flow beat plain flow?"),
    ("residual_drift", "regression", "Does residual_drift beat its base predictor (regression)?"),
    ("discrete_flow", "lm_tokens", "DFM-VLA: does discrete flow beat the token decoder it refines?"),
    ("drift-chunk", "regression", "Where the mean of two routes fails: does chunk drift beat regression?",
     "multimodal"),
    ("residual_flow[lm_tokens]", "regression",
     "Where the mean of two routes fails: does residual flow on tokens beat regression?", "multimodal"),
    ("flow-10", "regression", "Where the mean of two routes fails: does flow beat regression?", "multimodal"),
    ("drift-chunk", "flow-10", "Where the mean of two routes fails: does chunk drift beat flow?", "multimodal"),
)
# The GPU-machine sizes: a mid preset, more demonstrations, more steps, evaluations spread over 16 processes.
LARGE = {"preset": "metaworld-vla-large", "episodes_per_task": 100, "train_steps": 30_000, "batch_size": 64,
         "eval_episodes": 25, "eval_seeds": "0,1,2", "eval_workers": 16, "image_size": 224,
         "work_dir": "runs/metaworld-vla-large", "results": "benchmarks/results/metaworld-vla-large"}
# The FAST rows train from the metaworld-fast preset (tiny); at the large sizes they take the large preset's model.
LARGE_FAST_SETS = ("model.backbone=qwen2_5_vl-mid", "model.mode=lora", "model.num_query_tokens=8",
                   "model.decoder_options.hidden_dim=512", "model.decoder_options.depth=3", "mixed_precision=bf16")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS), help="Comma-separated configurations to run.")
    p.add_argument("--tasks", default=",".join(TASKS), help="Tasks (default: every group's).")
    p.add_argument("--seeds", default="0,1,2", help=f"Training seeds of {', '.join(MULTI_SEED)}.")
    p.add_argument("--other-seeds", default="0,1", help="Training seeds of the other configurations.")
    p.add_argument("--one-seed", default="0", help=f"Training seeds of {', '.join(ONE_SEED)}.")
    p.add_argument("--preset", default="metaworld-vla", help="Training preset of the VLA rows.")
    p.add_argument("--episodes-per-task", type=int, default=30, help="Demonstrations kept per task.")
    p.add_argument("--noise-std", type=float, default=0.1)
    p.add_argument("--alt-path-prob", type=float, default=0.67,
                   help="Share of demonstrations on a left or right route (the rest follow the expert).")
    p.add_argument("--collect-max-steps", type=int, default=300)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--eval-episodes", type=int, default=6, help="Episodes per task and evaluation seed.")
    p.add_argument("--eval-seeds", default="0,1")
    p.add_argument("--eval-max-steps", type=int, default=300)
    p.add_argument("--eval-workers", type=int, default=2, help="Evaluation processes (one torch thread each).")
    p.add_argument("--route-check-seeds", type=int, default=10, help="Initial states of the averaged-route check.")
    p.add_argument("--threads", type=int, default=2, help="Torch threads of the training process.")
    p.add_argument("--work-dir", default="runs/metaworld-vla", help="Demonstrations and checkpoints.")
    p.add_argument("--results", default=str(RESULTS), help="Run files and the summary.")
    p.add_argument("--summary-only", action="store_true", help="Only rebuild the summary from the run files.")
    p.add_argument("--large", action="store_true", help=f"The GPU-machine sizes: {LARGE}.")
    args = p.parse_args(argv)
    if args.large:
        typed = sys.argv[1:] if argv is None else argv  # what the user set keeps its value
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in typed if a.startswith("--")}
        for key, value in LARGE.items():
            if key not in given:
                setattr(args, key, value)
    return args


def seeds_of(args, config: str) -> str:
    return args.seeds if config in MULTI_SEED else args.one_seed if config in ONE_SEED else args.other_seeds


def collect_config(args):
    from driftkit.envs.collect import CollectConfig

    return CollectConfig(tasks=args.tasks.split(","), episodes=args.episodes_per_task, noise_std=args.noise_std,
                         alt_path_prob=args.alt_path_prob, max_steps=args.collect_max_steps, image=True,
                         image_size=args.image_size)


def train_sets(args, run: Run, seed: int, data: Path, out: Path) -> list[str]:
    steps = run.steps(args)
    every = max(1, min(500, steps))
    return [f"decoder={run.decoder}", f"data.root={data}",
            *(f"model.decoder_options.{k}={v}" for k, v in run.options.items()),
            f"model.image_size={args.image_size}",
            f"steps={steps}", f"warmup={min(200, steps // 10)}",
            f"batch_size={args.batch_size}", f"lr={args.lr}", f"seed={seed}", f"output_dir={out}",
            f"checkpoint_every={every}", "keep_checkpoints=1", "log_every=100", "progress=false",
            "tensorboard=false", *run.sets, *(LARGE_FAST_SETS if args.large and run.preset == "metaworld-fast" else ())]


def eval_config(args, run: Run):
    from driftkit.eval import EvalConfig

    return EvalConfig(tasks=args.tasks.split(","), episodes=args.eval_episodes, seeds=sweep.ints(args.eval_seeds),
                      max_steps=args.eval_max_steps, image=True, image_size=args.image_size, **run.eval)


def setup(args) -> str:
    return (f"tasks {args.tasks}; {args.episodes_per_task} demonstrations per task with {args.image_size}-px "
            f"corner2 images (action noise std {args.noise_std}, left/right route share {args.alt_path_prob}); "
            f"preset {args.preset}, {args.train_steps} training steps, batch {args.batch_size}, lr {args.lr}, "
            f"horizon 16, 8 actions executed per chunk; evaluation: {args.eval_episodes} episodes per task x "
            f"evaluation seeds {args.eval_seeds}, at most {args.eval_max_steps} steps, {args.eval_workers} "
            f"evaluation process(es) of 1 thread; training with {args.threads} torch threads.")


# ---- the averaged-route check ----------------------------------------------------------------------
def route_check(args, results_dir: Path) -> dict:
    """Left route, right route and their step-wise mean from the same initial states, per task."""
    from driftkit.envs.routes import averaged_route_check

    path = results_dir / "route_check.json"
    if path.is_file():
        return json.loads(path.read_text())
    out = {}
    for task in args.tasks.split(","):
        rows = [averaged_route_check(task, seed, args.collect_max_steps) for seed in range(args.route_check_seeds)]
        out[task] = {"seeds": len(rows), "left": sum(r.left_success for r in rows),
                     "right": sum(r.right_success for r in rows), "mean": sum(r.mean_success for r in rows)}
    write_text_atomic(path, json.dumps(out, indent=2))  # its existence means the check is done
    return out


def route_markdown(results_dir: Path) -> str:
    path = results_dir / "route_check.json"
    if not path.is_file():
        return ""
    lines = ["", "## The averaged-route check\n",
             "From the same initial state (environment seeds 0..n-1): the left route, the right route, and the "
             "step-wise mean of their actions replayed open loop (driftkit.envs.routes.averaged_route_check). "
             "Open loop is harsher than a closed-loop averaging policy, which can correct its course: on "
             "reach-wall the mean runs into the wall whatever the timing, elsewhere a failure can also come "
             "from routes of different lengths drifting apart in time.\n",
             "| task | initial states | left succeeds | right succeeds | mean of the two succeeds |",
             "|---|---:|---:|---:|---:|"]
    for task, r in json.loads(path.read_text()).items():
        lines.append(f"| {task} | {r['seeds']} | {r['left']} | {r['right']} | {r['mean']} |")
    return "\n".join(lines) + "\n"


def bench(args) -> sweep.Bench:
    return sweep.Bench(
        title="Meta-World through a VLA (smolvlm-tiny, corner2 + instruction + state) — decoder comparison",
        script="benchmarks/metaworld_vla.py", preset=args.preset, configs=CONFIGS, multi_seed=MULTI_SEED,
        questions=QUESTIONS, groups=GROUPS, collect=collect_config, train_sets=train_sets,
        eval_config=eval_config, setup=setup, seeds_of=seeds_of)


def main(argv=None) -> None:
    args = parse_args(argv)
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        route_check(args, results_dir)
    sweep.main(bench(args), args, argv, extra=lambda: route_markdown(results_dir))


if __name__ == "__main__":
    main()
