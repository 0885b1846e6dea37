"""Real-time chunking, offline: how well each decoder holds a new chunk to the previous chunk's prefix.

Two-mode toy (driftkit.demo.tasks.BimodalChunk, T = 16: the first dim ramps up or down with equal
probability, the second is nearly deterministic). Per seed every decoder is trained briefly through the trainer
(driftkit.demo.runner.train_decoder: Adam, lr 2e-3, batch 128, cosine decay); then for fresh
draws the "previous chunk" is a demonstration drawn for the same condition (so its mode is known), and the
new chunk is sampled with and without `inpaint=Inpaint(prefix, d, s = 8)` (the soft mask reaches 0 at index 8).

Reported per decoder / route and delay d, mean ± std over seeds (errors in action units):
    prefix err    RMS of the first d actions against the prefix, without -> with RTC
    jump / step   ||a_d - prefix_d|| at the first free action, over the new chunk's mean ||a_{i+1} - a_i||
    same mode     share of new chunks whose free part (i >= d) is nearest the prefix's mode (unguided ~ 0.5)
    on mode       share of new chunks within 0.15 RMS of some mode (sample quality; unguided in brackets)
    ms            one chunk (B = 1, K = 1), median of repeated calls, without / with RTC

    python benchmarks/rtc_offline.py                     # 3 seeds, about 4 minutes on one CPU thread
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from driftkit.demo.runner import TrainSettings, train_decoder
from driftkit.demo.tasks import BimodalChunk
from driftkit.rtc import Inpaint

from common import median_ms, write_results

RESULTS = Path(__file__).parent / "results" / "rtc_offline.json"
ROUTES = [  # (decoder, route label, Inpaint options)
    ("flow", "guided Euler, beta 10", {}),
    ("flow", "guided Euler, beta 100", {"beta": 100.0}),
    ("residual_flow", "guided Euler, beta 10", {}),
    ("drift", "select K'=8 (default)", {}),
    ("drift", "select K'=32", {"candidates": 32}),
    ("drift", "noise steps only (10)", {"candidates": 1, "noise_steps": 10}),
    ("drift", "select K'=8 + 10 noise steps", {"noise_steps": 10}),
    ("residual_drift", "select K'=8 (default)", {}),
    ("residual_drift", "select K'=32", {"candidates": 32}),
    ("residual_drift", "select K'=8 + 10 noise steps", {"noise_steps": 10}),
]
DELAYS = (1, 2, 4)


def scores(chunk: torch.Tensor, batch, d: int) -> dict:
    """chunk [B, T, D] against the prefix batch.target and the task's modes."""
    prefix = batch.target
    err = float((chunk[:, :d] - prefix[:, :d]).square().mean().sqrt())
    jump = (chunk[:, d] - prefix[:, d]).norm(dim=-1)  # [B]
    step = (chunk[:, 1:] - chunk[:, :-1]).norm(dim=-1).mean(-1)  # [B]
    dist = (chunk[:, None, d:] - batch.modes[:, :, d:]).square().flatten(2).mean(-1).sqrt()  # [B, 2]
    near = (chunk[:, None] - batch.modes).square().flatten(2).mean(-1).sqrt().min(-1).values
    return {"prefix_err": err, "jump_over_step": float((jump / step).mean()),
            "same_mode": float((dist.argmin(-1) == batch.mode_index).float().mean()),
            "on_mode": float((near < 0.15).float().mean())}


def run(args) -> dict:
    task = BimodalChunk(horizon=args.horizon)
    s = args.horizon // 2
    rows: dict[tuple, list[dict]] = {}
    for seed in range(args.seeds):
        decoders = {}
        settings = TrainSettings(steps=args.steps, batch_size=128, lr=2e-3, seed=seed, hidden_dim=args.width)
        for name in dict.fromkeys(n for n, _, _ in ROUTES):
            t0 = time.perf_counter()
            decoders[name] = train_decoder(name, task, settings)
            print(f"seed {seed}: trained {name} in {time.perf_counter() - t0:.1f} s", flush=True)
        batch = task.sample(args.draws, torch.Generator().manual_seed(1000 + seed))
        one = task.sample(1, torch.Generator().manual_seed(2000 + seed))
        for name, route, options in ROUTES:
            dec = decoders[name]
            free = dec.sample(batch.cond, 1, generator=torch.Generator().manual_seed(seed))[:, 0]
            ms_off = median_ms(lambda: dec.sample(one.cond), repeats=args.repeats, warmup=1)
            inp_one = Inpaint(one.target, max(DELAYS), s, **options)
            ms_on = median_ms(lambda: dec.sample(one.cond, inpaint=inp_one), repeats=args.repeats, warmup=1)
            for d in DELAYS:
                held = dec.sample(batch.cond, 1, generator=torch.Generator().manual_seed(seed),
                                  inpaint=Inpaint(batch.target, d, s, **options))[:, 0]
                off, on = scores(free, batch, d), scores(held, batch, d)
                rows.setdefault((name, route, d), []).append(
                    {**{f"{k}_off": v for k, v in off.items()}, **{f"{k}_on": v for k, v in on.items()},
                     "ms_off": ms_off, "ms_on": ms_on})
    return rows


def fmt(values: list[float], digits: int = 3) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(rows: dict) -> str:
    lines = ["| decoder | route | d | prefix err off | prefix err RTC | factor | jump/step off | jump/step RTC | "
             "same mode off | same mode RTC | on mode off | on mode RTC | ms off | ms RTC |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (name, route, d), runs in rows.items():
        col = lambda key: [r[key] for r in runs]  # noqa: E731
        factor = [r["prefix_err_off"] / r["prefix_err_on"] for r in runs]
        lines.append(
            f"| {name} | {route} | {d} | {fmt(col('prefix_err_off'))} | {fmt(col('prefix_err_on'))} | "
            f"{fmt(factor, 1)} | {fmt(col('jump_over_step_off'), 2)} | {fmt(col('jump_over_step_on'), 2)} | "
            f"{fmt(col('same_mode_off'), 2)} | {fmt(col('same_mode_on'), 2)} | {fmt(col('on_mode_off'), 2)} | "
            f"{fmt(col('on_mode_on'), 2)} | {fmt(col('ms_off'), 1)} | {fmt(col('ms_on'), 1)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=800, help="training steps per decoder")
    parser.add_argument("--width", type=int, default=128, help="hidden width of the decoders' nets")
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--draws", type=int, default=512, help="evaluation draws per seed")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per latency median")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = run(args)
    text = table(rows)
    print(text)
    payload = {"settings": vars(args) | {"out": str(args.out)}, "wall_s": time.perf_counter() - t0,
               "rows": [{"decoder": n, "route": r, "delay": d, "runs": runs} for (n, r, d), runs in rows.items()]}
    write_results(args.out, payload, text)


if __name__ == "__main__":
    main()
