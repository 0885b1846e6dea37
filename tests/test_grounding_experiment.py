"""The grounding experiment runner and `driftkit ground`: spec parsing, post-processing, an end-to-end smoke run
per task (results.json carries every metric of every evaluation variant), determinism, and clear errors."""

import json

import pytest
import torch

from driftkit.grounding.evaluate import postprocess
from driftkit.grounding.experiment import (
    DECODER_SPECS, TEXT_LABEL, GroundingExperimentConfig, backbone_input_size, build_datasets, parse_decoder_spec,
    run_experiment, run_text_answers, train_config,
)

TINY = dict(steps=2, batch_size=4, train_size=8, test_size=6, eval_batch_size=4, latency_repeats=1, log_every=1,
            hidden_dim=16, depth=1)
METRICS = {"spatial": ["Acc@0.5", "Acc@0.75", "Acc@0.9", "mIoU"],
           "temporal": ["R@1 IoU=0.3", "R@1 IoU=0.5", "R@1 IoU=0.7", "mIoU"]}


def test_named_specs_parse_to_registered_decoders():
    got = {s: (parse_decoder_spec(s).name, parse_decoder_spec(s).options) for s in DECODER_SPECS}
    assert got == {
        "regression": ("regression", {}), "lm_tokens": ("lm_tokens", {}), "flow": ("flow", {}),
        "residual_flow[regression]": ("residual_flow", {"base": "regression"}),
        "residual_flow[lm_tokens]": ("residual_flow", {"base": "lm_tokens"}),
        "residual_drift": ("residual_drift", {}),
    }


@pytest.mark.parametrize("spec, named", [
    ("residual_flw", "residual_flw"), ("regression[tokens]", "regression"), ("residual_flow[nope]", "nope"),
    ("residual_flow[residual_drift]", "residual_drift"), ("flow[", "flow["), ("", "''"),
])
def test_bad_decoder_specs_raise_naming_the_value(spec, named):
    with pytest.raises(ValueError, match=named.replace("[", r"\[")):
        parse_decoder_spec(spec)
    with pytest.raises(ValueError, match=named.replace("[", r"\[")):
        GroundingExperimentConfig(decoder=spec)


def test_bad_config_values_raise_naming_the_value():
    with pytest.raises(ValueError, match="'video'"):
        GroundingExperimentConfig(task="video")
    with pytest.raises(ValueError, match="'qwen9-huge'"):
        GroundingExperimentConfig(backbone="qwen9-huge")
    with pytest.raises(ValueError, match="steps=0"):
        GroundingExperimentConfig(steps=0)
    with pytest.raises(ValueError, match="batch_size=64 > train_size=8"):
        GroundingExperimentConfig(batch_size=64, train_size=8)


def test_backbone_input_follows_the_generated_image():
    """The backbone sees the generated side rounded down to its family's patch multiple, so a 4 x 4 grid of
    28-pixel frames with no gap is 112 pixels: one 28-pixel Qwen token per frame."""
    grid = GroundingExperimentConfig(task="temporal", num_frames=16, frame_size=28, frame_gap=0)
    assert backbone_input_size(grid) == 112
    gapped = GroundingExperimentConfig(task="temporal", num_frames=16, frame_size=32, frame_gap=2)  # 134 pixels
    assert backbone_input_size(gapped) == 112
    pali = GroundingExperimentConfig(task="spatial", image_size=100, backbone="paligemma-tiny")
    assert backbone_input_size(pali) == 96
    assert backbone_input_size(GroundingExperimentConfig(image_size=100, input_size=56)) == 56
    cfg = GroundingExperimentConfig(task="temporal", frame_size=28, frame_gap=0, **{**TINY, "train_size": 4})
    train, _ = build_datasets(cfg)
    assert train[0]["images"].size == (112, 112)
    from driftkit.policy import make_policy

    assert make_policy(train_config(cfg, "unused").model).backbone.image_size == 112


def test_kinds_pick_the_spatial_level():
    cfg = GroundingExperimentConfig(kinds=["single"], **TINY)
    assert cfg.kinds == ("single",)
    train, _ = build_datasets(cfg)
    assert {ex.kind for ex in train.examples} == {"single"}


def test_postprocess_clips_then_sorts_each_pair():
    pred = torch.tensor([[0.7, 0.2], [-0.1, 1.3], [0.2, 0.4]])
    fixed, clipped, reordered = postprocess(pred)
    assert torch.equal(fixed, torch.tensor([[0.2, 0.7], [0.0, 1.0], [0.2, 0.4]]))
    assert (clipped, reordered) == (1, 1)
    boxes, clipped, reordered = postprocess(torch.tensor([[0.5, 0.6, 0.1, 0.9], [1.2, 0.1, 0.3, 0.2]]))
    # x pairs (x1, x2) and y pairs (y1, y2) are sorted independently; 1.2 is clipped to 1 first
    assert torch.allclose(boxes, torch.tensor([[0.1, 0.6, 0.5, 0.9], [0.3, 0.1, 1.0, 0.2]]))
    assert (clipped, reordered) == (1, 2)


