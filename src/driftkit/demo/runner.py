"""Train decoders on the built-in tasks and score them against the known answers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from driftkit.decoders import Decoder, make_decoder
from driftkit.demo.tasks import Task
from driftkit.selection import best_of_k, keystone


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
    """KeyStone's choice among K samples (C = 2 clusters), distance to the nearest mode."""
    err_best_of_k: float
    """Oracle best of K samples, distance to the drawn target."""
    on_mode: float
    """Share of samples within `tol` of some mode."""
    mode_share: list[float] = field(default_factory=list)
    """Among on-mode samples, the share landing on each mode (ideal: the mode probabilities)."""
    nfe: int = 0
    ms_per_chunk: float = 0.0


def train_decoder(name: str, task: Task, settings: TrainSettings, progress: bool = False, **options) -> Decoder:
    """Fit decoder `name` on fresh draws of `task` for settings.steps Adam steps."""
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    options = {"hidden_dim": settings.hidden_dim, "depth": settings.depth, **options}
    dec = make_decoder(name, task.cond_dim, task.target_shape, **options)
    dec.fit_normalizer(task.sample(4096, gen).target)
    opt = torch.optim.Adam(dec.parameters(), lr=settings.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.steps)
    dec.train()
    bar = tqdm(range(settings.steps), desc=f"{task.name}/{name}", disable=not progress, leave=False)
    for _ in bar:
        batch = task.sample(settings.batch_size, gen)
        out = dec.loss(batch.cond, batch.target)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{out.loss.item():.4f}", refresh=False)
    return dec.eval()


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).square().flatten(-2).mean(-1).sqrt()


def latency_ms(dec: Decoder, cond: torch.Tensor, k: int = 1, steps: int | None = None, repeats: int = 20) -> float:
    """Median wall time of one sample() call on cond (one chunk per observation)."""
    dec.sample(cond, k, steps)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dec.sample(cond, k, steps)
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def evaluate(dec: Decoder, task: Task, n: int = 1000, k: int = 8, steps: int | None = None,
             tol: float = 0.15, seed: int = 1234) -> Scores:
    gen = torch.Generator().manual_seed(seed)
    batch = task.sample(n, gen)
    samples = dec.sample(batch.cond, k, steps, generator=gen)  # [B, K, T, D]
    dist = _rms(samples.unsqueeze(2), batch.modes.unsqueeze(1))  # [B, K, M]
    nearest, which = dist.min(-1)
    on = nearest < tol
    shares = [float(((which == m) & on).sum() / on.sum().clamp_min(1)) for m in range(batch.modes.shape[1])]
    best = best_of_k(samples, batch.target).chunk
    chosen = keystone(samples, clusters=2).chunk
    return Scores(
        err=float(nearest[:, 0].mean()),
        err_keystone=float(_rms(chosen.unsqueeze(1), batch.modes).min(-1).values.mean()),
        err_best_of_k=float(_rms(best, batch.target).mean()),
        on_mode=float(on.float().mean()),
        mode_share=shares,
        nfe=dec.nfe(steps),
        ms_per_chunk=latency_ms(dec, batch.cond[:1], 1, steps),
    )
