"""The sweep summary's statistics (benchmarks/sweep.py) on made-up run records with known answers: the pooled
and per-group standard errors, the plain-sentence verdicts, and the best-per-group / per-millisecond table."""

from __future__ import annotations

import math
from types import SimpleNamespace

from bench_helpers import benchmark

sweep = benchmark("sweep")
BENCH = SimpleNamespace(groups={"hard": ("a-v3",), "easy": ("b-v3",)})


def record(config: str, seed: int, successes: dict[str, int], n: int, ms: float) -> dict:
    """A run file: n episodes per task, the first successes[task] of them successful."""
    episodes = [{"task": t, "seed": i % 2, "success": i < k} for t, k in successes.items() for i in range(n)]
    return {"config": config, "training_seed": seed, "episodes": episodes, "train_seconds": 1.0, "eval_seconds": 1.0,
            "summary": [{"group": "all", "mean_length": 10.0, "nfe": 1, "chunk_ms_median": ms}]}


def stats_of(rows: dict[str, list[dict]]) -> dict:
    return {c: sweep.config_stats(BENCH, c, recs) for c, recs in rows.items()}


def test_standard_errors_pool_episodes_and_count_seed_spread():
    # catches: the binomial SE over one seed's episodes instead of the pooled ones; the seed spread ignored
    one = stats_of({"x": [record("x", 0, {"a-v3": 30, "b-v3": 30}, 50, 5.0)]})["x"]
    assert math.isclose(one.binomial_se, math.sqrt(0.6 * 0.4 / 100)) and one.se == one.binomial_se
    assert one.per_group == {"hard": 0.6, "easy": 0.6}
    assert math.isclose(one.per_group_se["hard"], math.sqrt(0.6 * 0.4 / 50))
    two = stats_of({"x": [record("x", 0, {"a-v3": 50, "b-v3": 50}, 50, 5.0),
                          record("x", 1, {"a-v3": 0, "b-v3": 0}, 50, 5.0)]})["x"]
    assert two.mean == 0.5 and math.isclose(two.seed_std, math.sqrt(0.5))
    assert math.isclose(two.se, math.sqrt(0.5) / math.sqrt(2))  # the seed spread dominates the binomial SE


def test_verdicts_and_the_best_per_group_and_per_millisecond():
    # catches: a tie judged at 1 SE instead of 2; the fastest tied row replaced by the best one; a dominated
    # row left on the Pareto front; a group's leader taken from the overall rate
    stats = stats_of({
        "slow-best": [record("slow-best", 0, {"a-v3": 45, "b-v3": 45}, 50, 20.0)],   # 90 %
        "fast-close": [record("fast-close", 0, {"a-v3": 48, "b-v3": 37}, 50, 5.0)],  # 85 %: inside the noise
        "dominated": [record("dominated", 0, {"a-v3": 35, "b-v3": 35}, 50, 30.0)],  # 70 %, and slower
        "fastest-bad": [record("fastest-bad", 0, {"a-v3": 10, "b-v3": 10}, 50, 1.0)],  # 20 %
        "tied-slower": [record("tied-slower", 0, {"a-v3": 45, "b-v3": 45}, 50, 25.0)],  # 90 % like slow-best
    })
    inside = sweep.answer(stats, "fast-close", "slow-best", "q?")
    assert "inside the noise" in inside and "-5.0 points" in inside
    assert "worse by more than the noise" in sweep.answer(stats, "dominated", "slow-best", "q?")
    lines = sweep.leaders_markdown(stats, ["hard", "easy"])
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
    assert rows["all"] == "| all | slow-best (90.0) | fast-close, tied-slower | fast-close (5.0 ms) |"
    assert rows["hard"].startswith("| hard | fast-close (96.0) | slow-best")  # its own leader: 96 % on a-v3
    front = next(line for line in lines if line.startswith("Pareto"))
    assert "dominated" not in front and "tied-slower" not in front  # equal success, slower: dominated too
    assert front.index("fastest-bad") < front.index("fast-close") < front.index("slow-best")


