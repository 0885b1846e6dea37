"""Decoding latency of every decoder at K = 1 and K = 8, and the drift loss's training-step overhead.

    python benchmarks/decoder_latency.py                      # CPU, writes benchmarks/results/decoder_latency-cpu.*
    python benchmarks/decoder_latency.py --device cuda        # GPU

Decoders run on a shared condition (as query-token features from a VLM would be); the network is an MLP action
head of `--hidden` width. Latency is per sample() call for a batch of `--batch` observations, median of repeats.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import driftkit
from common import median_ms, write_results

DECODERS = ["regression", "tokens", "flow", "residual_flow", "drift", "residual_drift", "discrete_flow"]


def build(name: str, args) -> driftkit.Decoder:
    dec = driftkit.make_decoder(name, args.cond_dim, (args.horizon, args.dim), hidden_dim=args.hidden, depth=args.depth)
    dec.fit_normalizer(torch.randn(256, args.horizon, args.dim))
    return dec.to(args.device).eval()


def latency_rows(args) -> list[dict]:
    rows = []
    cond = torch.randn(args.batch, args.cond_dim, device=args.device)
    for name in DECODERS:
        dec = build(name, args)
        for k in (1, 8):
            ms = median_ms(lambda: dec.sample(cond, k), args.device, args.repeats)
            rows.append({"decoder": name, "k": k, "nfe": dec.nfe(), "ms": ms})
            print(f"{name:15s} K={k}: {ms:8.3f} ms  (NFE {dec.nfe()})", flush=True)
        if name == "flow":
            ms = median_ms(lambda: dec.sample(cond, 1, steps=1), args.device, args.repeats)
            rows.append({"decoder": "flow (1 step)", "k": 1, "nfe": 1, "ms": ms})
    return rows


def train_step_rows(args) -> list[dict]:
    """Time one optimiser step (loss, backward, step) of flow and of drift (G = 8) at the same batch."""
    rows = []
    cond = torch.randn(args.train_batch, args.cond_dim, device=args.device)
    target = torch.randn(args.train_batch, args.horizon, args.dim, device=args.device)
    for name in ("flow", "drift"):
        dec = build(name, args).train()
        opt = torch.optim.AdamW(dec.parameters(), 1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            dec.loss(cond, target).loss.backward()
            opt.step()

        rows.append({"decoder": name, "batch": args.train_batch, "ms_per_step": median_ms(step, args.device, args.repeats)})
    # The drift loss itself (field + regression) on pre-drawn samples, without the network.
    gen = torch.randn(args.train_batch, 8, args.horizon, args.dim, device=args.device, requires_grad=True)
    mask = torch.ones_like(target, dtype=torch.bool)
    loss_ms = median_ms(lambda: driftkit.losses.drifting_loss(gen, target, mask).backward(), args.device, args.repeats)
    rows.append({"decoder": "drifting_loss only (G=8)", "batch": args.train_batch, "ms_per_step": loss_ms})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1, help="observations per sample() call")
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--cond-dim", type=int, default=512)
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--dim", type=int, default=7)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lat, train = latency_rows(args), train_step_rows(args)
    by = {(r["decoder"], r["k"]): r["ms"] for r in lat}
    ratio = by[("flow", 1)] / by[("drift", 1)]
    table = ["| decoder | NFE | ms, K=1 | ms, K=8 | K=8 / K=1 |", "|---|---|---|---|---|"]
    for name in DECODERS:
        table.append(f"| {name} | {next(r['nfe'] for r in lat if r['decoder'] == name)} | {by[(name, 1)]:.3f} "
                     f"| {by[(name, 8)]:.3f} | {by[(name, 8)] / by[(name, 1)]:.2f} |")
    table.append(f"| flow (1 step) | 1 | {by[('flow (1 step)', 1)]:.3f} | | |")
    table += ["", f"10-step flow / 1-step drift per chunk: {ratio:.2f}x", "",
              "| training step | batch | ms |", "|---|---|---|"]
    table += [f"| {r['decoder']} | {r['batch']} | {r['ms_per_step']:.3f} |" for r in train]
    flow_ms, drift_ms = train[0]["ms_per_step"], train[1]["ms_per_step"]
    table.append(f"\ndrift (G=8) step / flow step: {drift_ms / flow_ms:.2f}x; the loss alone is "
                 f"{train[2]['ms_per_step']:.3f} ms")
    out = Path(args.out or f"benchmarks/results/decoder_latency-{args.device.split(':')[0]}.json")
    write_results(out, {"args": vars(args), "latency": lat, "train_step": train, "flow10_over_drift": ratio},
                  "\n".join(table))
    print("\n".join(table))


if __name__ == "__main__":
    main()
