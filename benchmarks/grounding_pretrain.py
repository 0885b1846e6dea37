"""Pretrain a small VLM from scratch through its text interface on the procedural grounding mix, then score
its text answers on held-out referring scenes and temporal clips (DRIFT's "Qwen-VL" row at toy scale).

    python benchmarks/grounding_pretrain.py --name cpu                  # the CPU sizing (background it)
    python benchmarks/grounding_pretrain.py --name cpu --eval-only      # rescore the newest checkpoint
    python benchmarks/grounding_pretrain.py --name smoke --smoke --out /tmp/gp   # pipeline check

Steps (each resumable: rerunning the same command continues where it stopped):
  1. <out>/init: a random checkpoint of --family/--width/--depth (grounding.pretrain_model.init_checkpoint),
     or, with --init DIR, an earlier export to continue from (a second stage on another mix, as VLMs are made);
  2. training through the one trainer (preset grounding-pretrain, model.backbone=<init>, data given),
     checkpoints in <out>/checkpoints every 250 steps, resumed from the newest;
  3. greedy text answers on the test split (and on as many training items, to tell under- from overfitting),
     parsed with the family's convention; unparsable answers score IoU 0; the constant baseline is the mean
     training box / interval;
  4. results to benchmarks/results/grounding-pretrain-<name>.{json,md}, the export to <out>/export.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from driftkit.grounding.actions import FRAME_LAYOUTS  # noqa: E402
from driftkit.grounding.metrics import score_boxes, score_moments  # noqa: E402
from driftkit.grounding.pretrain import PretrainDataConfig, TextGroundingData, make_pretrain_data  # noqa: E402
from driftkit.grounding.pretrain_model import (  # noqa: E402
    ModelSize, checkpoint_size, export_checkpoint, init_checkpoint, processor_side, resized_checkpoint,
)
from driftkit.train import train  # noqa: E402
from driftkit.train.checkpoint import latest_checkpoint  # noqa: E402
from driftkit.train.config import make_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
KIND_OF_TASK = {"spatial": ("box", score_boxes), "temporal": ("interval", score_moments)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="cpu", help="Results go to grounding-pretrain-<name>.{json,md}.")
    p.add_argument("--out", help="Run directory (default runs/grounding-pretrain-<name>).")
    p.add_argument("--init", type=Path, help="Continue from this checkpoint directory (an export, e.g. "
                   "checkpoints/qwen3_vl-grounding) instead of random weights; its family and sizes are used.")
    p.add_argument("--family", default="qwen2_5_vl")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp", type=int, default=384)
    p.add_argument("--vision-width", type=int, default=64)
    p.add_argument("--vision-depth", type=int, default=2)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--scenes", type=int, default=3072, help="Spatial training scenes.")
    p.add_argument("--clips", type=int, default=1024, help="Temporal training clips.")
    p.add_argument("--frames", type=int, default=16, help="Frames per clip, tiled into a ceil(sqrt) grid of one "
                   "image (--image-size must divide by its columns).")
    p.add_argument("--frame-layout", choices=FRAME_LAYOUTS, default="grid", help="grid: a clip's frames tiled "
                   "into one image; frames: one image per frame, each after its timestamp (a temporal stage: "
                   "needs --scenes 0).")
    p.add_argument("--describe", type=float, default=0.25, help="Fraction of scenes that also get a description.")
    p.add_argument("--kinds", nargs="+", help="Spatial expression kinds (default: the referring mix).")
    p.add_argument("--test-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-only", action="store_true", help="Score the newest checkpoint without training.")
    p.add_argument("--smoke", action="store_true", help="A few steps on a handful of items.")
    p.add_argument("--results", type=Path, default=RESULTS, help="Folder of the results files.")
    args = p.parse_args(argv)
    if args.smoke:
        args.scenes, args.clips, args.test_size, args.steps, args.batch_size = 16, 8, 8, 3, 4
        args.scenes = 0 if args.frame_layout == "frames" else args.scenes
    return args


def answer_scores(policy, data: TextGroundingData, task: str, batch_size: int = 64) -> dict:
    """Greedy text answers of one task's items, parsed and scored; also ms per query, a few examples and the
    parsed predictions [N, 1, D] (NaN rows where unparsable)."""
    kind, score = KIND_OF_TASK[task]
    preds, texts, start = [], [], time.perf_counter()
    for lo in range(0, len(data), batch_size):
        items = [data[i] for i in range(lo, min(lo + batch_size, len(data)))]
        obs = {k: (torch.stack([it[k] for it in items]) if k.startswith("observation") else [it[k] for it in items])
               for k in (*data.cameras, "task")}
        batch_texts = policy.generate(obs)
        texts += batch_texts
        preds.append(policy.parse(batch_texts, obs, answer=kind))
    ms = 1000 * (time.perf_counter() - start) / len(data)
    pred = torch.cat(preds)  # [N, 1, D], NaN where unparsable
    scores = score(pred, data.targets())
    metrics = dict(zip(scores.columns(), scores.percentages()))
    unparsed = int(torch.isnan(pred).any(-1).sum())
    examples = [{"question": data.questions[i], "answer": texts[i], "truth": data.answers[i]} for i in range(4)]
    return {"metrics": metrics, "unparsable": unparsed, "n": len(data), "ms_per_query": ms,
            "examples": examples, "predictions": pred}


def constant_scores(train_data: TextGroundingData, test_data: TextGroundingData, task: str) -> dict:
    kind, score = KIND_OF_TASK[task]
    mean = train_data.subset(kind).targets().mean(0, keepdim=True)  # [1, 1, D]
    scores = score(mean.expand(len(test_data), -1, -1), test_data.targets())
    return dict(zip(scores.columns(), scores.percentages()))


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/grounding-pretrain-{args.name}")
    data_cfg = PretrainDataConfig(family=args.family, image_size=args.image_size, train_scenes=args.scenes,
                                  temporal_clips=args.clips, describe_fraction=args.describe, test_size=args.test_size,
                                  kinds=args.kinds, num_frames=args.frames, frame_layout=args.frame_layout)
    size = ModelSize(family=args.family, width=args.width, depth=args.depth, heads=args.heads,
                     kv_heads=max(1, args.heads // 2), mlp=args.mlp, vision_width=args.vision_width,
                     vision_depth=args.vision_depth, vision_heads=max(1, args.vision_width // 32))
    init = args.init or out / "init"
    if args.init is not None:
        size = stage_size(args.init, size)
        side = data_cfg.input_side
        if processor_side(args.init) != side:  # its processor would resize every image to its own side
            init = out / f"init-{side}px"
            if not (init / "config.json").is_file():
                resized_checkpoint(args.init, init, side)
    elif not (init / "config.json").is_file():
        init_checkpoint(init, size, data_cfg.input_side)
    t0 = time.perf_counter()
    train_data, test_data = make_pretrain_data(data_cfg, "train"), make_pretrain_data(data_cfg, "test")
    data_s = time.perf_counter() - t0
    cfg = make_config("grounding-pretrain", [
        f"model.backbone={init}", "model.image_size=null", f"steps={args.steps}", f"batch_size={args.batch_size}",
        f"lr={args.lr}", f"output_dir={out}", f"schedule.warmup_steps={min(100, args.steps // 10)}",
        "progress=false", "tensorboard=false", f"log_every={1 if args.smoke else 10}",
    ])
    if data_cfg.image_labels():  # the frames' timestamps go before their images
        cfg.model = dataclasses.replace(cfg.model, backbone_options={**cfg.model.backbone_options,
                                                                     "image_labels": data_cfg.image_labels()})
    found = latest_checkpoint(out)
    t0 = time.perf_counter()
    if args.eval_only:
        from driftkit.policy import load_policy

        if found is None:
            raise SystemExit(f"--eval-only: no checkpoint in {out}")
        from driftkit.train.checkpoint import read_trainer_state

        policy, step = load_policy(found), read_trainer_state(found).step
    else:
        if found is not None:
            cfg.resume = "latest"
        result = train(cfg, train_data)
        policy, step = result.policy, result.step
    train_s = time.perf_counter() - t0
    policy.eval()
    tasks = {}
    for task in [t for t, n in (("spatial", args.scenes), ("temporal", args.clips)) if n]:
        kind = KIND_OF_TASK[task][0]
        held_out = test_data.subset(kind)
        seen = train_data.subset(kind, first=len(held_out))
        test, seen_scores = answer_scores(policy, held_out, task), answer_scores(policy, seen, task)
        seen_scores.pop("predictions")
        tasks[task] = {"test": test, "train": seen_scores, "constant": constant_scores(train_data, held_out, task),
                       "test_by_level": level_scores(held_out, test.pop("predictions"), task)}
    scores = {t: v["test"]["metrics"] for t, v in tasks.items()}
    export_checkpoint(policy, out / "export", extra={"step": step, "num_frames": args.frames, "scores": scores,
                                                     "frame_layout": args.frame_layout,
                                                     "image_labels": list(data_cfg.image_labels())})
    return {"data": data_cfg.to_dict(), "model": size.to_dict(), "steps": step, "batch_size": args.batch_size,
            "lr": args.lr, "train_items": len(train_data), "data_seconds": data_s, "train_seconds": train_s,
            "parameters": sum(p.numel() for p in policy.backbone.model.parameters()), "tasks": tasks,
            "export": str(out / "export"), "init": None if args.init is None else str(args.init)}


def stage_size(init: Path, size: ModelSize) -> ModelSize:
    """The sizes of the checkpoint a second stage continues from; its family must be the one asked for."""
    found = checkpoint_size(init)
    if found.family != size.family:
        raise SystemExit(f"--init {init} is a {found.family} checkpoint, but --family is {size.family}")
    return found


def level_scores(data: TextGroundingData, pred: torch.Tensor, task: str) -> dict:
    """The test answers' metrics per expression / query kind ({"colour": {"n": 80, "Acc@0.5": ..}, ...})."""
    score = KIND_OF_TASK[task][1]
    out = {}
    for level in sorted({v for v in data.levels if v is not None}):
        rows = [i for i, v in enumerate(data.levels) if v == level]
        scores = score(pred[rows], data.targets()[rows])
        out[level] = {"n": len(rows), **dict(zip(scores.columns(), scores.percentages()))}
    return out


