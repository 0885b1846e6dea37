"""The MT10 benchmark (benchmarks/metaworld_mt10.py) in miniature, through the `driftkit` command line:
collect reach-v3 demonstrations, train flow and drift for a few steps, evaluate both (and the flow checkpoint
truncated to one step, and drift with KeyStone), then check the result files. Plus the bad inputs the
benchmark can meet: an unknown task, a dataset that disagrees with the model config, a checkpoint whose
weights come from another decoder. Tiny nets and short episodes keep the file well under a minute."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
from accelerate.state import AcceleratorState
from typer.testing import CliRunner

pytest.importorskip("metaworld")

from driftkit.cli import app  # noqa: E402
from driftkit.train.checkpoint import latest_checkpoint  # noqa: E402

TINY = ["model.num_tasks=1", "model.hidden_dim=32", "model.cond_dim=32", "model.task_embed_dim=8",
        "model.decoder_options.hidden_dim=32", "model.decoder_options.depth=1", "steps=4", "warmup=1",
        "batch_size=16", "checkpoint_every=4", "progress=false", "tensorboard=false"]
EVAL = ["--tasks", "reach-v3", "--episodes", "2", "--seeds", "0", "--max-steps", "24"]


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    AcceleratorState._reset_state(reset_partial_state=True)  # the next `train` builds its own Accelerator
    return result


def train_args(decoder: str, data, out, *extra: str) -> list[str]:
    sets = [f"decoder={decoder}", f"data.root={data}", f"output_dir={out}", *TINY, *extra]
    return ["train", "--preset", "metaworld-state", *[a for s in sets for a in ("--set", s)]]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The benchmark's pipeline on one task: collect -> train flow and drift -> evaluate both together."""
    root = tmp_path_factory.mktemp("mt10")
    data = root / "data"
    collected = invoke("collect", "--tasks", "reach-v3", "--episodes", "2", "--noise-std", "0.1",
                       "--alt-path-prob", "0.5", "--max-steps", "150", "--out", data)
    assert collected.exit_code == 0, collected.output
    runs = {}
    for decoder in ("flow", "drift"):
        trained = invoke(*train_args(decoder, data, root / decoder))
        assert trained.exit_code == 0, trained.output
        runs[decoder] = root / decoder
    evaluated = invoke("eval", "--checkpoint", runs["flow"], "--checkpoint", runs["drift"], *EVAL,
                       "--out", root / "eval")
    assert evaluated.exit_code == 0, evaluated.output
    return {"root": root, "data": data, "runs": runs, "eval": root / "eval", "output": evaluated.output}


def rows_of(results: dict) -> dict[tuple[str, str], dict]:
    return {(r["decoder"], r["group"]): r for r in results["summary"]}


def test_results_hold_success_with_se_nfe_and_ms_per_task_and_decoder(bench):
    out = bench["eval"]
    results = json.loads((out / "results.json").read_text())
    rows = rows_of(results)
    for decoder, nfe in (("flow", 10), ("drift", 1)):
        for group in ("reach-v3", "easy", "all"):
            row = rows[(decoder, group)]
            assert row["n_episodes"] == 2 and 0.0 <= row["success_rate"] <= 1.0
            p = row["success_rate"]
            assert row["success_se"] == pytest.approx(math.sqrt(p * (1 - p) / 2))
            assert row["nfe"] == nfe
            assert row["chunk_ms_median"] > 0
            assert 0 < row["mean_length"] <= 24
    assert {(e["decoder"], e["task"]) for e in results["episodes"]} == {("flow", "reach-v3"), ("drift", "reach-v3")}
    assert results["config"]["max_steps"] == 24 and results["config"]["tasks_resolved"] == ["reach-v3"]
    table = (out / "results.md").read_text()
    assert "| flow | reach-v3 | 1 | 2 |" in table and "| drift | reach-v3 | 1 | 2 |" in table
    assert "± SE" in table and "NFE/chunk" in table and "ms/chunk" in table
    assert (out / "success_vs_latency.png").read_bytes()[:4] == b"\x89PNG"
    assert "flow" in bench["output"] and "success" in bench["output"]


def test_one_checkpoint_evaluated_two_ways(bench):
    """The benchmark's flow-1 (same checkpoint, --steps 1) and drift + KeyStone (--num-samples 8, another
    sampling-noise seed)."""
    root, runs = bench["root"], bench["runs"]
    flow1 = invoke("eval", "--checkpoint", runs["flow"], *EVAL, "--steps", "1", "--out", root / "flow1")
    assert flow1.exit_code == 0, flow1.output
    assert rows_of(json.loads((root / "flow1" / "results.json").read_text()))[("flow", "all")]["nfe"] == 1
    keystone = invoke("eval", "--checkpoint", runs["drift"], *EVAL, "--num-samples", "8", "--select", "keystone",
                      "--sample-seed", "3", "--out", root / "keystone")
    assert keystone.exit_code == 0, keystone.output
    results = json.loads((root / "keystone" / "results.json").read_text())
    assert results["config"]["num_samples"] == 8 and results["config"]["select"] == "keystone"
    assert results["config"]["sample_seed"] == 3  # the noise seed reaches the evaluation and its record
    assert rows_of(results)[("drift", "reach-v3")]["n_episodes"] == 2


def test_eval_of_an_unknown_task_names_it(bench):
    bad = invoke("eval", "--checkpoint", bench["runs"]["flow"], "--tasks", "reach-v3,reach-v9",
                 "--out", bench["root"] / "bad")
    assert bad.exit_code != 0
    assert "reach-v9" in bad.output and "reach-v3" in bad.output  # the bad name and the valid ones
    assert not (bench["root"] / "bad").exists()


@pytest.mark.parametrize("override, message", [
    ("model.action_dim=3", r"action has shape \[16, 4\], but the model config expects \[16, 3\]"),
    ("model.state_dim=40", r"observation.state has shape \[39\], but the model config expects \[40\]"),
])
def test_metaworld_dataset_that_disagrees_with_the_config_names_both_shapes(bench, override, message):
    out = bench["root"] / f"bad_{override.split('=')[0]}"
    result = invoke(*train_args("flow", bench["data"], out, override))
    assert result.exit_code != 0 and isinstance(result.exception, ValueError)
    assert re.search(message, str(result.exception)), str(result.exception)
    assert latest_checkpoint(out) is None  # nothing was trained or saved


# Resuming or loading with another decoder's config is tested in test_train.py / test_policy.py; what is missing
# is a checkpoint folder whose config.json and weights disagree (e.g. weights copied over from another run).
def test_a_checkpoint_holding_another_decoders_weights_is_refused(bench):
    flow_ckpt = latest_checkpoint(bench["runs"]["flow"])
    mixed = bench["root"] / "mixed" / flow_ckpt.name
    shutil.copytree(flow_ckpt, mixed)
    shutil.copy(latest_checkpoint(bench["runs"]["drift"]) / "model.safetensors", mixed / "model.safetensors")
    result = invoke("eval", "--checkpoint", mixed, *EVAL, "--out", bench["root"] / "mixed_eval")
    assert result.exit_code != 0
    assert "drift" in str(result.exception) and "flow" in str(result.exception)
