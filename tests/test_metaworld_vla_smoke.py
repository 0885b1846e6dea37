"""The VLA benchmark (benchmarks/metaworld_vla.py) in miniature: the averaged-route check, collecting images,
training a tiny VLA for two steps, evaluating in two worker processes, the summary, and resuming. Plus the
parallel evaluator against the in-process one."""

from __future__ import annotations

import json
import sys

import pytest

from bench_helpers import benchmark

pytest.importorskip("metaworld")


@pytest.fixture(scope="module")
def vla_bench():
    return benchmark("metaworld_vla")


def test_vla_sweep_runs_summarises_and_resumes(vla_bench, tmp_path):
    # lm_tokens: a row whose training needs its own overrides (64 query tokens, cond=query): a row the sweep
    # cannot train leaves no run file, which the set below catches
    argv = ["--tasks", "reach-wall-v3", "--configs", "flow-1,residual_flow[regression]-base,lm_tokens",
            "--seeds", "0", "--other-seeds", "0", "--episodes-per-task", "2", "--train-steps", "2",
            "--batch-size", "4", "--eval-episodes", "1",
            "--eval-seeds", "0", "--eval-max-steps", "16", "--eval-workers", "2", "--route-check-seeds", "1",
            "--work-dir", str(tmp_path / "work"), "--results", str(tmp_path / "results")]
    vla_bench.main(argv)
    results = tmp_path / "results"
    runs = {p.name: json.loads(p.read_text()) for p in results.glob("*__seed0.json")}
    assert set(runs) == {"flow-1__seed0.json", "residual_flow[regression]-base__seed0.json", "lm_tokens__seed0.json"}
    base = runs["residual_flow[regression]-base__seed0.json"]
    all_row = next(r for r in base["summary"] if r["group"] == "all")
    assert all_row["nfe"] == 1  # steps=0: the regression base alone, not base + 10 refiner steps
    assert "--workers 2" in base["commands"]["eval"] and "--image" in base["commands"]["eval"]
    assert len(base["episodes"]) == 1 and base["episodes"][0]["length"] <= 16
    route = json.loads((results / "route_check.json").read_text())
    assert route["reach-wall-v3"]["seeds"] == 1
    summary = (results / "summary.md").read_text()
    assert "## Answers" in summary and "## The averaged-route check" in summary
    assert "| reach-wall-v3 | 1 |" in summary and "multimodal" in summary
    assert "Not run yet" not in summary
    stamps = {p: p.stat().st_mtime_ns for p in results.glob("*__seed0.json")}
    vla_bench.main(argv)  # resuming: every planned run has its file, nothing is trained or evaluated again
    assert {p: p.stat().st_mtime_ns for p in results.glob("*__seed0.json")} == stamps


def test_large_keeps_what_the_command_line_sets(vla_bench, monkeypatch):
    # catches: --large overwriting flags given on the command line (argv None reads sys.argv)
    monkeypatch.setattr(sys, "argv", ["metaworld_vla.py", "--large", "--train-steps", "5"])
    args = vla_bench.parse_args()
    assert args.train_steps == 5 and args.eval_workers == vla_bench.LARGE["eval_workers"]


def test_a_longer_training_row_trains_its_multiple_of_the_steps(vla_bench, tmp_path):
    # catches: train_scale ignored (drift-3x would train, and be reported, at the sweep's own step count)
    args = vla_bench.parse_args(["--train-steps", "40"])
    long, base = vla_bench.CONFIGS["drift-3x"], vla_bench.CONFIGS["drift"]
    sets = lambda run: vla_bench.train_sets(args, run, 0, tmp_path, tmp_path)  # noqa: E731
    assert "steps=120" in sets(long) and "warmup=12" in sets(long)
    assert "steps=40" in sets(base) and long.train != base.train  # its own checkpoint, not drift's


def test_parallel_evaluation_equals_in_process(tmp_path):
    import torch

    from driftkit.eval import EvalConfig, evaluate
    from driftkit.policy import StatePolicyConfig, make_policy

    torch.manual_seed(0)
    policy = make_policy(StatePolicyConfig(state_dim=39, action_dim=4, horizon=16, decoder="regression",
                                            hidden_dim=16, cond_dim=16, decoder_options={"hidden_dim": 16}))
    policy.eval()
    policy.save_pretrained(tmp_path / "policy")
    cfg = EvalConfig(tasks=["reach-v3", "drawer-close-v3"], episodes=2, seeds=[0, 1], max_steps=20)
    one = evaluate({"r": str(tmp_path / "policy")}, cfg, progress=False)
    two = evaluate({"r": str(tmp_path / "policy")}, cfg, progress=False, workers=2)
    key = lambda e: (e["task"], e["seed"], e["episode"], e["success"], e["length"])  # noqa: E731
    assert [key(e) for e in two["episodes"]] == [key(e) for e in one["episodes"]]
    assert len(one["episodes"]) == 8
    with pytest.raises(ValueError, match="checkpoint directories"):
        evaluate({"r": policy}, cfg, progress=False, workers=2)