@pytest.mark.parametrize("task, spec, labels, nfes", [
    ("spatial", "residual_flow[lm_tokens]",
     ["residual_flow[lm_tokens]", "residual_flow[lm_tokens] T=0", "residual_flow[lm_tokens] base"], [11, 11, 1]),
    ("temporal", "regression", ["regression"], [1]),
])
def test_end_to_end_results_json_has_every_metric(tmp_path, task, spec, labels, nfes):
    results = run_experiment(GroundingExperimentConfig(task=task, decoder=spec, **TINY), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["evaluations"] == json.loads(json.dumps(results["evaluations"]))
    assert [e["label"] for e in saved["evaluations"]] == labels
    assert [e["nfe"] for e in saved["evaluations"]] == nfes
    for ev in saved["evaluations"]:
        assert list(ev["metrics"]) == METRICS[task]
        assert all(0.0 <= v <= 100.0 for v in ev["metrics"].values())
        assert ev["metrics"]["mIoU"] == pytest.approx(100 * ev["scores"]["mean_iou"])
        assert ev["scores"]["num_examples"] == TINY["test_size"]
        assert ev["scores"]["num_invalid"] == 0  # post-processing leaves only valid intervals/boxes
        assert ev["ms_per_prediction"] > 0 and ev["latency_ms"] > 0
    assert saved["train"]["steps"] == TINY["steps"] and saved["config"]["task"] == task
    if "temperature" in saved["decoder_config"]:  # the T=0 evaluation leaves the decoder's own setting in place
        assert saved["decoder_config"]["temperature"] == 1.0
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, 2]


def test_same_seed_same_results_other_seed_other_weights(tmp_path):
    def run(seed, name):
        cfg = GroundingExperimentConfig(task="temporal", decoder="flow", seed=seed, **{**TINY, "latency_repeats": 0})
        return run_experiment(cfg, tmp_path / name)

    a, b, c = run(0, "a"), run(0, "b"), run(1, "c")
    assert a["train"]["final_loss"] == b["train"]["final_loss"]
    assert [e["metrics"] for e in a["evaluations"]] == [e["metrics"] for e in b["evaluations"]]
    assert a["train"]["final_loss"] != c["train"]["final_loss"]


def test_cli_runs_and_rejects_bad_input(tmp_path):
    from typer.testing import CliRunner

    from driftkit.cli import app

    runner = CliRunner()
    sets = [a for k, v in TINY.items() if k != "steps" for a in ("--set", f"{k}={v}")]
    ok = runner.invoke(app, ["ground", "--task", "temporal", "--decoder", "lm_tokens", "--steps", "2", "--seed", "1",
                             "--out", str(tmp_path / "run"), *sets])
    assert ok.exit_code == 0, ok.output
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (saved["decoder"], saved["seed"], saved["config"]["train_size"]) == ("lm_tokens", 1, 8)
    for args, named in ((["--task", "video"], "video"), (["--decoder", "residual_flow[bogus]"], "bogus"),
                        (["--set", "nonsense=1"], "nonsense")):
        bad = runner.invoke(app, ["ground", *args, "--out", str(tmp_path / "bad")])
        assert bad.exit_code != 0 and named in bad.output
        assert not (tmp_path / "bad" / "results.json").exists()


def test_a_text_pretrained_checkpoint_is_asked_its_own_questions(tmp_path):
    """A local checkpoint (an exported text-interface VLM) is a backbone like a preset: the datasets ask the
    question template it was pretrained with, its processor's size is kept, and a run trains end to end.
    Mutations caught: the checkpoint refused by the preset check; its questions ignored (bare expressions);
    a preset image_size passed for a checkpoint (the policy config refuses it); a plain checkpoint without the
    answers file given the pretraining template. The text-answer row scores the checkpoint's own answers."""
    from driftkit.grounding.pretrain_model import ModelSize, export_checkpoint, init_checkpoint
    from driftkit.policy import TextPolicy, TextPolicyConfig

    size = ModelSize(family="qwen2_5_vl", width=48, depth=1, heads=4, kv_heads=2, mlp=96, vision_width=32,
                     vision_heads=2)
    init = init_checkpoint(tmp_path / "init", size, image_size=56)
    exported = export_checkpoint(TextPolicy(TextPolicyConfig(backbone=str(init), mode="full")), tmp_path / "vlm")
    for task, field_, asked in (("spatial", "expression", "Locate "), ("temporal", "query", "")):
        cfg = GroundingExperimentConfig(task=task, backbone=str(exported), image_size=56, frame_size=32, frame_gap=0,
                                        **TINY)
        assert backbone_input_size(cfg) is None and "{" + field_ + "}" in cfg.prompt()
        train_data, _ = build_datasets(cfg)
        assert train_data[0]["prompts"].startswith(asked)
    assert cfg.prompt() == "{query}?" and train_data[0]["prompts"].endswith("?")
    plain = GroundingExperimentConfig(backbone=str(init), image_size=56, **TINY)
    assert plain.prompt() == "{expression}"
    spatial = GroundingExperimentConfig(backbone=str(exported), image_size=56, **{**TINY, "latency_repeats": 0})
    results = run_experiment(spatial, tmp_path / "run")
    assert results["train"]["steps"] == TINY["steps"] and results["evaluations"][0]["scores"]["num_examples"] == 6
    text = run_text_answers(spatial, tmp_path / "text")
    assert [e["label"] for e in text["evaluations"]] == [TEXT_LABEL] and text["train"] is None
    assert text["evaluations"][0]["nfe"] == 48 and text["evaluations"][0]["scores"]["num_examples"] == 6
    assert json.loads((tmp_path / "text" / "results.json").read_text())["decoder"] == "text"
    assert run_text_answers(plain, tmp_path / "none") is None  # nothing recorded to ask it with
    with pytest.raises(ValueError, match=r"input_size=56 with the checkpoint"):
        GroundingExperimentConfig(backbone=str(exported), input_size=56)
    with pytest.raises(ValueError, match=r"backbone='/no/such/dir': neither a preset"):
        GroundingExperimentConfig(backbone="/no/such/dir")


