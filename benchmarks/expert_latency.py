"""Latency of one whole action chunk (preprocess + prefix + decoder), 10-step flow against one-step drift, with
the layer-wise expert (SmolVLA-style: one block per VLM layer read, cond="cache") and with the light expert.

    python benchmarks/expert_latency.py                                    # smolvlm tiny + mid, CPU
    python benchmarks/expert_latency.py --presets smolvlm-tiny --repeats 20

One chunk = VLMPolicy.sample(obs, K) for one observation (B = 1, one --side-pixel camera image, a prompt and a
state), timed end to end and per stage with the policy's own StageTimer. Nets:
    layerwise_all   cond="cache", cache_layers="all": one expert block per VLM layer, width 0.75x the VLM's
    layerwise_half  cond="cache", cache_layers="first_half" (SmolVLA's proportions; the VLM still runs all
                    its layers: the prefix is not truncated)
    layerwise_cut   SmolVLA as it runs: the VLM truncated to its first half (backbone num_layers), cond="cache"
                    reading every layer left; its own backbone, the same seed, so the same first layers
    expert          cond="context", the light expert's defaults (width 256, 3 blocks, one layer's states)
Every policy of a preset shares one backbone (same weights). Flow uses 10 Euler steps, drift one step. Runs
alternate between the decoders so both see the same load. Medians over --repeats after --warmup runs.
The issue's target (14): with the layer-wise expert, 10-step flow / one-step drift >= 4.6x per whole chunk at
K = 1 (Drift-VLA's ratio on a GPU).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from common import write_results
from driftkit.backbones import Backbone
from driftkit.normalize import NormStats
from driftkit.policy.vlm import VLMPolicy, VLMPolicyConfig
from driftkit.timing import StageTimer

CAMERA = "observation.images.cam"
NETS = {
    "layerwise_all": dict(cond="cache", cache_layers="all"),
    "layerwise_half": dict(cond="cache", cache_layers="first_half"),
    "layerwise_cut": dict(cond="cache", cache_layers="all"),
    "expert": dict(cond="context"),
}
TRUNCATED = {"layerwise_cut"}
"""Nets whose VLM keeps only the first ceil(N / 2) decoder layers."""
DECODERS = {"flow": {"steps": 10}, "drift": {}}
TARGET = 4.6


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["smolvlm-tiny", "smolvlm-mid"])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--ks", nargs="+", type=int, default=[1])
    p.add_argument("--horizon", type=int, default=8)
    p.add_argument("--action-dim", type=int, default=4)
    p.add_argument("--state-dim", type=int, default=8)
    p.add_argument("--repeats", type=int, default=None, help="default: 10 for tiny presets, 3 for mid")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default="benchmarks/results/expert_latency_cpu.json")
    return p.parse_args(argv)


def policies(preset: str, backbone: Backbone, net: str, args) -> dict[str, VLMPolicy]:
    """decoder name -> policy on the preset's shared backbone."""
    stats = NormStats(mean=torch.zeros(1), std=torch.ones(1), q01=-2 * torch.ones(1), q99=2 * torch.ones(1))
    out = {}
    for name, options in DECODERS.items():
        cfg = VLMPolicyConfig(backbone=preset, decoder=name, decoder_options=options, horizon=args.horizon,
                              action_dim=args.action_dim, state_dim=args.state_dim, cameras=(CAMERA,), **NETS[net])
        torch.manual_seed(0)
        policy = VLMPolicy(cfg, backbone=backbone).eval()
        expand = lambda s, d: NormStats(*(x.expand(d) for x in (s.mean, s.std, s.q01, s.q99)))  # noqa: E731
        policy.set_stats({"action": expand(stats, args.action_dim), "observation.state": expand(stats, args.state_dim)})
        out[name] = policy
    return out


