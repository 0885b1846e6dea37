"""Meta-World MT10 (state-based): every decoder trained on the same scripted-expert demonstrations and
evaluated closed loop, over several training seeds.

    python benchmarks/metaworld_mt10.py                 # collect once, train + evaluate every run, summarise
    python benchmarks/metaworld_mt10.py --summary-only  # rebuild summary.md/.json/.png from the run files

One result file per (configuration, training seed) in benchmarks/results/metaworld-mt10/, resumable; the
machinery (collect, train, evaluate, summarise) is benchmarks/sweep.py, shared with metaworld_vla.py.
Demonstrations and checkpoints live under --work-dir (runs/ is git-ignored).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sweep
from sweep import Run

RESULTS = Path("benchmarks/results/metaworld-mt10")

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
    "discrete_flow[head]": Run("discrete_flow-head", "discrete_flow", {"velocity": "head"},
                               note="discrete flow, CTMC driven by an auxiliary rate head (DFM-VLA's velocity head)"),
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
    ("discrete_flow[head]", "discrete_flow", "DFM-VLA: does the velocity head beat the posterior (embedding-guided) "
     "construction?"),
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


def collect_config(args):
    from driftkit.envs.collect import CollectConfig

    return CollectConfig(tasks=["mt10"], episodes=args.episodes_per_task, noise_std=args.noise_std,
                         alt_path_prob=args.alt_path_prob, max_steps=args.collect_max_steps)


def train_sets(args, run: Run, seed: int, data: Path, out: Path) -> list[str]:
    h, steps = args.hidden, run.steps(args)
    return [f"decoder={run.decoder}", f"data.root={data}", "model.num_tasks=10", f"model.hidden_dim={h}",
            f"model.cond_dim={h}", f"model.decoder_options.hidden_dim={h}",
            *(f"model.decoder_options.{k}={v}" for k, v in run.options.items()),
            f"steps={steps}", f"warmup={min(500, steps // 10)}",
            f"batch_size={args.batch_size}", f"lr={args.lr}", f"seed={seed}", f"output_dir={out}",
            f"checkpoint_every={steps}", "keep_checkpoints=1", "log_every=100",
            "progress=false", "tensorboard=false"]


def eval_config(args, run: Run):
    from driftkit.eval import EvalConfig

    return EvalConfig(tasks=["mt10"], episodes=args.eval_episodes, seeds=sweep.ints(args.eval_seeds),
                      max_steps=args.eval_max_steps, **run.eval)


def setup(args) -> str:
    return (f"{args.episodes_per_task} demonstrations per task (Gaussian action noise std {args.noise_std}, "
            f"left/right detour probability {args.alt_path_prob}); {args.train_steps} training steps, batch "
            f"{args.batch_size}, lr {args.lr}, width {args.hidden}, horizon 16, 8 actions executed per chunk; "
            f"evaluation: {args.eval_episodes} episodes per task x evaluation seeds {args.eval_seeds}, at most "
            f"{args.eval_max_steps} steps; torch threads {args.threads}.")


BENCH = sweep.Bench(
    title="Meta-World MT10 (state-based) — decoder comparison", script="benchmarks/metaworld_mt10.py",
    preset="metaworld-state", configs=CONFIGS, multi_seed=MULTI_SEED, questions=QUESTIONS,
    groups={}, collect=collect_config, train_sets=train_sets, eval_config=eval_config, setup=setup)


def main(argv=None) -> None:
    sweep.main(BENCH, parse_args(argv), argv)


if __name__ == "__main__":
    main()
