"""The training loop, on Hugging Face Accelerate: the same code runs on a CPU, one GPU, or many
processes/machines under `accelerate launch` (DDP or FSDP, as configured there).

    result = driftkit.train.train(make_config("toy", ["steps=50"]))

The global batch (optim.batch_size) is split over the processes, and each process's loss is weighted by
its share of the batch's real (unpadded) actions, so N processes take the same optimiser steps on the same
samples as one process; only the decoders' noise draws differ (process i seeds its noise with seed + i).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from driftkit.policy import POLICIES, Policy
from driftkit.policy.keys import ACTION_PAD_KEY
from driftkit.train.checkpoint import (
    TrainerState,
    check_compatible,
    latest_checkpoint,
    read_trainer_state,
    resolve_resume,
    save_checkpoint,
)
from driftkit.train.config import ScheduleConfig, TrainConfig
from driftkit.train.data import ResumableBatchSampler, build_dataset, check_dataset, collate, unpack_text
from driftkit.train.metrics import MetricsLogger


class NonFiniteLossError(FloatingPointError):
    """Raised when a training step produces a NaN/inf loss or gradient; nothing is saved for that step."""


@dataclass
class TrainResult:
    policy: Policy
    """The trained policy (unwrapped from any DDP/FSDP wrapper)."""
    step: int
    """Optimiser updates done in total (including those before a resume)."""
    last_loss: float | None
    """Mean training loss of the last step over all processes (None if no step ran)."""
    checkpoint: Path | None
    """The newest complete checkpoint."""
    output_dir: Path
    is_main_process: bool = True
    """False on the other processes of a multi-process launch (they hold the same weights)."""


def lr_factor(schedule: ScheduleConfig):
    """step -> multiplier of the peak lr: linear warm-up, then cosine to min_lr_ratio (or constant)."""

    def factor(step: int) -> float:
        if step < schedule.warmup_steps:
            return (step + 1) / schedule.warmup_steps
        if schedule.decay == "constant":
            return 1.0
        span = max(1, schedule.steps - schedule.warmup_steps)
        progress = min(1.0, (step - schedule.warmup_steps) / span)
        return schedule.min_lr_ratio + (1 - schedule.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_policy(cfg: TrainConfig, dataset: Dataset) -> Policy:
    """A fresh policy of the config's kind whose normalisers (and tokenizers) are fitted to the dataset."""
    return POLICIES[cfg.model.kind].for_training(cfg.model, dataset)


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    # split_batches: each global batch is cut into per-process slices, and the scheduler steps once per update.
    # Accelerate only forms a multi-process CPU group when told to use the CPU; without this, processes
    # started by `accelerate launch`/torchrun on a machine with no GPU would each train alone.
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        cpu=cfg.cpu or (launched and not torch.cuda.is_available()),
        mixed_precision=cfg.mixed_precision,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.model.has_unused_parameters)],
    )


def train(cfg: TrainConfig, dataset: Dataset | None = None) -> TrainResult:
    """Run (or resume) training as configured; every process of a launch calls this."""
    accelerator = make_accelerator(cfg)
    set_seed(cfg.seed)
    if cfg.optim.batch_size % accelerator.num_processes:
        raise ValueError(f"optim.batch_size={cfg.optim.batch_size} must be divisible by the "
                         f"{accelerator.num_processes} processes")
    resume_dir = resolve_resume(cfg.resume, cfg.output_dir)
    existing = latest_checkpoint(cfg.output_dir)
    if resume_dir is None and existing is not None:
        raise FileExistsError(f"output_dir {cfg.output_dir} already holds checkpoints (newest: {existing.name}); "
                              "resume with --resume (resume=latest) or choose another output_dir")
    dataset = dataset if dataset is not None else build_dataset(cfg.data, cfg.model, cfg.seed)
    # What the data decides (its cameras, their image size) becomes part of the config the run saves.
    cfg = dataclasses.replace(cfg, model=cfg.model.with_data(dataset))
    check_dataset(dataset, cfg.model)
    start = _start_step(resume_dir, cfg, len(dataset))
    if existing is not None and read_trainer_state(existing).step > start:
        # Saving a second history next to newer checkpoints would let pruning and 'latest' mix the two.
        raise FileExistsError(f"output_dir {cfg.output_dir} holds {existing.name}, newer than the resume point "
                              f"(step {start}); resume into another output_dir")
    policy = build_policy(cfg, dataset)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.schedule))
    if start >= cfg.schedule.steps:
        raise ValueError(f"checkpoint {resume_dir} is at step {start} and schedule.steps={cfg.schedule.steps}: "
                         "nothing to train; raise steps to continue")
    sampler = ResumableBatchSampler(len(dataset), cfg.optim.batch_size, cfg.seed, start, cfg.schedule.steps - start)
    # A private generator keeps DataLoader start-up from drawing on the global RNG, which resume restores.
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers, collate_fn=collate,
                        generator=torch.Generator().manual_seed(cfg.seed))
    model, optimizer, loader, scheduler = accelerator.prepare(policy, optimizer, loader, scheduler)
    # Weights start equal everywhere (seeded above); the decoders' noise should not repeat across processes.
    set_seed(cfg.seed + accelerator.process_index)
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
    return _run(cfg, accelerator, model, optimizer, scheduler, loader, start, resume_dir, len(dataset))