def observation(side: int, state_dim: int) -> dict:
    g = torch.Generator().manual_seed(0)
    image, state = torch.rand(1, 3, side, side, generator=g), torch.randn(1, state_dim, generator=g)
    return {CAMERA: image, "observation.state": state, "task": ["pick up the red block and place it in the bowl"]}


def bench(preset: str, backbone: Backbone, net: str, args) -> list[dict]:
    built = policies(preset, backbone, net, args)
    first = next(iter(built.values()))
    obs = observation(first.backbone.image_size, args.state_dim)
    repeats = args.repeats or (3 if preset.endswith("-mid") else 10)
    rows = []
    for k in args.ks:
        times = {name: [] for name in built}
        for i in range(args.warmup + repeats):
            for name, policy in built.items():
                timer = StageTimer()
                with torch.no_grad(), timer.stage("total"):
                    policy.sample(obs, k, generator=torch.Generator().manual_seed(i), timer=timer)
                if i >= args.warmup:
                    times[name].append(dict(timer.ms))
        for name, policy in built.items():
            med = {stage: statistics.median(t[stage] for t in times[name]) for stage in times[name][0]}
            dec = policy.decoder.config
            params = sum(p.numel() for p in policy.decoder.parameters()) / 1e6
            rows.append(dict(preset=preset, net=net, decoder=name, k=k, nfe=policy.nfe(), repeats=repeats,
                             depth=dec.depth, width=dec.hidden_dim, decoder_params_m=params,
                             total_ms=med["total"], preprocess_ms=med.get("preprocess"), prefix_ms=med.get("prefix"),
                             decoder_ms=med.get("decoder"), totals_ms=[t["total"] for t in times[name]]))
            print(f"{preset} {net:14s} {name:5s} K={k}: total {med['total']:.1f} ms (prefix {med['prefix']:.1f}, "
                  f"decoder {med['decoder']:.1f})", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| preset | net | depth x width | decoder params (M) | decoder | NFE | K | preprocess ms | prefix ms | "
             "decoder ms | chunk ms | flow / drift (chunk) | flow / drift (decoder) |", "|---" * 13 + "|"]
    by = {(r["preset"], r["net"], r["k"], r["decoder"]): r for r in rows}
    verdicts = []
    for r in rows:
        ratio = dec_ratio = ""
        drift = by.get((r["preset"], r["net"], r["k"], "drift"))
        if r["decoder"] == "flow" and drift:
            value = r["total_ms"] / drift["total_ms"]
            ratio, dec_ratio = f"{value:.2f}x", f"{r['decoder_ms'] / drift['decoder_ms']:.2f}x"
            if r["net"].startswith("layerwise") and r["k"] == 1:
                verdicts.append(f"- {r['preset']}, {r['net']}: {value:.2f}x, {'met' if value >= TARGET else 'not met'}")
        lines.append(f"| {r['preset']} | {r['net']} | {r['depth']} x {r['width']} | {r['decoder_params_m']:.1f} | "
                     f"{r['decoder']} | {r['nfe']} | {r['k']} | {r['preprocess_ms']:.1f} | {r['prefix_ms']:.1f} | "
                     f"{r['decoder_ms']:.1f} | {r['total_ms']:.1f} | {ratio} | {dec_ratio} |")
    return "\n".join([*lines, "", f"Target (issue 14): with the layer-wise expert, 10-step flow / one-step drift >= "
                      f"{TARGET}x per whole chunk at K = 1.", *verdicts])


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for preset in args.presets:
        backbone = Backbone.from_preset(preset, num_query_tokens=4).eval()
        half = (backbone.model.config.get_text_config().num_hidden_layers + 1) // 2
        cut = Backbone.from_preset(preset, num_query_tokens=4, num_layers=half).eval() if TRUNCATED & {
            *args.nets} else None
        rows += [row for net in args.nets for row in bench(preset, cut if net in TRUNCATED else backbone, net, args)]
    table = markdown(rows)
    write_results(Path(args.out), {"args": vars(args), "rows": rows}, table)
    print(table)


if __name__ == "__main__":
    main()
