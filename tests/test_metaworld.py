"""Meta-World: demonstration collection into LeRobot v3, detours, closed-loop evaluation of a stand-in
policy, task names. Short episodes keep the file well under a minute."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("metaworld")

from driftkit.data import LeRobotDataset, LeRobotReader, task_index_map  # noqa: E402
from driftkit.envs import DIFFICULTY, MT10, MT50, difficulty, instruction, resolve_tasks  # noqa: E402
from driftkit.envs.collect import CollectConfig, collect  # noqa: E402
from driftkit.envs.metaworld import MetaWorldEnv, make_expert  # noqa: E402
from driftkit.eval import EvalConfig, evaluate  # noqa: E402

STATE, ACTION = "observation.state", "action"


def _lateral(states: np.ndarray, task: str) -> np.ndarray:
    """Signed sideways hand displacement from the start, positive = left of the start->target line."""
    s0 = states[0]
    target = s0[36:38] if task.startswith("reach") else s0[4:6]
    d = (target - s0[:2]) / np.linalg.norm(target - s0[:2])
    return (states[:, :2] - s0[:2]) @ np.array([-d[1], d[0]])


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    root = tmp_path_factory.mktemp("mw") / "reach"
    summary = collect(CollectConfig(tasks=["reach-v3"], episodes=2, max_steps=150), root, progress=False)
    return root, summary


def test_collected_dataset_is_readable_and_actions_are_the_experts(plain):
    root, summary = plain
    ds = LeRobotReader(root)
    assert len(ds.episodes) == 2 and summary.kept == {"reach-v3": 2}
    assert ds.tasks == ["reach the goal"] and ds.fps == 80
    states, actions = ds.column(STATE), ds.column(ACTION)
    assert states.shape == (ds.num_frames, 39) and actions.shape == (ds.num_frames, 4)
    expert = make_expert("reach-v3")
    replayed = np.stack([expert(s) for s in states])
    np.testing.assert_array_equal(actions, replayed)  # noise 0, no detour: exactly the expert's actions
    assert summary.detours == [0, 0]
    meta = json.loads((root / "meta/driftkit_collection.json").read_text())
    assert meta["config"]["noise_std"] == 0.0


def test_collected_episodes_succeed_when_replayed(plain):
    root, _ = plain
    ds = LeRobotReader(root)
    actions = ds.column(ACTION)
    with MetaWorldEnv("reach-v3", seed=100, max_steps=150) as env:  # the collection seed replays the goals
        for ep in ds.episodes:
            obs = env.reset()
            np.testing.assert_allclose(obs.state, ds.column(STATE)[ep.from_index], atol=1e-6)
            results = [env.step(a) for a in actions[ep.from_index:ep.to_index]]
            assert results[-1].success and not any(r.success for r in results[:-1])


def test_noise_changes_actions_by_about_its_std(tmp_path):
    collect(CollectConfig(tasks=["reach-v3"], episodes=1, noise_std=0.1, max_steps=150), tmp_path / "n",
            progress=False)
    ds = LeRobotReader(tmp_path / "n")
    expert = make_expert("reach-v3")
    diff = ds.column(ACTION) - np.stack([expert(s) for s in ds.column(STATE)])
    inside = np.abs(ds.column(ACTION)) < 0.999  # clipping at +-1 shrinks the noise
    assert 0.05 < diff[inside].std() < 0.15


def test_alternative_paths_go_left_and_right(tmp_path):
    summary = collect(CollectConfig(tasks=["reach-v3"], episodes=6, alt_path_prob=1.0, max_steps=150),
                      tmp_path / "alt", progress=False)
    assert set(summary.detours) == {-1, 1}
    ds = LeRobotReader(tmp_path / "alt")
    states = ds.column(STATE)
    for ep, side in zip(ds.episodes, summary.detours):
        lat = _lateral(states[ep.from_index:ep.to_index], "reach-v3")
        extreme = lat[np.argmax(np.abs(lat))]
        assert abs(extreme) > 0.05 and np.sign(extreme) == -side  # side -1 = left = positive lateral


def test_torch_dataset_on_collected_data(plain):
    root, _ = plain
    ds = LeRobotDataset(root, horizon=8)
    item = ds[len(ds) - 1]
    assert item["action_is_pad"].tolist() == [False] + [True] * 7
    assert item["task"] == "reach the goal" and int(item["task_index"]) == 0  # the instruction rides along
    assert task_index_map(root) == {"reach the goal": 0}


class _ExpertPolicy:
    """Stand-in with Policy.predict's signature: the expert's action for the current state, repeated T times."""

    def __init__(self, task, horizon=4):
        self.expert, self.horizon, self.temperatures = make_expert(task), horizon, set()

    def nfe(self, steps=None):
        return 1

    def predict(self, obs_batch, num_samples=1, steps=None, select=None, generator=None, timer=None,
                temperature=None):
        self.temperatures.add(temperature)
        state = obs_batch["observation.state"][0].numpy()
        assert obs_batch["task_index"].tolist() == [7]
        assert obs_batch["task"] == ["reach the goal"]
        return torch.from_numpy(np.repeat(self.expert(state)[None], self.horizon, 0))[None]


def test_eval_of_expert_standin_succeeds_on_reach(tmp_path):
    cfg = EvalConfig(tasks=["reach-v3"], episodes=2, seeds=[0, 1], n_action_steps=2, max_steps=150)
    results = evaluate({"expert": _ExpertPolicy("reach-v3")}, cfg, tmp_path,
                       task_maps={"expert": {"reach the goal": 7}}, progress=False)
    rows = {r["group"]: r for r in results["summary"]}
    assert rows["reach-v3"]["success_rate"] == 1.0 and rows["reach-v3"]["n_episodes"] == 4
    assert rows["easy"]["success_rate"] == 1.0 and rows["all"]["nfe"] == 1
    assert 0 < rows["all"]["mean_length"] < 150
    for name in ("results.json", "results.md", "success_vs_latency.png"):
        assert (tmp_path / name).is_file()


def test_eval_temperature_reaches_predict_and_is_checked(tmp_path):
    # catches: EvalConfig.temperature not passed to predict (the decoder would sample at its own temperature);
    # a negative temperature accepted
    policy = _ExpertPolicy("reach-v3")
    cfg = EvalConfig(tasks=["reach-v3"], episodes=1, seeds=[0], max_steps=8, temperature=0.0)
    evaluate({"expert": policy}, cfg, tmp_path, task_maps={"expert": {"reach the goal": 7}}, progress=False)
    assert policy.temperatures == {0.0}
    with pytest.raises(ValueError, match="temperature=-1"):
        EvalConfig(tasks=["reach-v3"], temperature=-1.0)


def test_task_names_and_splits():
    assert len(MT10) == 10 and len(MT50) == 50
    assert {k: len(v) for k, v in DIFFICULTY.items()} == {"easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    assert resolve_tasks("reach-v3,push-v3") == ["reach-v3", "push-v3"]
    assert resolve_tasks("hard")[0] == "assembly-v3" and resolve_tasks("mt10,reach-v3") == list(MT10)
    assert instruction("push-v3") == "push the puck to the goal" and difficulty("stick-pull-v3") == "very_hard"
    from metaworld.policies import ENV_POLICY_MAP

    assert set(MT50) == set(ENV_POLICY_MAP)


def test_unknown_task_raises_listing_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown Meta-World task 'reach-v9'.*reach-v3"):
        MetaWorldEnv("reach-v9")
    with pytest.raises(ValueError, match="valid groups"):
        CollectConfig(tasks=["reach-v3", "bogus"])
    with pytest.raises(ValueError, match="max_steps"):
        MetaWorldEnv("reach-v3", max_steps=501)


def test_image_collection_writes_upright_video(tmp_path):
    try:
        collect(CollectConfig(tasks=["reach-v3"], episodes=1, max_steps=12, success_only=False, image=True),
                tmp_path / "img", progress=False)
    except Exception as err:  # no GL backend on this machine
        pytest.skip(f"rendering unavailable: {err}")
    ds = LeRobotDataset(tmp_path / "img", horizon=4)
    frames = ds.reader.video("observation.images.corner2")
    assert frames.shape == (12, 64, 64, 3)
    assert ds[0]["observation.images.corner2"].shape == (3, 64, 64)
    with MetaWorldEnv("reach-v3", seed=100, image=True, max_steps=12) as env:
        first = env.reset().image
    assert np.abs(frames[0].astype(int) - first.astype(int)).mean() < 6
    # Upright: the top rows are the plain backdrop, the bottom rows the floor, table legs and robot base.
    spread = lambda rows: rows.reshape(-1, 3).std(axis=0).max()  # noqa: E731
    assert spread(first[:4]) < 1.0 < 10.0 < spread(first[-4:])


def test_library_import_does_not_import_metaworld():
    code = ("import sys, driftkit, driftkit.data, driftkit.envs, driftkit.eval, driftkit.envs.collect; "
            "print('metaworld' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_detour_via_point_geometry():
    from driftkit.envs.routes import detour_via_point

    state = np.zeros(39, np.float32)
    state[0:3] = [0.0, 0.6, 0.2]  # hand
    state[36:39] = [0.0, 0.8, 0.2]  # goal straight ahead (+y)
    left = detour_via_point(state, "reach-v3", -1, 0.1)
    right = detour_via_point(state, "reach-v3", 1, 0.1)
    np.testing.assert_allclose(left, [-0.1, 0.7, 0.2], atol=1e-6)  # +y travel: left is -x
    np.testing.assert_allclose(right, [0.1, 0.7, 0.2], atol=1e-6)


def test_collect_cli(tmp_path):
    from typer.testing import CliRunner

    from driftkit.cli import app

    out = tmp_path / "cli"
    args = ["collect", "--tasks", "reach-v3", "--episodes", "1", "--out", str(out), "--max-steps", "150"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "kept    1" in result.output and LeRobotReader(out).tasks == ["reach the goal"]
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "overwrite" in str(again.exception)
    bad = CliRunner().invoke(app, ["collect", "--tasks", "reach-v7", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "reach-v7" in bad.output
