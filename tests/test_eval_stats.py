"""Evaluation statistics against hand-computed oracles, the result files, and the replanning loop
(with a fake environment, so no simulator is needed)."""

import dataclasses
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from driftkit.eval import (
    EpisodeOutcome,
    EvalConfig,
    binomial_se,
    markdown_table,
    plot_success_vs_latency,
    results_dict,
    run_episode,
    seed_points,
    seed_spread,
    summarize,
    summarize_group,
    write_json,
)
from driftkit.eval.metaworld import chunk_to_numpy, lookup_task_index, obs_batch


def _outcome(task, seed, success, length=10, ms=(1.0,), decoder="flow", nfe=10):
    return EpisodeOutcome(decoder=decoder, task=task, seed=seed, episode=0, success=success, length=length,
                          chunk_ms=list(ms), nfe=nfe)


def test_binomial_se_formula():
    assert binomial_se(0.3, 10) == pytest.approx(math.sqrt(0.3 * 0.7 / 10))
    assert binomial_se(0.0, 5) == 0.0 and binomial_se(1.0, 5) == 0.0
    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="n=0"):
        binomial_se(0.5, 0)
    with pytest.raises(ValueError, match="p=1.5"):
        binomial_se(1.5, 3)


def test_seed_spread_is_sample_std():
    assert seed_spread([0.2, 0.4, 0.6]) == pytest.approx(0.2)
    assert seed_spread([0.5, 0.5]) == 0.0
    assert math.isnan(seed_spread([0.7]))


def test_group_summary_oracle():
    # seed 0: 3 of 4 succeed, seed 1: 1 of 4 succeed.
    outs = [_outcome("reach-v3", 0, s, length=l, ms=(m,)) for s, l, m in
            [(True, 10, 1.0), (True, 20, 2.0), (True, 30, 3.0), (False, 40, 4.0)]]
    outs += [_outcome("reach-v3", 1, s, length=50, ms=(5.0, 6.0)) for s in (True, False, False, False)]
    g = summarize_group(outs, "flow", "reach-v3")
    assert g.n_episodes == 8 and g.n_seeds == 2 and g.n_tasks == 1
    assert g.success_rate == pytest.approx(0.5)
    assert g.success_se == pytest.approx(math.sqrt(0.25 / 8))
    assert g.seed_std == pytest.approx(np.std([0.75, 0.25], ddof=1))
    assert g.mean_length == pytest.approx((10 + 20 + 30 + 40 + 4 * 50) / 8)
    assert g.chunk_ms_median == pytest.approx(np.median([1, 2, 3, 4] + [5, 6] * 4))
    assert g.nfe == 10


def test_summary_rows_per_task_split_and_all():
    outs = [_outcome("reach-v3", s, True) for s in (0, 1)] + [_outcome("push-v3", s, s == 0) for s in (0, 1)]
    outs += [_outcome("reach-v3", 0, False, decoder="regression", nfe=1)]
    rows = summarize(outs, {"easy": ("reach-v3",), "hard": ("push-v3",), "medium": ("hammer-v3",)})
    by = {(r.decoder, r.group): r for r in rows}
    assert set(by) == {("flow", "reach-v3"), ("flow", "push-v3"), ("flow", "easy"), ("flow", "hard"),
                       ("flow", "all"), ("regression", "reach-v3"), ("regression", "easy"), ("regression", "all")}
    assert by["flow", "all"].success_rate == pytest.approx(0.75) and by["flow", "all"].n_tasks == 2
    assert by["flow", "hard"].success_rate == pytest.approx(0.5)
    assert by["flow", "all"].seed_std == pytest.approx(np.std([1.0, 0.5], ddof=1))
    assert math.isnan(by["regression", "all"].seed_std)
    points = seed_points(outs)
    assert [(p["decoder"], p["seed"], p["success_rate"]) for p in points] == \
        [("flow", 0, 1.0), ("flow", 1, 0.5), ("regression", 0, 0.0)]


