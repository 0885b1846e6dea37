"""Two processes under `accelerate launch` (gloo on CPU) take the same steps as one process with the
same global batch: each process trains on half of every batch and DDP averages the gradients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from driftkit.train import latest_checkpoint, make_config, read_metrics, train

torch.set_num_threads(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "driftkit.cli", "train", "--preset", "toy"]
    for a in args:
        cmd += ["--set", a]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_two_process_run_matches_one_process_with_the_same_global_batch(tmp_path):
    # Regression draws no noise, and the trainer weights each process's masked-mean loss by its share of
    # real (unpadded) actions, so the runs must agree up to float rounding even with padded chunks.
    common = ["decoder=regression", "steps=8", "batch_size=16", "data.toy_size=64", "data.toy_padding=true",
              "log_every=1", "checkpoint_every=8", "progress=false", "cpu=true"]
    run = _launch_two([*common, f"output_dir={tmp_path / 'two'}"])
    assert run.returncode == 0, run.stderr[-3000:]
    two = latest_checkpoint(tmp_path / "two")
    assert (two / "random_states_1.pkl").is_file(), "the second process did not join the run"

    AcceleratorState._reset_state(reset_partial_state=True)
    one = train(make_config("toy", [*common, f"output_dir={tmp_path / 'one'}"]))
    AcceleratorState._reset_state(reset_partial_state=True)

    losses_two = [r["loss"] for r in read_metrics(tmp_path / "two")]
    losses_one = [r["loss"] for r in read_metrics(tmp_path / "one")]
    assert len(losses_two) == len(losses_one) == 8
    assert losses_two == pytest.approx(losses_one, abs=1e-5)
    w_two, w_one = load_file(str(two / "model.safetensors")), load_file(str(one.checkpoint / "model.safetensors"))
    assert w_two.keys() == w_one.keys()
    for key in w_one:
        torch.testing.assert_close(w_two[key], w_one[key], atol=1e-5, rtol=0, msg=key)
