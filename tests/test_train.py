"""Training: typed overrides, the batch order, exact resume, NaN stops, atomic checkpoints, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate.state import AcceleratorState
from typer.testing import CliRunner

from driftkit.policy import StatePolicy, load_policy
from driftkit.train import (
    NonFiniteLossError,
    ResumableBatchSampler,
    SyntheticChunkDataset,
    latest_checkpoint,
    list_checkpoints,
    make_config,
    read_metrics,
    train,
)
from driftkit.train.trainer import build_policy, lr_factor

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; each run in this process starts from a clean one."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def toy(tmp_path, *overrides, name="run"):
    base = [f"output_dir={tmp_path / name}", "progress=false", "data.toy_size=128", "batch_size=16"]
    return make_config("toy", [*base, *overrides])


# ---- configuration ----------------------------------------------------------------------------------
def test_overrides_are_parsed_into_field_types():
    cfg = make_config("toy", ["decoder=drift", "optim.lr=3e-4", "steps=200", "optim.betas=(0.8, 0.9)",
                              "model.decoder_options.train_samples=4", "tensorboard=false", "mixed_precision=bf16"])
    assert cfg.model.decoder == "drift" and cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.schedule.steps == 200 and isinstance(cfg.schedule.steps, int)
    assert cfg.optim.betas == (0.8, 0.9) and cfg.tensorboard is False and cfg.mixed_precision == "bf16"
    assert cfg.model.decoder_options == {"hidden_dim": 64, "depth": 2, "train_samples": 4}
    assert make_config("toy").model.decoder == "flow", "overrides must not mutate the preset"


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", r"unknown key 'lrr' in OptimConfig"),
        ("steps=abc", r"schedule.steps='abc': expected int"),
        ("steps=2.5", r"schedule.steps='2.5': expected int"),
        ("optim.lr=-1", r"optim.lr=-1.0"),
        ("decoder=nope", r"unknown decoder 'nope'"),
        ("tensorboard=maybe", r"tensorboard='maybe': expected a bool"),
        ("mixed_precision=fp8", r"mixed_precision='fp8'"),
        ("no_equals_sign", r"expected KEY=VALUE"),
        ("seed.x=1", r"seed.x"),
    ],
)
def test_bad_overrides_name_the_key_or_value(override, message):
    with pytest.raises(ValueError, match=message):
        make_config("toy", [override])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'nope'.*metaworld-state.*toy"):
        make_config("nope")


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = make_config("toy", ["steps=100", "warmup=10", "schedule.min_lr_ratio=0.1"]).schedule
    f = lr_factor(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.55) and f(100) == pytest.approx(0.1)


# ---- batch order ---------------------------------------------------------------------------------------
def test_batch_order_resumes_where_it_stopped_and_covers_each_epoch():
    full = list(ResumableBatchSampler(50, 8, seed=3, start=0, num_batches=20))  # 6 batches per epoch
    tail = list(ResumableBatchSampler(50, 8, seed=3, start=7, num_batches=13))
    assert tail == full[7:]
    epoch = sum(full[:6], [])
    assert len(set(epoch)) == 48 and all(0 <= i < 50 for i in epoch)
    assert full[:6] != full[6:12], "each epoch should reshuffle"
    with pytest.raises(ValueError, match="fewer than optim.batch_size=64"):
        ResumableBatchSampler(50, 64, 0, 0, 1)


def test_collate_packs_text_as_bytes_and_unpack_restores_it():
    """Strings cross the data loader as uint8 tensors (Accelerate splits tensors, not lists, over processes)."""
    from driftkit.train.data import collate, unpack_text

    items = [{"task": t, "task_index": torch.tensor(i), "action": torch.zeros(2)}
             for i, t in enumerate(["pick up the cube", "", "öffne die Schublade – bitte"])]
    batch = collate(items)
    assert "task" not in batch and batch["task.utf8"].dtype == torch.uint8 and batch["task.utf8"].shape[0] == 3
    assert batch["task_index"].tolist() == [0, 1, 2]
    restored = unpack_text(batch)
    assert restored["task"] == [it["task"] for it in items] and "task.utf8" not in restored
    assert unpack_text({k: v[1:] if torch.is_tensor(v) else v for k, v in batch.items()})["task"] == \
        [it["task"] for it in items[1:]], "a slice of the packed rows (one process's share) unpacks to its rows"


# ---- training ------------------------------------------------------------------------------------------
def test_toy_training_learns_logs_and_saves_a_loadable_policy(tmp_path):
    cfg = toy(tmp_path, "decoder=regression", "steps=60", "log_every=10", "checkpoint_every=30", "lr=3e-3",
              "model.decoder_options.loss_type='l2'")
    result = train(cfg)
    rows = read_metrics(cfg.output_dir)
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    assert all({"loss", "lr", "samples_per_s", "grad_norm"} <= set(r) for r in rows)
    try:
        import torch.utils.tensorboard  # noqa: F401  (optional)
    except ImportError:
        pass
    else:
        assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    data = SyntheticChunkDataset(cfg.data.toy_size, cfg.model, seed=cfg.seed)
    batch = {"observation.state": data.state, "task_index": data.task, "action": data.action,
             "action_is_pad": data.pad}
    untrained = build_policy(cfg, data)
    with torch.no_grad():
        before, after = untrained(batch).loss.item(), result.policy(batch).loss.item()
    assert after < 0.7 * before, (before, after)
    assert result.checkpoint == latest_checkpoint(cfg.output_dir) and result.checkpoint.name == "step_00000060"
    loaded = load_policy(result.checkpoint)
    obs = _obs(cfg)
    assert torch.equal(loaded.predict(obs), result.policy.eval().predict(obs))
    saved = json.loads((result.checkpoint / "config.json").read_text())
    assert saved["train"]["schedule"]["steps"] == 60 and saved["policy"]["decoder"] == "regression"


def _obs(cfg):
    ds = SyntheticChunkDataset(8, cfg.model, seed=1)
    return {"observation.state": ds.state, "task_index": ds.task}


@pytest.mark.parametrize("extra", [["mixed_precision=bf16", "decoder=drift"], ["model.image_size=16"]])
def test_bf16_and_image_runs_train_with_finite_losses(tmp_path, extra):
    cfg = toy(tmp_path, "steps=3", "log_every=1", *extra)
    result = train(cfg)
    losses = [r["loss"] for r in read_metrics(cfg.output_dir)]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert result.policy.config == load_policy(result.checkpoint).config


class Interrupt(Exception):
    pass


def _fail_on_call(monkeypatch, call: int, make):
    """Patch StatePolicy.forward so that its `call`-th invocation returns make(out) (or raises)."""
    original, calls = StatePolicy.forward, {"n": 0}

    def forward(self, batch):
        calls["n"] += 1
        out = original(self, batch)
        return make(out) if calls["n"] == call else out

    monkeypatch.setattr(StatePolicy, "forward", forward)


@pytest.mark.parametrize("decoder", ["flow", "residual_drift"])
def test_interrupted_then_resumed_run_matches_an_uninterrupted_one_bitwise(tmp_path, monkeypatch, decoder):
    args = ["steps=20", "checkpoint_every=5", "log_every=1", f"decoder={decoder}"]
    if decoder == "residual_drift":
        args.append("model.decoder_options.train_samples=4")
    whole = train(toy(tmp_path, *args, name="whole"))
    AcceleratorState._reset_state(reset_partial_state=True)

    def interrupt(out):
        raise Interrupt

    with monkeypatch.context() as m:
        _fail_on_call(m, 13, interrupt)  # dies in step 13, after the step-10 checkpoint
        with pytest.raises(Interrupt):
            train(toy(tmp_path, *args, name="split"))
    assert latest_checkpoint(tmp_path / "split").name == "step_00000010"
    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = train(toy(tmp_path, *args, "resume=latest", name="split"))
    assert resumed.step == 20
    a, b = whole.policy.state_dict(), resumed.policy.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    whole_rows, split_rows = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in split_rows] == list(range(1, 21)), "steps 11-12 of the dead run must be dropped"
    assert [r["loss"] for r in split_rows] == [r["loss"] for r in whole_rows]


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    _fail_on_call(monkeypatch, 8, lambda out: type(out)(out.loss * float("nan"), out.metrics))
    cfg = toy(tmp_path, "steps=20", "checkpoint_every=5")
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 8 .*step_00000005"):
        train(cfg)
    assert [p.name for p in list_checkpoints(cfg.output_dir)] == ["step_00000005"]
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
    load_policy(latest_checkpoint(cfg.output_dir))  # the survivor is complete


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from accelerate import Accelerator

    original, calls = Accelerator.save_state, {"n": 0}

    def save_state(self, *args, **kwargs):
        calls["n"] += 1
        original(self, *args, **kwargs)
        if calls["n"] == 3:
            raise OSError("disk full")

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    cfg = toy(tmp_path, "steps=20", "checkpoint_every=5", "keep_checkpoints=1")
    with pytest.raises(OSError, match="disk full"):
        train(cfg)
    assert [p.name for p in list_checkpoints(cfg.output_dir)] == ["step_00000010"]
    load_policy(latest_checkpoint(cfg.output_dir))


def test_keep_checkpoints_prunes_only_older_complete_ones(tmp_path):
    cfg = toy(tmp_path, "steps=12", "checkpoint_every=3", "keep_checkpoints=2")
    train(cfg)
    assert [p.name for p in list_checkpoints(cfg.output_dir)] == ["step_00000009", "step_00000012"]
    AcceleratorState._reset_state(reset_partial_state=True)
    older = tmp_path / "run" / "checkpoints" / "step_00000009"
    with pytest.raises(FileExistsError, match=r"holds step_00000012, newer than the resume point \(step 9\)"):
        train(toy(tmp_path, "steps=20", "checkpoint_every=3", f"resume={older}"))
    AcceleratorState._reset_state(reset_partial_state=True)
    branch = train(toy(tmp_path, "steps=15", "checkpoint_every=3", f"resume={older}", name="branch"))
    assert [p.name for p in list_checkpoints(tmp_path / "branch")] == ["step_00000012", "step_00000015"]
    assert branch.step == 15


def test_resuming_with_another_decoder_names_both(tmp_path):
    train(toy(tmp_path, "steps=3", "decoder=flow"))
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ValueError, match=r"decoder 'flow', but the config asks for decoder 'drift'"):
        train(toy(tmp_path, "steps=6", "decoder=drift", "resume=latest"))


def test_a_fresh_run_refuses_a_directory_with_checkpoints_and_resume_accepts_tuples(tmp_path):
    args = ["steps=3", "decoder=drift", "model.decoder_options.temperatures=(0.05, 0.2)"]
    train(toy(tmp_path, *args))
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(FileExistsError, match=r"already holds checkpoints \(newest: step_00000003\)"):
        train(toy(tmp_path, *args))
    AcceleratorState._reset_state(reset_partial_state=True)
    assert train(toy(tmp_path, "steps=5", *args[1:], "resume=latest")).step == 5
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ValueError, match=r"at step 5 and schedule.steps=5: nothing to train"):
        train(toy(tmp_path, "steps=5", *args[1:], "resume=latest"))
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ValueError, match=r"hidden_dim: checkpoint 64 vs config 32"):
        train(toy(tmp_path, "steps=9", *args[1:], "model.hidden_dim=32", "resume=latest"))


def test_dataset_that_disagrees_with_the_config_names_both_shapes(tmp_path):
    cfg = toy(tmp_path, "steps=2")
    other = make_config("toy", ["model.state_dim=5"]).model
    with pytest.raises(ValueError, match=r"observation.state has shape \[5\].*expects \[8\] \(model.state_dim\)"):
        train(cfg, dataset=SyntheticChunkDataset(64, other))


# ---- command line ----------------------------------------------------------------------------------------
def test_cli_lists_presets_trains_and_reports_bad_keys(tmp_path):
    from driftkit.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["train", "--list-presets"])
    assert listed.exit_code == 0 and "toy" in listed.output and "metaworld-state" in listed.output
    out = tmp_path / "cli"
    ran = runner.invoke(app, ["train", "--preset", "toy", "--set", "steps=4", "--set", f"output_dir={out}",
                              "--set", "progress=false", "--set", "decoder=drift"])
    assert ran.exit_code == 0, ran.output
    assert latest_checkpoint(out).name == "step_00000004"
    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = runner.invoke(app, ["train", "--preset", "toy", "--set", "steps=6", "--set", f"output_dir={out}",
                                  "--set", "progress=false", "--set", "decoder=drift", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "trained 6 steps" in resumed.output
    AcceleratorState._reset_state(reset_partial_state=True)
    # Without --preset, --resume continues with the config saved in the checkpoint (decoder=drift).
    again = runner.invoke(app, ["train", "--resume", "--set", f"output_dir={out}", "--set", "steps=8"])
    assert again.exit_code == 0, again.output
    assert json.loads((latest_checkpoint(out) / "config.json").read_text())["policy"]["decoder"] == "drift"
    assert latest_checkpoint(out).name == "step_00000008"
    bad = runner.invoke(app, ["train", "--preset", "toy", "--set", "optim.lrr=1"])
    assert bad.exit_code != 0 and "lrr" in bad.output


# ---- LeRobot data ----------------------------------------------------------------------------------------
def _write_lerobot(root, with_video: bool):
    import numpy as np

    from driftkit.data import Feature, LeRobotWriter

    features = {"observation.state": Feature("float32", (5,)), "action": Feature("float32", (2,))}
    if with_video:
        features["observation.images.cam"] = Feature("video", (16, 16, 3))
    rng = np.random.default_rng(0)
    with LeRobotWriter(root, fps=10, features=features) as writer:
        for ep, n in enumerate((12, 9, 15)):
            frames = {"observation.state": rng.normal(size=(n, 5)), "action": rng.uniform(-1, 1, size=(n, 2))}
            if with_video:
                frames["observation.images.cam"] = rng.integers(0, 255, size=(n, 16, 16, 3), dtype=np.uint8)
            writer.add_episode(frames, task=f"task {ep % 2}")


@pytest.mark.parametrize("with_video", [False, True])
def test_trains_from_a_local_lerobot_dataset(tmp_path, with_video):
    _write_lerobot(tmp_path / "ds", with_video)
    overrides = ["data.source=lerobot", f"data.root={tmp_path / 'ds'}", "model.state_dim=5", "model.action_dim=2",
                 "horizon=4", "model.num_tasks=2", "steps=3", "batch_size=8"]
    if with_video:
        overrides.append("model.image_size=16")
    cfg = toy(tmp_path, *overrides)
    from driftkit.data.lerobot import LeRobotDataset

    data = LeRobotDataset(cfg.data.root, horizon=4)
    assert len(data) == 36
    last = data[11]  # the last frame of episode 0: one real action, then padding
    assert last["action_is_pad"].tolist() == [False, True, True, True]
    assert data[12]["task_index"] == 1 and data[12]["task"] == "task 1"
    torch.testing.assert_close(data[3]["action"][1], data[4]["action"][0])
    if with_video:
        assert data[0]["observation.images.cam"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match=r"2 tasks but model.num_tasks=1"):
        train(toy(tmp_path, *overrides, "model.num_tasks=1", name="one_task"))
    AcceleratorState._reset_state(reset_partial_state=True)
    result = train(cfg)
    assert result.step == 3 and result.last_loss is not None
    policy = load_policy(result.checkpoint)
    expected = torch.as_tensor(data.stats["action"]["mean"], dtype=torch.float32)
    torch.testing.assert_close(policy.decoder.normalizer.mean, expected)
