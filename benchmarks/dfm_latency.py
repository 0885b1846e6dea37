"""Latency per chunk of discrete flow refinement through a VLM (the dfm policy) with and without the adaptive
block cache, against greedy autoregressive decoding of the same number of bin tokens through the same LM.

    python benchmarks/dfm_latency.py                                         # qwen2_5_vl-tiny, CPU
    /tmp/heavy-run python benchmarks/dfm_latency.py --presets qwen2_5_vl-mid --repeats 3 --warmup 1 --append

One chunk = one observation (B = 1, K = 1): the image + prompt prefix into a KV cache (the same
Backbone.encode_prefix for every row of the table), then
    dfm none       steps + validation passes, each over prefix + block uncached (the reference pass)
    dfm prefix     the same passes over the cached prefix, whole block each time (exact)
    dfm adaptive   only the changed block tokens recomputed, the whole block every r calls (approximate)
    autoregressive P = T * D greedy passes of one token each over the cached prefix (argmax over the same bin
                   rows of the LM head; the first pass reads the query token), KV cached
Random weights: the refinement's token changes per step (and so the adaptive cache's savings) follow an
untrained, nearly uniform posterior; --head-scale multiplies the LM head's bin rows to sharpen it, a crude
stand-in for a trained, confident model (rows say which scale they used). Exactness: adaptive against prefix with the same generator over
--seeds draws (fraction of identical tokens, largest action difference in normalised units).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from driftkit.normalize import NormStats  # noqa: E402
from driftkit.policy import DFMPolicy, DFMPolicyConfig  # noqa: E402
from driftkit.timing import StageTimer, stage_of  # noqa: E402

CAMERA = "observation.images.cam"
OUT = Path(__file__).resolve().parent / "results" / "dfm_latency_cpu.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["qwen2_5_vl-tiny"])
    p.add_argument("--horizon", type=int, default=8)
    p.add_argument("--action-dim", type=int, default=4)
    p.add_argument("--num-bins", type=int, default=256)
    p.add_argument("--steps", type=int, default=14, help="stochastic CTMC steps (+ 2 validation steps)")
    p.add_argument("--refresh", nargs="+", type=int, default=[2, 4], help="adaptive cache refresh_every values")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seeds", type=int, default=5, help="generator seeds for the exactness comparison")
    p.add_argument("--head-scale", nargs="+", type=float, default=[1.0],
                   help="multiply the LM head's bin rows (a sharper posterior, as a stand-in for a trained model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--append", action="store_true", help="keep the rows of other presets already in --out")
    return p.parse_args(argv)


def build(args, preset: str, head_scale: float) -> tuple[DFMPolicy, dict]:
    size = 64 if preset.endswith("-tiny") else 224
    cfg = DFMPolicyConfig(backbone=preset, horizon=args.horizon, action_dim=args.action_dim, state_dim=0,
                          cameras=(CAMERA,), image_shape=(3, size, size), backbone_options={"dtype": args.dtype},
                          decoder_options={"num_bins": args.num_bins, "steps": args.steps})
    torch.manual_seed(0)
    policy = DFMPolicy(cfg)
    policy.set_stats({"action": NormStats.from_data(torch.randn(256, args.horizon, args.action_dim))})
    with torch.no_grad():
        policy.backbone.model.get_output_embeddings().weight[policy.bin_ids] *= head_scale
    policy = policy.to(args.device).eval()
    obs = {CAMERA: torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)),
           "task": ["put the red block on the plate"]}
    return policy, obs


@torch.no_grad()
def autoregressive(policy: DFMPolicy, obs: dict, timer: StageTimer | None = None) -> torch.Tensor:
    """Greedy decoding of T * D bin tokens, one LM pass per token over the cached prefix -> [T * D] ids."""
    bb, p = policy.backbone, policy.config.horizon * policy.config.action_dim
    stage = stage_of(timer)
    with stage("preprocess"):
        images, prompts, _ = policy.inputs(obs)
    with stage("prefix"):
        prefix = bb.encode_prefix(images, prompts)
    with stage("decoder"):
        inputs, l = prefix.inputs, prefix.inputs.prefix_len
        ids, mask = inputs.input_ids[:, l:l + 1], inputs.attention_mask[:, :l + 1]  # the query token first
        pos = inputs.position_ids[..., l:l + 1]
        chosen = []
        for step in range(p):
            out = bb.model.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=prefix.cache,
                                 use_cache=True)
            choice = policy.bin_logits(out.last_hidden_state[:, -1:]).argmax(-1)  # [1, 1] bin index
            chosen.append(choice)
            ids, pos = policy.bin_ids[choice], pos + 1
            mask = torch.cat([mask, mask.new_ones(1, 1)], 1)
    return torch.cat(chosen, 1)[0]


def time_stages(fn, args) -> dict:
    """Median chunk, prefix and decoder milliseconds of fn(timer) over --repeats after --warmup."""
    for _ in range(args.warmup):
        fn(None)
    rows = []
    for _ in range(args.repeats):
        timer = StageTimer(args.device)
        with timer.stage("chunk"):
            fn(timer)
        rows.append(timer.reset())
    med = lambda key: sorted(r[key] for r in rows)[len(rows) // 2]  # noqa: E731
    return {"chunk_ms": med("chunk"), "prefix_ms": med("prefix"), "decoder_ms": med("decoder")}


def exactness(policy: DFMPolicy, obs: dict, r: int, seeds: int) -> dict:
    """Adaptive (refresh_every=r) against prefix-cached refinement with the same generator."""
    same, worst, work = [], 0.0, []
    for seed in range(seeds):
        run = lambda cache: policy.refine(obs, generator=torch.Generator().manual_seed(seed), cache=cache,  # noqa
                                          refresh_every=r)
        exact, adaptive = run("prefix"), run("adaptive")
        same.append((exact.tokens == adaptive.tokens).float().mean().item())
        gap = policy.bins.decode(exact.tokens) - policy.bins.decode(adaptive.tokens)
        worst = max(worst, gap.abs().max().item())
        s = adaptive.stats
        work.append(s.slots_run / (s.calls * policy.slots))
    return {"identical_tokens": sum(same) / seeds, "max_action_diff_normalised": worst,
            "slots_run_fraction": sum(work) / seeds}


def bench(args, preset: str, head_scale: float) -> list[dict]:
    policy, obs = build(args, preset, head_scale)
    p = args.horizon * args.action_dim
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    modes = [("dfm none", dict(cache="none"), None), ("dfm prefix", dict(cache="prefix"), None)]
    modes += [(f"dfm adaptive r={r}", dict(cache="adaptive", refresh_every=r), r) for r in args.refresh]
    rows = []
    for name, kw, r in modes:
        times = time_stages(lambda timer, kw=kw: policy.refine(obs, generator=g(), timer=timer, **kw), args)
        extra = exactness(policy, obs, r, args.seeds) if r else {}
        rows.append({"preset": preset, "head_scale": head_scale, "method": name, "tokens": p, "lm_passes": policy.nfe(), **times, **extra})
        print(rows[-1], flush=True)
    times = time_stages(lambda timer: autoregressive(policy, obs, timer), args)
    rows.append({"preset": preset, "head_scale": head_scale, "method": "autoregressive", "tokens": p, "lm_passes": p, **times})
    print(rows[-1], flush=True)
    ar = rows[-1]["chunk_ms"]
    for row in rows:
        row["speedup_vs_ar"] = ar / row["chunk_ms"]
    return rows


def table(rows: list[dict]) -> str:
    head = ("| preset | head scale | method | tokens | LM passes | chunk ms | prefix ms | refinement / decoding ms | speed-up vs AR "
            "| identical tokens | max action diff | slots run |\n|" + "---|" * 12)
    lines = [head]
    for r in rows:
        fmt = lambda key, spec: format(r[key], spec) if key in r else "-"  # noqa: E731
        lines.append(f"| {r['preset']} | {r['head_scale']:g} | {r['method']} | {r['tokens']} | {r['lm_passes']} | {r['chunk_ms']:.1f} | "
                     f"{r['prefix_ms']:.1f} | {r['decoder_ms']:.1f} | {r['speedup_vs_ar']:.2f}x | "
                     f"{fmt('identical_tokens', '.3f')} | {fmt('max_action_diff_normalised', '.3f')} | "
                     f"{fmt('slots_run_fraction', '.2f')} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows, settings = [], {}
    if args.append and out.is_file():
        import json

        old = json.loads(out.read_text())
        rows = [r for r in old["rows"] if r["preset"] not in args.presets]
        settings = {k: v for k, v in old["settings"].items() if k not in args.presets}
        settings["earlier_commands"] = old.get("earlier_commands", []) + [old["command"]]
    for preset in args.presets:
        for scale in args.head_scale:
            rows += bench(args, preset, scale)
        settings[preset] = {k: v for k, v in vars(args).items() if k not in ("out", "append", "presets")}
    print(table(rows))
    write_results(out, {"settings": settings, "rows": rows}, table(rows))


if __name__ == "__main__":
    main()