def test_a_question_restricted_to_a_task_group_uses_that_groups_rates_and_se():
    # catches: the overall rate or SE used for a group question; the group left out of the sentence
    stats = stats_of({
        "router": [record("router", 0, {"a-v3": 40, "b-v3": 10}, 50, 5.0)],   # hard 80 %, all 50 %
        "mean": [record("mean", 0, {"a-v3": 10, "b-v3": 40}, 50, 5.0)],       # hard 20 %, all 50 %
    })
    assert "inside the noise" in sweep.answer(stats, "router", "mean", "q?")
    hard = sweep.answer(stats, "router", "mean", "q?", "hard")
    noise = 2 * math.sqrt(2 * 0.8 * 0.2 / 50)  # the per-group binomial SE of each: 50 episodes at 80 / 20 %
    assert "router 80.0% (1 seed(s)) vs mean 20.0% (1 seed(s)) on the hard group" in hard
    assert f"+60.0 points, noise floor (2 SE) ±{100 * noise:.1f}; router is better by more than the noise" in hard


def test_headline_table_quotes_seeds_the_comparison_se_and_groups():
    # catches: the binomial SE quoted where the seed spread dominates; per-seed rates dropped or out of order;
    # a group's column filled from another group or from the overall rate
    stats = stats_of({"two": [record("two", 0, {"a-v3": 50, "b-v3": 30}, 50, 7.25),
                              record("two", 1, {"a-v3": 10, "b-v3": 30}, 50, 7.25)],
                      "one": [record("one", 0, {"a-v3": 5, "b-v3": 45}, 50, 3.0)]})
    rows = {line.split(" (")[0].lstrip("| "): line for line in sweep.headline_markdown(stats, ["hard", "easy"])
            if line.startswith("| ") and "(" in line and "configuration" not in line}
    # seed rates 80 % and 40 %: SE = stdev / sqrt(2) = 20 points, larger than the binomial 3.5
    assert rows["two"] == "| two (2: 80, 40) | 60.0 ± 20.0 | 60 | 60 | 1 | 7.2 |"
    assert rows["one"] == "| one (1) | 50.0 ± 5.0 | 10 | 90 | 1 | 3.0 |"


def test_a_finished_run_is_reused_and_a_short_one_resumes(monkeypatch, tmp_path):
    """train_checkpoint counts a run as finished at its own steps (train_scale x --train-steps). Mutations
    caught: comparing with --train-steps, so a finished 3x run would resume (and refuse: nothing to train) on
    every rerun, or a 1x checkpoint of a 3x run would be taken as finished."""
    import driftkit.train.checkpoint as ckpt
    import driftkit.train.config as config
    import driftkit.train.trainer as trainer

    at = {"step": 0}
    calls = []
    monkeypatch.setattr(ckpt, "latest_checkpoint", lambda out: tmp_path / "step")
    monkeypatch.setattr(ckpt, "read_trainer_state", lambda found: SimpleNamespace(step=at["step"]))
    monkeypatch.setattr(config, "make_config", lambda preset, sets: sets)
    monkeypatch.setattr(trainer, "train", lambda sets: calls.append(sets) or SimpleNamespace(checkpoint="new"))
    bench = SimpleNamespace(train_sets=lambda *a: ["steps=6000"], preset="p")
    args = SimpleNamespace(work_dir=str(tmp_path), train_steps=2000)
    long = sweep.Run("x-3x", "drift", train_scale=3)
    at["step"] = 6000
    assert sweep.train_checkpoint(bench, args, long, 0, tmp_path)[:2] == (tmp_path / "step", 0.0) and not calls
    at["step"] = 2000
    assert sweep.train_checkpoint(bench, args, long, 0, tmp_path)[0] == "new"
    assert calls == [["steps=6000", "resume=latest"]]
    assert sweep.train_checkpoint(bench, args, sweep.Run("x", "drift"), 0, tmp_path)[1] == 0.0  # 2000 of 2000
