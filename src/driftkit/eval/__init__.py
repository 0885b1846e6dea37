"""Closed-loop evaluation: success statistics (pure functions), result files, and the Meta-World rollout
loop (which imports the simulator only when it runs)."""

from driftkit.eval.report import markdown_table, plot_success_vs_latency, results_dict, write_json
from driftkit.eval.metaworld import EpisodeRun, EvalConfig, evaluate, evaluate_policy, run_episode
from driftkit.eval.stats import (
    EpisodeOutcome,
    GroupSummary,
    binomial_se,
    seed_points,
    seed_spread,
    success_rate,
    summarize,
    summarize_group,
)

__all__ = [
    "EpisodeOutcome",
    "EpisodeRun",
    "EvalConfig",
    "GroupSummary",
    "binomial_se",
    "evaluate",
    "evaluate_policy",
    "markdown_table",
    "plot_success_vs_latency",
    "results_dict",
    "run_episode",
    "seed_points",
    "seed_spread",
    "success_rate",
    "summarize",
    "summarize_group",
    "write_json",
]
