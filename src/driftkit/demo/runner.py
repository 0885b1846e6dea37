"""Train decoders on the built-in tasks and score them against the known answers.

Training goes through the project's one training loop (driftkit.train.train): each decoder is the decoder of a
ConditionPolicy (kind "cond", the task's condition as `observation.state`) fitted on a dataset of task draws,
so a demo run leaves a trainer checkpoint that driftkit.policy.load_policy opens like any other.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from driftkit.decoders import Decoder
from driftkit.demo.tasks import Task
from driftkit.normalize import NormStats
from driftkit.policy import ConditionPolicyConfig
from driftkit.policy.keys import ACTION_KEY, STATE_KEY
from driftkit.selection import best_of_k, select_normalized
from driftkit.timing import median_ms
from driftkit.train import DataConfig, OptimConfig, ScheduleConfig, TrainConfig, TrainResult, train

STATS_DRAWS = 4096
"""Task draws the action normaliser's statistics come from (drawn before the training data)."""


@dataclass
class TrainSettings:
    steps: int = 1500
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    hidden_dim: int = 128
    depth: int = 2


@dataclass
class Scores:
    """Errors are RMS over the chunk, in target units, averaged over evaluation observations."""

    err: float
    """First sample's distance to the nearest mode of the true distribution."""
    err_keystone: float
    """KeyStone's choice among K samples (C = 2 clusters, on the decoder's normalised samples, as
    Policy.predict selects), distance to the nearest mode."""
    err_best_of_k: float
    """Oracle best of K samples, distance to the drawn target."""
    on_mode: float
    """Share of samples within `tol` of some mode."""
    mode_share: list[float] = field(default_factory=list)
    """Among on-mode samples, the share landing on each mode (ideal: the mode probabilities)."""
    nfe: int = 0
    ms_per_chunk: float = 0.0


class TaskDraws(Dataset):
    """Draws of a task as training items with LeRobot keys: `observation.state` = cond [C], `action` =
    target [T, D] (never padded, so no `action_is_pad`). `stats` holds the action statistics the policy
    normalises with (driftkit.train.dataset_stats reads them)."""

    def __init__(self, cond: Tensor, target: Tensor, stats: NormStats):
        if cond.shape[0] != target.shape[0]:
            raise ValueError(f"got {cond.shape[0]} conditions and {target.shape[0]} targets")
        self.cond, self.target = cond, target
        self.stats = {ACTION_KEY: stats}

    @classmethod
    def draw(cls, task: Task, settings: TrainSettings) -> "TaskDraws":
        """STATS_DRAWS draws for the statistics, then steps * batch_size training draws, in batch_size
        chunks from one generator seeded with settings.seed: one fresh batch of draws per step, which the
        trainer's batch order shuffles within its one epoch."""
        gen = torch.Generator().manual_seed(settings.seed)
        stats = NormStats.from_data(task.sample(STATS_DRAWS, gen).target)
        batches = [task.sample(settings.batch_size, gen) for _ in range(settings.steps)]
        return cls(torch.cat([b.cond for b in batches]), torch.cat([b.target for b in batches]), stats)

    def __len__(self) -> int:
        return self.cond.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {STATE_KEY: self.cond[i], ACTION_KEY: self.target[i]}


def train_config(name: str, task: Task, settings: TrainSettings, run_dir: str | Path, progress: bool = False,
                 **options) -> TrainConfig:
    """The trainer's config for decoder `name` on `task`: Adam (AdamW without weight decay, Adam's betas),
    no gradient clipping, no warm-up and a cosine decay to 0 (= CosineAnnealingLR(T_max=steps)), one
    checkpoint at the end, on the CPU."""
    horizon, action_dim = task.target_shape
    options = {"hidden_dim": settings.hidden_dim, "depth": settings.depth, **options}
    return TrainConfig(
        model=ConditionPolicyConfig(state_dim=task.cond_dim, horizon=horizon, action_dim=action_dim, decoder=name,
                                    decoder_options=options),
        data=DataConfig(source="given"),  # the task draws are handed to train()
        optim=OptimConfig(lr=settings.lr, weight_decay=0.0, betas=(0.9, 0.999), grad_clip=0.0,
                          batch_size=settings.batch_size),
        schedule=ScheduleConfig(steps=settings.steps, warmup_steps=0, decay="cosine", min_lr_ratio=0.0),
        seed=settings.seed,
        output_dir=str(run_dir),
        checkpoint_every=settings.steps,
        keep_checkpoints=1,
        cpu=True,
        tensorboard=False,
        progress=progress,
    )


def train_policy(name: str, task: Task, settings: TrainSettings, run_dir: str | Path, progress: bool = False,
                 **options) -> TrainResult:
    """Fit decoder `name` (options: its config fields) on `task` with the trainer for settings.steps steps;
    the run (checkpoints/, metrics.jsonl) is written to run_dir, which must hold no checkpoints yet."""
    cfg = train_config(name, task, settings, run_dir, progress, **options)
    return train(cfg, dataset=TaskDraws.draw(task, settings))


def train_decoder(name: str, task: Task, settings: TrainSettings, progress: bool = False,
                  run_dir: str | Path | None = None, **options) -> Decoder:
    """The trained decoder of train_policy, in eval mode; run_dir None trains in a temporary directory."""
    if run_dir is not None:
        return train_policy(name, task, settings, run_dir, progress, **options).policy.decoder.eval()
    with tempfile.TemporaryDirectory(prefix="driftkit-demo-") as tmp:
        return train_policy(name, task, settings, tmp, progress, **options).policy.decoder.eval()


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).square().flatten(-2).mean(-1).sqrt()


def latency_ms(dec: Decoder, cond: torch.Tensor, k: int = 1, steps: int | None = None, repeats: int = 20,
               temperature: float | None = None) -> float:
    """Median wall time of one sample() call on cond [B, C] (one chunk per observation), after one untimed call."""
    return median_ms(lambda: dec.sample(cond, k, steps, temperature=temperature), repeats=repeats, warmup=1)


def evaluate(dec: Decoder, task: Task, n: int = 1000, k: int = 8, steps: int | None = None,
             tol: float = 0.15, seed: int = 1234, temperature: float | None = None) -> Scores:
    """Score K samples per observation of n fresh draws of task; temperature None = the decoder's own."""
    gen = torch.Generator().manual_seed(seed)
    batch = task.sample(n, gen)
    samples = dec.sample(batch.cond, k, steps, generator=gen, temperature=temperature)  # [B, K, T, D]
    dist = _rms(samples.unsqueeze(2), batch.modes.unsqueeze(1))  # [B, K, M]
    nearest, which = dist.min(-1)
    on = nearest < tol
    shares = [float(((which == m) & on).sum() / on.sum().clamp_min(1)) for m in range(batch.modes.shape[1])]
    best = best_of_k(samples, batch.target).chunk
    chosen = select_normalized(samples, dec.normalizer.normalize, "keystone", clusters=2).chunk
    return Scores(
        err=float(nearest[:, 0].mean()),
        err_keystone=float(_rms(chosen.unsqueeze(1), batch.modes).min(-1).values.mean()),
        err_best_of_k=float(_rms(best, batch.target).mean()),
        on_mode=float(on.float().mean()),
        mode_share=shares,
        nfe=dec.nfe(steps),
        ms_per_chunk=latency_ms(dec, batch.cond[:1], 1, steps, temperature=temperature),
    )
