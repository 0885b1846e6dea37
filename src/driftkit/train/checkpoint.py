"""Training checkpoints: one directory per step under <output_dir>/checkpoints/, written atomically.

    step_00000500/
        config.json          the policy config + the TrainConfig (driftkit.policy.load_policy reads it)
        model.safetensors    weights (Accelerate's save_state)
        <assets>             what the policy kind needs to rebuild (Policy.save_assets), as in a saved policy
        optimizer.bin  scheduler.bin  random_states_<rank>.pkl   (torch / numpy / python / cuda RNG)
        trainer_state.json   step and data position; written last, so its presence marks a complete dir

A checkpoint is written to a hidden temporary directory, flushed to disk, then renamed into place;
older checkpoints are removed only after the new one is complete, keeping `keep` of them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate.utils import DistributedType
from safetensors.torch import save_file

from driftkit.atomic import fsync_tree, replace_dir
from driftkit.policy.base import CONFIG_NAME, WEIGHTS_NAME, read_policy_config
from driftkit.policy.config import PolicyConfig

STATE_NAME = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class TrainerState:
    """What besides Accelerate's state a resumed run needs."""

    step: int
    """Optimiser updates done; the data position is batch `step` of the run's batch order."""
    dataset_size: int
    """Length of the dataset the order was drawn over (a resumed run must see the same data)."""
    global_batch_size: int
    """Global batch size of the run."""
    last_loss: float | None = None
    """Mean training loss (over processes) of this step."""


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under output_dir, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / STATE_NAME).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_resume(resume: str, output_dir: str | os.PathLike) -> Path | None:
    """'' -> None; 'latest' -> newest complete checkpoint in output_dir (None if there is none); else a path."""
    if not resume:
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / STATE_NAME).is_file():
        raise FileNotFoundError(f"resume={resume!r} is not a complete checkpoint directory (no {STATE_NAME})")
    return path


def resolve_policy_dir(path: str | os.PathLike) -> Path:
    """A checkpoint or policy folder as given, or a run's output_dir -> its newest complete checkpoint."""
    path = Path(path)
    if (path / CONFIG_NAME).is_file():
        return path
    newest = latest_checkpoint(path)
    if newest is None:
        raise FileNotFoundError(f"{path} holds neither {CONFIG_NAME} nor complete checkpoints/step_* folders")
    return newest


def training_task_map(path: str | os.PathLike, num_tasks: int, dataset: str | os.PathLike | None = None
                      ) -> dict[str, int] | None:
    """instruction -> task_index of the data a checkpoint was trained on: `dataset`, or the LeRobot dataset its
    config.json names. None for a single-task policy whose config names none; a multi-task one raises."""
    from driftkit.data import task_index_map

    if dataset is None:
        data = json.loads((Path(path) / CONFIG_NAME).read_text()).get("train", {}).get("data", {})
        dataset = data["root"] if data.get("source") == "lerobot" and data.get("root") else None
    if dataset is not None:
        return task_index_map(dataset)
    if num_tasks > 1:
        raise ValueError(f"{path} was trained on several tasks but its config names no LeRobot dataset; pass "
                         "--dataset DIR (the training data) to map tasks to task_index")
    return None


def read_train_config(path: str | os.PathLike) -> dict:
    """The TrainConfig dict stored in a checkpoint's config.json."""
    data = json.loads((Path(path) / CONFIG_NAME).read_text())
    if "train" not in data:
        raise ValueError(f"{Path(path) / CONFIG_NAME} holds no training config (is it an exported policy?)")
    return data["train"]


def read_trainer_state(path: str | os.PathLike) -> TrainerState:
    return TrainerState(**json.loads((Path(path) / STATE_NAME).read_text()))


def check_compatible(path: str | os.PathLike, model: PolicyConfig) -> None:
    """Resuming into a different policy would load weights into the wrong modules: name what differs."""
    kind, saved = read_policy_config(path)
    if kind != model.kind:
        raise ValueError(f"checkpoint {path} holds a {kind!r} policy ({saved.decoder!r} decoder), but the config "
                         f"asks for a {model.kind!r} policy ({model.decoder!r} decoder)")
    if saved.decoder != model.decoder:
        raise ValueError(f"checkpoint {path} was trained with decoder {saved.decoder!r}, "
                         f"but the config asks for decoder {model.decoder!r}")
    # Compare as JSON: config.json has lists where a live config may hold tuples.
    mine = json.loads(json.dumps(model.to_dict()))
    diff = {k: (v, mine[k]) for k, v in json.loads(json.dumps(saved.to_dict())).items() if mine[k] != v}
    if diff:
        shown = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {path} has a different model config: {shown}")


def save_checkpoint(accelerator, model, output_dir, state: TrainerState, train_config: dict, keep: int) -> Path:
    """Every process calls this (Accelerate gathers sharded state); the main process renames and prunes.
    The directory holds what Policy.save_pretrained writes (config.json, weights, assets) plus the training
    state, so load_policy opens a checkpoint like an exported policy."""
    root = checkpoint_root(output_dir)
    final = root / f"step_{state.step:08d}"
    tmp = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a run killed while saving
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    # FSDP/DeepSpeed save_state writes sharded weights; load_policy reads one model.safetensors (untested here).
    full = None
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        full = accelerator.get_state_dict(model)  # collective: every process takes part
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if full is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in full.items()}, str(tmp / WEIGHTS_NAME))
        accelerator.unwrap_model(model).write_files(tmp, weights=False, train=train_config)
        (tmp / STATE_NAME).write_text(json.dumps(asdict(state), indent=2))
        fsync_tree(tmp)
        replace_dir(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
