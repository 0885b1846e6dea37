"""Latency per action chunk with a VLM backbone: prefix encoding vs decoder passes, every decoder, K=1 and 8.

    python benchmarks/backbone_latency.py                                  # all tiny presets, CPU
    python benchmarks/backbone_latency.py --device cuda --presets qwen2_5_vl-mid --dtype bfloat16
    python benchmarks/backbone_latency.py --stage preprocess             # images + tokens: Pillow vs tensor

One chunk = one observation (B = 1). "prefix" is the backbone: image + prompt into a KV cache, then the
query-token pass ("prefix, K cache copies": the same with the cache repeated K times before the query pass). "decoder" is decoder.sample(cond, K) over the query states with the "expert" net at each
decoder's default steps. KeyStone (driftkit.selection.keystone, when present) selects one of the K=8 samples.
Times are medians over --repeats runs after --warmup runs. Prints a markdown table and writes JSON to
benchmarks/results/.

--stage preprocess times Backbone.prepare (images checked and processed, prompts tokenised and laid out) with
the transformers Pillow processor and with the tensor preprocessing (driftkit.backbones.preprocess), for one
--side-pixel image and for --batch rows of --cameras images, next to the whole prefix (tensor path) of one
image ("prefix": encode_prefix + encode_queries, tensor path). "images" is the image part of prepare alone;
the rest of prepare is tokenising, padding and (Qwen) the 3-D rotary positions. The issue's target: image
preprocessing at most 10 % of the prefix for one image on the CPU.

--stage stages times each stage of one chunk separately, per preset and --variants: "preprocess"
(Backbone.prepare: tensor image preprocessing + tokens), "vision" (the vision encoder + connector alone),
"LM prefix" (the rest of encode_prefix + encode_queries: LM passes, and the token reduction where on),
"shared prefix" (the decoder net's one projection of the condition that all K samples and every step read:
the former K cache copies, now broadcast), "decoder" (flow 10 steps, drift 1 step, K = 1 and 8) and
"selection" (KeyStone over the K = 8 samples). Variants: eager; keep<r> (visual_keep = r, visual_merged = 1);
compiled (static_prefix_len, torch.compile of the LM and of the decoder net, "default" mode on the CPU; the
first call's time, compilation included, is reported as compile s).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np
import torch

import driftkit.nets.expert  # noqa: F401  (registers "expert")
from driftkit import list_decoders, make_decoder
from driftkit.backbones import Backbone, list_presets
from driftkit.backbones.families import get_family
from driftkit.backbones.inputs import camera_rows
from driftkit.backbones.static import compile_nets
from driftkit.timing import median_ms

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=[n for n in list_presets() if n.endswith("-tiny")])
    p.add_argument("--decoders", nargs="+", default=None, help="default: every registered decoder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="backbone weights: float32, bfloat16, float16")
    p.add_argument("--ks", nargs="+", type=int, default=[1, 8])
    p.add_argument("--horizon", type=int, default=8)
    p.add_argument("--action-dim", type=int, default=4)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/backbone_latency_<device>.json)")
    p.add_argument("--stage", choices=["chunk", "preprocess", "stages"], default="chunk")
    p.add_argument("--variants", nargs="+", default=["eager", "keep0.5", "keep0.25", "compiled"],
                   help="stages: eager, keep<ratio>, compiled")
    p.add_argument("--side", type=int, default=224, help="preprocess stage: input image side in pixels")
    p.add_argument("--batch", type=int, default=8, help="preprocess stage: rows of the batched case")
    p.add_argument("--cameras", type=int, default=2, help="preprocess stage: images per row of the batched case")
    return p.parse_args(argv)


class Timer:
    """Median milliseconds of fn() (driftkit.timing.median_ms) and one result of it."""

    def __init__(self, device: str, repeats: int, warmup: int):
        self.device, self.repeats, self.warmup = device, repeats, warmup

    def __call__(self, fn) -> tuple[float, object]:
        out = fn()  # one untimed call for the result; median_ms adds its own warm-up calls
        return median_ms(fn, self.device, self.repeats, self.warmup), out


def keystone_fn():
    try:
        from driftkit.selection.keystone import keystone
    except ImportError:
        return None
    return keystone


def bench_preset(preset: str, names: list[str], args, timer: Timer) -> list[dict]:
    t, d = args.horizon, args.action_dim
    backbone = Backbone.from_preset(preset, num_query_tokens=t * d, dtype=args.dtype).to(args.device).eval()
    side = backbone.image_size
    image = [np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)]
    prompt = ["pick up the red block and place it in the bowl"]
    h = backbone.hidden_size
    keystone = keystone_fn()

    def prefix_pass():
        return backbone.encode_queries(backbone.encode_prefix(image, prompt))

    def repeated_prefix_pass(k):
        return backbone.encode_queries(backbone.encode_prefix(image, prompt), repeats=k)

    with torch.no_grad():
        prefix_ms, feats = timer(prefix_pass)
        # the query pass run for K copies of the cache (for per-sample suffixes)
        repeat_ms = {k: timer(lambda: repeated_prefix_pass(k))[0] for k in args.ks}
        rows = []
        for name in names:
            dec = make_decoder(name, cond_dim=h, target_shape=(t, d), net="expert")
            dec.fit_normalizer(torch.randn(64, t, d))
            dec = dec.to(args.device).eval()
            cond = feats.query.float()  # a VLM policy's cond="query"
            for k in args.ks:
                dec_ms, samples = timer(lambda: dec.sample(cond, num_samples=k))
                row = dict(preset=preset, decoder=name, k=k, nfe=dec.nfe(), prefix_ms=prefix_ms, decoder_ms=dec_ms,
                           total_ms=prefix_ms + dec_ms, prefix_k_copies_ms=repeat_ms[k], keystone_ms=None)
                if keystone is not None and k > 1:
                    row["keystone_ms"], _ = timer(lambda: keystone(samples))
                rows.append(row)
    return rows


def bench_preprocess(preset: str, args, timer: Timer) -> list[dict]:
    """prepare() with the Pillow processor and with tensor preprocessing, for one image and a batch."""
    backbone = Backbone.from_preset(preset, num_query_tokens=args.horizon * args.action_dim,
                                    dtype=args.dtype).to(args.device).eval()
    pipeline, rng = backbone.pixel_pipeline, np.random.default_rng(0)
    prompt = "pick up the red block and place it in the bowl"
    image = lambda: rng.integers(0, 256, (args.side, args.side, 3), dtype=np.uint8)  # noqa: E731
    cases = [(1, 1, [image()]), (args.batch, args.cameras,
                                 [[image() for _ in range(args.cameras)] for _ in range(args.batch)])]
    rows = []
    with torch.no_grad():
        backbone.pixel_pipeline = pipeline
        prefix_ms, _ = timer(lambda: backbone.encode_queries(backbone.encode_prefix(cases[0][2], [prompt])))
        for b, n, images in cases:
            prompts, split = [prompt] * b, camera_rows(images)
            row = dict(preset=preset, batch=b, cameras=n, side=args.side, prefix_ms=prefix_ms if b == 1 else None)
            for path, chosen in (("pillow", None), ("tensor", pipeline)):
                backbone.pixel_pipeline = chosen
                row[f"{path}_ms"], _ = timer(lambda: backbone.prepare(images, prompts))
                row[f"{path}_images_ms"], _ = timer(lambda: backbone._vision(*split))  # the images alone
            rows.append(row)
    return rows


def variant_options(variant: str, preset: str, args) -> dict | None:
    """BackboneConfig options of a variant (None: the preset's family does not support it)."""
    if variant.startswith("keep"):
        family = get_family(preset.rpartition("-")[0])
        return {"visual_keep": float(variant[4:]), "visual_merged": 1} if family.visual_features is not None else None
    if variant == "compiled":
        probe = Backbone.from_preset(preset, num_query_tokens=args.horizon * args.action_dim)
        return {"static_prefix_len": probe.prepare(*bench_inputs(probe)).prefix_len + 8}
    if variant != "eager":
        raise ValueError(f"unknown variant {variant!r}; use eager, keep<ratio> or compiled")
    return {}


def bench_inputs(backbone: Backbone) -> tuple[list, list[str]]:
    side = backbone.image_size
    image = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return [image], ["pick up the red block and place it in the bowl"]


def bench_stages(preset: str, variant: str, args, timer: Timer) -> list[dict]:
    """One chunk, stage by stage (module docstring), for one preset and variant."""
    t, d = args.horizon, args.action_dim
    options = variant_options(variant, preset, args)
    if options is None:
        return []  # token reduction is not supported for this family
    bb = Backbone.from_preset(preset, num_query_tokens=t * d, dtype=args.dtype, **options).to(args.device).eval()
    images, prompts = bench_inputs(bb)
    keystone, rows = keystone_fn(), []
    with torch.no_grad():
        compile_s = None
        if variant == "compiled":
            torch._dynamo.reset()  # a fresh cache: earlier presets' graphs would exhaust its recompile limit
            bb.compile_static("default")
            start = time.perf_counter()
            bb.encode_queries(bb.encode_prefix(images, prompts))
            compile_s = time.perf_counter() - start
        pre_ms, inputs = timer(lambda: bb.prepare(images, prompts))
        vision_ms, _ = timer(lambda: bb.model.model.get_image_features(**inputs.vision))
        prefix_ms, feats = timer(lambda: bb.encode_queries(bb.encode_prefix(images, prompts)))
        tokens = int(bb.reduce_visual(bb.prepare(images, prompts)).input_ids.eq(bb.special_ids["image"]).sum())
        cond = feats.query.float()
        for name in ("flow", "drift"):
            dec = make_decoder(name, cond_dim=bb.hidden_size, target_shape=(t, d), net="expert")
            dec.fit_normalizer(torch.randn(64, t, d))
            dec = dec.to(args.device).eval()
            dec_compile_s = None
            if variant == "compiled":
                compile_nets(dec, "default")
                start = time.perf_counter()
                for k in args.ks:
                    dec.sample(cond, num_samples=k)
                dec_compile_s = time.perf_counter() - start
            shared_ms, _ = timer(lambda: dec.net.prefix(cond))
            for k in args.ks:
                dec_ms, samples = timer(lambda: dec.sample(cond, num_samples=k))
                sel_ms = timer(lambda: keystone(samples))[0] if keystone is not None and k > 1 else 0.0
                rows.append(dict(preset=preset, variant=variant, decoder=name, k=k, nfe=dec.nfe(), image_tokens=tokens,
                                 preprocess_ms=pre_ms, vision_ms=vision_ms, lm_ms=prefix_ms - pre_ms - vision_ms,
                                 prefix_ms=prefix_ms, shared_prefix_ms=shared_ms, decoder_ms=dec_ms,
                                 selection_ms=sel_ms, total_ms=prefix_ms + dec_ms + sel_ms,
                                 lm_compile_s=compile_s, decoder_compile_s=dec_compile_s))
    return rows


def stages_markdown(rows: list[dict]) -> str:
    lines = ["| preset | variant | decoder | K | image tokens | preprocess ms | vision ms | LM prefix ms | prefix ms | "
             "shared prefix ms | decoder ms | selection ms | total ms | compile s (LM / decoder) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        comp = "-" if r["lm_compile_s"] is None else f"{r['lm_compile_s']:.1f} / {r['decoder_compile_s']:.1f}"
        lines.append(f"| {r['preset']} | {r['variant']} | {r['decoder']} | {r['k']} | {r['image_tokens']} | "
                     f"{r['preprocess_ms']:.2f} | {r['vision_ms']:.2f} | {r['lm_ms']:.2f} | {r['prefix_ms']:.2f} | "
                     f"{r['shared_prefix_ms']:.3f} | {r['decoder_ms']:.2f} | {r['selection_ms']:.2f} | "
                     f"{r['total_ms']:.2f} | {comp} |")
    index = {(r["preset"], r["variant"], r["decoder"], r["k"]): r for r in rows}
    lines += ["", "| preset | variant | K | flow / drift, decoder | flow / drift, whole chunk |",
              "|---|---|---|---|---|"]
    for (preset, variant, name, k), flow in index.items():
        drift = index.get((preset, variant, "drift", k))
        if name == "flow" and drift is not None:
            lines.append(f"| {preset} | {variant} | {k} | {flow['decoder_ms'] / drift['decoder_ms']:.2f}x | "
                         f"{flow['total_ms'] / drift['total_ms']:.2f}x |")
    return "\n".join(lines)


def preprocess_markdown(rows: list[dict]) -> str:
    lines = ["| preset | images (B x N, side) | images, Pillow ms | images, tensor ms | prepare, Pillow ms | "
             "prepare, tensor ms | prefix ms (1 image) | tensor images / prefix | tensor prepare / prefix |",
             "|---|---|---|---|---|---|---|---|---|"]

    def share(r: dict, key: str) -> str:
        if r["prefix_ms"] is None:
            return "-"
        ratio = r[key] / r["prefix_ms"]
        return f"{100 * ratio:.1f} % ({'met' if ratio <= 0.1 else 'not met'})"

    for r in rows:
        prefix = "-" if r["prefix_ms"] is None else f"{r['prefix_ms']:.2f}"
        lines.append(f"| {r['preset']} | {r['batch']} x {r['cameras']}, {r['side']} px | {r['pillow_images_ms']:.2f} | "
                     f"{r['tensor_images_ms']:.2f} | {r['pillow_ms']:.2f} | {r['tensor_ms']:.2f} | {prefix} | "
                     f"{share(r, 'tensor_images_ms')} | {share(r, 'tensor_ms')} |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[dict]:
    """10-step flow over 1-step drift, per preset and K: decoder-only and whole chunk."""
    out = []
    index = {(r["preset"], r["decoder"], r["k"]): r for r in rows}
    for (preset, name, k), flow in index.items():
        drift = index.get((preset, "drift", k))
        if name != "flow" or drift is None:
            continue
        out.append(dict(preset=preset, k=k, flow_nfe=flow["nfe"], drift_nfe=drift["nfe"],
                        decoder_ratio=flow["decoder_ms"] / drift["decoder_ms"],
                        chunk_ratio=flow["total_ms"] / drift["total_ms"]))
    return out


def markdown(rows: list[dict], ratio_rows: list[dict]) -> str:
    lines = ["| preset | decoder | K | NFE | prefix ms | prefix, K cache copies ms | decoder ms | total ms | "
             "KeyStone ms |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ks = "-" if r["keystone_ms"] is None else f"{r['keystone_ms']:.2f}"
        lines.append(f"| {r['preset']} | {r['decoder']} | {r['k']} | {r['nfe']} | {r['prefix_ms']:.2f} | "
                     f"{r['prefix_k_copies_ms']:.2f} | {r['decoder_ms']:.2f} | {r['total_ms']:.2f} | {ks} |")
    lines += ["", "| preset | K | flow NFE / drift NFE | flow / drift, decoder | flow / drift, whole chunk |",
              "|---|---|---|---|---|"]
    for r in ratio_rows:
        lines.append(f"| {r['preset']} | {r['k']} | {r['flow_nfe']} / {r['drift_nfe']} | "
                     f"{r['decoder_ratio']:.2f}x | {r['chunk_ratio']:.2f}x |")
    index = {(r["preset"], r["decoder"], r["k"]): r for r in rows}
    lines += ["", "| preset | decoder | whole chunk, K=8 / K=1 (prefix once, K cache copies) |", "|---|---|---|"]
    for (preset, name, k), r in index.items():
        one = index.get((preset, name, 1))
        if k == 8 and one is not None:
            k8 = r["prefix_k_copies_ms"] + r["decoder_ms"] + (r["keystone_ms"] or 0.0)
            lines.append(f"| {preset} | {name} | {k8 / one['total_ms']:.2f}x (with KeyStone) |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.decoders or sorted(list_decoders())
    timer = Timer(args.device, args.repeats, args.warmup)
    if args.stage == "preprocess":
        rows, ratio_rows = [r for preset in args.presets for r in bench_preprocess(preset, args, timer)], []
        table = preprocess_markdown(rows)
    elif args.stage == "stages":
        rows = [r for preset in args.presets for v in args.variants for r in bench_stages(preset, v, args, timer)]
        ratio_rows, table = [], stages_markdown(rows)
    else:
        rows = [r for preset in args.presets for r in bench_preset(preset, names, args, timer)]
        ratio_rows = ratios(rows)
        table = markdown(rows, ratio_rows)
    print(table)
    import transformers

    meta = dict(command="python " + " ".join([os.path.relpath(__file__)] + (argv or sys.argv[1:])),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                device=args.device, dtype=args.dtype, threads=args.threads, torch=torch.__version__,
                transformers=transformers.__version__, machine=platform.processor() or platform.machine(),
                gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                chunk=[args.horizon, args.action_dim], batch=1, repeats=args.repeats,
                keystone=keystone_fn() is not None)
    os.makedirs(RESULTS, exist_ok=True)
    stage = "" if args.stage == "chunk" else f"_{args.stage}"
    path = args.out or os.path.join(RESULTS, f"backbone_latency{stage}_{args.device.split(':')[0]}.json")
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows, "flow_over_drift": ratio_rows}, f, indent=2)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(f"Command: `{meta['command']}`\n\nMachine: {meta['machine']}, {args.threads} thread(s), "
                f"torch {meta['torch']}, GPU: {meta['gpu']}; batch 1, chunk {args.horizon}x{args.action_dim}, "
                f"median of {args.repeats}\n\n" + table + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
