"""What fewer visual tokens cost a VLM that grounds: the shipped checkpoint's own text answers on the held-out
referring scenes, with the training-free token reduction (driftkit.backbones.reduce) at several keep ratios.

    python benchmarks/reduction_grounding.py                      # checkpoints/qwen3_vl-grounding, 2 threads
    python benchmarks/reduction_grounding.py --keep 1 0.5 --n 32 --out /tmp/rg   # a quick look

The test scenes are those the checkpoint was scored on (the pretraining mix's test split: data seed 0, the
kinds it was trained on). Each keep ratio r keeps max(1, round(r * N)) of an image's N tokens and merges the
others into `--merged` tokens; keep 1 is the unreduced model. Spatial only: the checkpoint does not ground
time (docs/grounding.md), so a temporal row would measure nothing. Results go to
benchmarks/results/reduction_grounding.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402
from grounding_pretrain import answer_scores  # noqa: E402

from driftkit.backbones.reduce import TokenReduction  # noqa: E402
from driftkit.grounding.actions import CAMERA  # noqa: E402
from driftkit.grounding.pretrain import PretrainDataConfig, make_pretrain_data  # noqa: E402
from driftkit.grounding.pretrain_model import pretrained_meta  # noqa: E402
from driftkit.policy import TextPolicy, TextPolicyConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ("Acc@0.5", "Acc@0.75", "Acc@0.9", "mIoU")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/qwen3_vl-grounding"))
    p.add_argument("--kinds", nargs="+", default=["colour", "single", "colour_shape"],
                   help="Expression kinds of the test scenes (those the checkpoint was pretrained on).")
    p.add_argument("--keep", nargs="+", type=float, default=[1.0, 0.75, 0.5, 0.25])
    p.add_argument("--merged", type=int, default=1, help="Merged tokens per image built from the others.")
    p.add_argument("--scores", nargs="+", default=["norm", "attention"], help="Dominance scores to compare.")
    p.add_argument("--n", type=int, default=256, help="Test scenes.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "reduction_grounding")
    return p.parse_args(argv)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    meta = pretrained_meta(args.checkpoint)
    if meta is None:
        raise SystemExit(f"{args.checkpoint} records no text-answer convention (driftkit_text_answers.json)")
    data_cfg = PretrainDataConfig(family=meta["family"], image_size=meta["image_size"], train_scenes=1,
                                  temporal_clips=0, test_size=args.n, kinds=tuple(args.kinds))
    test = make_pretrain_data(data_cfg, "test").subset("box")
    policy = TextPolicy(TextPolicyConfig(backbone=str(args.checkpoint), mode="frozen", cameras=(CAMERA,),
                                         answer="box")).eval()
    n = image_tokens(policy, test)
    rows = []
    for keep in args.keep:
        for score in args.scores if keep < 1 else ["none"]:
            reduction = TokenReduction(keep, args.merged, score) if keep < 1 else None
            policy.backbone.set_reduction(reduction)  # training-free: one loaded model serves every row
            found = answer_scores(policy, test, "spatial")
            found.pop("predictions")
            tokens = f"{n}" if reduction is None else "{} + {} of {}".format(*reduction.counts(n), n)
            rows.append({"keep": keep, "score": score, "tokens": tokens, **found})
            print(f"keep {keep} ({score}): Acc@0.5 {found['metrics']['Acc@0.5']:.1f}, "
                  f"{found['ms_per_query']:.1f} ms/query")
    return {"checkpoint": str(args.checkpoint), "data": data_cfg.to_dict(), "merged": args.merged, "rows": rows}


def image_tokens(policy, data) -> int:
    """N, the image tokens of one scene before any reduction."""
    bb = policy.backbone
    images, prompts = policy.inputs({CAMERA: data[0][CAMERA][None], "task": [data[0]["task"]]})
    return int(bb.prepare(images, prompts).input_ids.eq(bb.special_ids["image"]).sum())


def table(res: dict) -> str:
    n, acc = res["rows"][0]["n"], res["rows"][0]["metrics"]["Acc@0.5"] / 100
    lines = [f"Checkpoint `{res['checkpoint']}`, its own text answers on {n} held-out scenes "
             f"(kinds {', '.join(res['data']['kinds'])}); unparsable answers score IoU 0. One pass, no seeds: "
             "the reduction and greedy decoding are deterministic, so the noise is the binomial one of the scenes "
             f"(SE of the first row's Acc@0.5: {100 * (acc * (1 - acc) / n) ** 0.5:.1f} points; every row answers "
             "the same scenes).", "",
             "| keep | score | image tokens (kept + merged) | " + " | ".join(COLUMNS) + " | unparsable | ms / query |",
             "|---:|---|---|" + "---:|" * (len(COLUMNS) + 2)]
    for r in res["rows"]:
        m = r["metrics"]
        lines.append(f"| {r['keep']:g} | {r['score']} | {r['tokens']} | "
                     + " | ".join(f"{m[c]:.1f}" for c in COLUMNS) + f" | {r['unparsable']} | {r['ms_per_query']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    res = run(args)
    write_results(args.out.with_suffix(".json"), res, table(res))
    print(table(res))


if __name__ == "__main__":
    main()