def test_result_files(tmp_path):
    outs = [_outcome("reach-v3", 0, True), _outcome("reach-v3", 0, False, decoder="drift", ms=(0.5,), nfe=1)]
    rows = summarize(outs, {"easy": ("reach-v3",)})
    results = results_dict(outs, rows, {"episodes": 1})
    path = write_json(tmp_path / "r" / "results.json", results)
    text = path.read_text()
    assert "NaN" not in text  # one seed -> seed std NaN, written as null
    loaded = json.loads(text)
    assert loaded["summary"][0]["seed_std"] is None and len(loaded["episodes"]) == 2
    table = markdown_table(rows)
    assert table.count("\n") == 2 + len(rows)
    assert "| flow | reach-v3 | 1 | 1 | 100.0 | 0.0 | - |" in table
    assert "| drift | **all** |" in table
    png = plot_success_vs_latency(seed_points(outs), tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chunk_to_numpy_shapes():
    assert chunk_to_numpy(torch.zeros(1, 4, 3)).shape == (4, 3)
    assert chunk_to_numpy(np.ones((1, 5, 4, 3))).shape == (4, 3)  # [B, K, T, D]: first sample
    assert chunk_to_numpy(SimpleNamespace(actions=torch.zeros(1, 2, 3))).shape == (2, 3)
    with pytest.raises(ValueError, match=r"\[2, 4, 3\]"):
        chunk_to_numpy(torch.zeros(2, 4, 3))


def test_obs_batch_keys_and_task_lookup():
    obs = SimpleNamespace(state=np.arange(39, dtype=np.float32), image=np.full((8, 8, 3), 255, np.uint8))
    batch = obs_batch(obs, 3, "reach the goal")
    assert batch["observation.state"].shape == (1, 39) and batch["task_index"].tolist() == [3]
    assert batch["task"] == ["reach the goal"]  # the instruction, for policies that read language
    image = batch["observation.images.corner2"]  # the camera MetaWorldEnv renders, under its LeRobot key
    assert image.shape == (1, 3, 8, 8) and image.max() == 1.0
    plain = obs_batch(SimpleNamespace(state=obs.state, image=None), None)
    assert "task_index" not in plain and not [k for k in plain if k.startswith("observation.images.")]
    assert lookup_task_index({"reach the goal": 4}, "reach the goal") == 4
    with pytest.raises(ValueError, match="push the puck"):
        lookup_task_index({"reach the goal": 4}, "push the puck to the goal")


class _LineEnv:
    """1-D toy: success once the summed action x reaches `goal`; the observation is [x, 0, ..., 0]."""

    instruction = "reach the goal"

    def __init__(self, goal):
        self.goal, self.x = goal, 0.0

    def _obs(self):
        state = np.zeros(39, np.float32)
        state[0] = self.x
        return SimpleNamespace(state=state, image=None)

    def reset(self):
        self.x = 0.0
        return self._obs()

    def step(self, action):
        self.x += float(action[0])
        return SimpleNamespace(obs=self._obs(), success=self.x >= self.goal - 1e-6, truncated=False)


class _ConstantPolicy:
    def __init__(self, horizon):
        self.horizon, self.calls = horizon, []

    def nfe(self, steps=None):
        return 1

    def predict(self, obs_batch, num_samples=1, steps=None, select=None, generator=None, timer=None,
                temperature=None):
        self.calls.append(float(obs_batch["observation.state"][0, 0]))
        return torch.ones(1, self.horizon, 4)


def test_replanning_loop_executes_n_action_steps_per_chunk():
    policy = _ConstantPolicy(horizon=4)
    cfg = EvalConfig(tasks=["reach-v3"], episodes=1, seeds=[0], n_action_steps=2, max_steps=100)
    run = run_episode(policy, _LineEnv(goal=5), cfg)
    assert run.success and run.length == 5
    assert policy.calls == [0.0, 2.0, 4.0]  # replans every 2 steps from the new observation
    assert len(run.chunk_ms) == 3
    run = run_episode(_ConstantPolicy(4), _LineEnv(goal=1000), EvalConfig(
        tasks=["reach-v3"], episodes=1, seeds=[0], n_action_steps=3, max_steps=7))
    assert not run.success and run.length == 7 and len(run.chunk_ms) == 3


class _RecordingEnv(_LineEnv):
    """_LineEnv that never succeeds and keeps every action it is given, as MetaWorldEnv is opened."""

    def __init__(self, task, seed, **kwargs):
        super().__init__(goal=float("inf"))
        self.actions = []
        _RecordingEnv.opened.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def step(self, action):
        self.actions.append(np.array(action))
        return super().step(action)


def test_sampling_noise_is_seeded_by_task_and_evaluation_seed(monkeypatch):
    """A stochastic decoder's closed loop repeats exactly: the noise comes from a generator seeded by the
    (task, evaluation seed) unit. Mutations caught: the generator not passed to predict (the global RNG
    differs between the two calls), or one seed for every unit (units get the same actions)."""
    import driftkit.envs.metaworld as mw
    from driftkit.eval.metaworld import evaluate_policy
    from driftkit.policy import StatePolicyConfig, make_policy

    monkeypatch.setattr(mw, "MetaWorldEnv", _RecordingEnv)
    torch.manual_seed(0)
    policy = make_policy(StatePolicyConfig(state_dim=39, action_dim=4, horizon=4, decoder="flow", hidden_dim=16,
                                            cond_dim=16, decoder_options={"hidden_dim": 16})).eval()
    cfg = EvalConfig(tasks=["reach-v3", "push-v3"], episodes=2, seeds=[0, 1], n_action_steps=2, max_steps=6)
    runs = []
    for _ in range(2):
        _RecordingEnv.opened = []
        evaluate_policy(policy, "flow", cfg, progress=False)
        runs.append([np.stack(env.actions) for env in _RecordingEnv.opened])
        torch.randn(3)  # the global RNG moves on between the calls
    assert len(runs[0]) == 4 and all(a.shape == (12, 4) for a in runs[0])  # 2 episodes x 6 steps per unit
    assert all(np.array_equal(a, b) for a, b in zip(*runs))
    units = runs[0]
    assert not any(np.allclose(units[i], units[j]) for i in range(4) for j in range(i))
    _RecordingEnv.opened = []
    evaluate_policy(policy, "flow", dataclasses.replace(cfg, sample_seed=1), progress=False)
    assert not np.allclose(_RecordingEnv.opened[0].actions, runs[0][0])  # another sample seed, other noise


def test_eval_config_checks():
    with pytest.raises(ValueError, match="unknown Meta-World task 'nope-v3'"):
        EvalConfig(tasks=["nope-v3"])
    with pytest.raises(ValueError, match="n_action_steps=0"):
        EvalConfig(tasks=["reach-v3"], n_action_steps=0)
    with pytest.raises(ValueError, match="seeds"):
        EvalConfig(tasks=["reach-v3"], seeds=[])