def _start_step(resume_dir: Path | None, cfg: TrainConfig, dataset_size: int) -> int:
    if resume_dir is None:
        return 0
    check_compatible(resume_dir, cfg.model)
    state = read_trainer_state(resume_dir)
    if (state.dataset_size, state.global_batch_size) != (dataset_size, cfg.optim.batch_size):
        raise ValueError(
            f"checkpoint {resume_dir} was trained on {state.dataset_size} samples with batch size "
            f"{state.global_batch_size}; this run has {dataset_size} samples and batch size {cfg.optim.batch_size}"
        )
    return state.step


def _run(cfg, accelerator, model, optimizer, scheduler, loader, start, last_ckpt, dataset_size) -> TrainResult:
    main = accelerator.is_main_process
    model.train()  # backbones load in eval mode; training mode turns on their dropout and gradient checkpointing
    logger = MetricsLogger(cfg.output_dir, enabled=main, tensorboard=cfg.tensorboard, start_step=start)
    bar = tqdm(total=cfg.schedule.steps, initial=start, disable=not (main and cfg.progress), desc=f"train {Path(cfg.output_dir).name}")
    window = (time.perf_counter(), start)
    last_loss, step = None, start
    try:
        for step, batch in zip(range(start + 1, cfg.schedule.steps + 1), loader):
            last_loss, metrics = _train_step(cfg, accelerator, model, optimizer, scheduler, batch, step, last_ckpt)
            if step % cfg.log_every == 0 or step == cfg.schedule.steps:
                now = time.perf_counter()
                rate = (step - window[1]) * cfg.optim.batch_size / max(now - window[0], 1e-9)
                window = (now, step)
                metrics.update(loss=last_loss, lr=scheduler.get_last_lr()[0], samples_per_s=rate)
                logger.log(step, metrics)
                bar.set_postfix(loss=f"{last_loss:.4f}", samples_s=f"{rate:.0f}")
            bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == cfg.schedule.steps:
                last_ckpt = _save(cfg, accelerator, model, step, last_loss, dataset_size)
        if step != cfg.schedule.steps:
            raise RuntimeError(f"the data loader ended after step {step} of {cfg.schedule.steps}")
    finally:
        bar.close()
        logger.close()
    policy = accelerator.unwrap_model(model).eval()
    return TrainResult(policy, step, last_loss, last_ckpt, Path(cfg.output_dir), main)


def _train_step(cfg, accelerator, model, optimizer, scheduler, batch, step, last_ckpt) -> tuple[float, dict]:
    """One update; every process reaches the same verdict on a non-finite loss, so none is left waiting."""
    try:
        out = model(unpack_text(batch))
        loss, metrics = out.loss, {k: v for k, v in out.metrics.items() if k != "loss"}
    except FloatingPointError:  # the decoder refuses to return a non-finite loss
        loss, metrics = torch.tensor(float("nan"), device=accelerator.device), {}
    loss = loss * _share_of_real_actions(accelerator, batch)
    mean_loss = accelerator.reduce(loss.detach().float().reshape(1), "mean")
    if not torch.isfinite(mean_loss).all():
        _stop(f"training loss is {mean_loss.item()} at step {step}", last_ckpt)
    accelerator.backward(loss)
    if cfg.optim.grad_clip > 0:
        norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        if not math.isfinite(float(norm)) and cfg.mixed_precision != "fp16":
            _stop(f"gradient norm is {float(norm)} at step {step}", last_ckpt)
        metrics["grad_norm"] = float(norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return mean_loss.item(), metrics


def _share_of_real_actions(accelerator, batch: dict) -> torch.Tensor | float:
    """Decoder losses average over the real (unpadded) actions of each process's slice; weighting each slice by
    its share of real actions makes the mean over processes the masked mean of the global batch, as on one
    process. Exactly 1 when there is one process or no padding."""
    pad = batch.get(ACTION_PAD_KEY)
    if accelerator.num_processes == 1 or pad is None:
        return 1.0
    real = (~pad.bool()).sum().float().reshape(1)
    return real / accelerator.reduce(real.clone(), "mean").clamp_min(1.0)


def _stop(what: str, last_ckpt: Path | None) -> None:
    where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
    raise NonFiniteLossError(f"{what} (non-finite); training stopped without saving this step; {where}")


def _save(cfg: TrainConfig, accelerator, model, step: int, loss: float | None, dataset_size: int) -> Path:
    state = TrainerState(step=step, dataset_size=dataset_size, global_batch_size=cfg.optim.batch_size,
                         last_loss=loss)
    return save_checkpoint(accelerator, model, cfg.output_dir, state, cfg.to_dict(), cfg.keep_checkpoints)