def test_frames_layout_trains_on_one_camera_per_frame_after_its_timestamp(tmp_path):
    """frame_layout="frames": each frame is a camera (actions.frame_cameras) of the frame's side, and the
    backbone puts each frame's timestamp before it. Mutations caught: the grid image still given; frames
    shuffled against their cameras; timestamps missing from the policy's backbone; the grid's side used."""
    from driftkit.grounding.actions import GroundingActions, frame_cameras, frame_labels, image_tensor, observations
    from driftkit.policy import load_policy

    cfg = GroundingExperimentConfig(task="temporal", frame_layout="frames", num_frames=6, frame_size=32,
                                    backbone="qwen3_vl-tiny", **{**TINY, "latency_repeats": 0})
    assert cfg.cameras() == tuple(frame_cameras(6)) and backbone_input_size(cfg) == 32
    assert cfg.backbone_options() == {"image_labels": ("<0.0 seconds>", "<2.7 seconds>", "<5.3 seconds>",
                                                       "<8.0 seconds>", "<10.7 seconds>", "<13.3 seconds>")}
    train, test = build_datasets(cfg)
    item, raw = GroundingActions(train, frames=True)[0], train[0]
    for cam, frame in zip(frame_cameras(6), raw["frames"], strict=True):
        assert item[cam].shape == (3, 32, 32)
        assert torch.equal(item[cam], image_tensor(frame))
    obs = observations([test[0], test[1]], frame_cameras(6))
    assert obs[frame_cameras(6)[5]].shape == (2, 3, 32, 32) and len(obs["task"]) == 2
    with pytest.raises(ValueError, match=r"for an item with 6 frames; use \['observation.images.frame'\]"):
        observations([test[0]], frame_cameras(9))
    results = run_experiment(cfg, tmp_path)
    policy = load_policy(results["train"]["checkpoint"])
    assert policy.config.cameras == tuple(frame_cameras(6))
    assert policy.backbone.config.image_labels == frame_labels(6, 16.0)
    assert results["evaluations"][0]["scores"]["num_examples"] == TINY["test_size"]
    grid = GroundingExperimentConfig(task="temporal", num_frames=6, frame_size=32)
    assert grid.cameras() == ("observation.images.frame",) and grid.backbone_options() == {}
    with pytest.raises(ValueError, match=r"frame_layout='tiles'"):
        GroundingExperimentConfig(task="temporal", frame_layout="tiles")


def test_extents_benchmark_redraws_the_logged_evaluations_and_refuses_a_mismatch(tmp_path):
    from bench_helpers import benchmark

    extents = benchmark("grounding_extents")
    cfg = GroundingExperimentConfig(task="temporal", decoder="flow", **{**TINY, "latency_repeats": 0})
    run_experiment(cfg, tmp_path / "run")
    extents.main(["--runs", str(tmp_path / "run"), "--threads", "1", "--out", str(tmp_path / "extents")])
    rows = json.loads((tmp_path / "extents.json").read_text())["rows"]
    logged = json.loads((tmp_path / "run" / "results.json").read_text())["evaluations"]
    assert [(r["label"], r["metrics"]) for r in rows] == [(e["label"], e["metrics"]) for e in logged]
    assert all(set(r["extents"]) == {"lo_error", "hi_error", "size_ratio", "centre_error"} for r in rows)
    assert "| flow T=0 | 0 |" in (tmp_path / "extents.md").read_text()

    results = json.loads((tmp_path / "run" / "results.json").read_text())
    results["evaluations"][0]["metrics"]["mIoU"] += 1.0  # as if another checkpoint had been scored
    (tmp_path / "run" / "results.json").write_text(json.dumps(results))
    with pytest.raises(RuntimeError, match=r"run flow: redrawn metrics .* differ from the logged"):
        extents.inspect_run(tmp_path / "run")