def table(res: dict) -> str:
    lines = [f"{res['parameters'] / 1e6:.2f} M parameters, {res['steps']} steps x {res['batch_size']}"
             + (f" (continuing from {res['init']})" if res.get("init") else "") + ", "
             f"{res['train_items']} training items, training {res['train_seconds'] / 60:.1f} min", ""]
    if res.get("trained_by"):
        lines[-1:-1] = [f"(Rescored with --eval-only; trained by `{res['trained_by']}`.)"]
    for task, cols in (("spatial", ("Acc@0.5", "Acc@0.75", "Acc@0.9", "mIoU")),
                       ("temporal", ("R@1 IoU=0.3", "R@1 IoU=0.5", "R@1 IoU=0.7", "mIoU"))):
        if task not in res["tasks"]:
            continue
        r = res["tasks"][task]
        lines += [f"### {task}", "", "| answers | " + " | ".join(cols) + " | unparsable | ms / query |",
                  "|---|" + "---:|" * (len(cols) + 2)]
        for split in ("test", "train"):
            m = r[split]["metrics"]
            lines.append(f"| text, {split} split | " + " | ".join(f"{m.get(c, float('nan')):.1f}" for c in cols)
                         + f" | {r[split]['unparsable']} / {r[split]['n']} | {r[split]['ms_per_query']:.1f} |")
        lines.append("| constant (mean training target), test | "
                     + " | ".join(f"{r['constant'].get(c, float('nan')):.1f}" for c in cols) + " | 0 | 0 |")
        for level, m in r.get("test_by_level", {}).items():
            lines.append(f"| text, test, {level} only ({m['n']}) | " + " | ".join(f"{m[c]:.1f}" for c in cols)
                         + " | | |")
        lines += ["", "Examples (test): " + "; ".join(f"`{e['question']}` -> `{e['answer']}` (truth `{e['truth']}`)"
                                                     for e in r["test"]["examples"][:3]), ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    res = run(args)
    path = args.results / f"grounding-pretrain-{args.name}.json"
    if args.eval_only and path.is_file():  # rescoring: the training's own time and command stay on record
        before = json.loads(path.read_text())
        res["train_seconds"] = before.get("train_seconds", res["train_seconds"])
        res["trained_by"] = before.get("trained_by", before.get("command"))
    write_results(path, res, table(res))
    print(table(res))


if __name__ == "__main__":
    main()
