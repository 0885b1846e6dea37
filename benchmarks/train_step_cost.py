"""Cost of one optimiser step: drift (G = train_samples samples per observation) against flow.

    python benchmarks/train_step_cost.py                              # tiny VLA + MLP state policy, CPU
    python benchmarks/train_step_cost.py --models vla --repeats 9 --label after

Models are the presets' own: `vla` is the metaworld-vla policy (smolvlm-tiny in full mode, cond="context",
so the decoder runs on the "expert" net over the whole prefix) on a synthetic batch of --vla-batch 64-px
images, prompts and states; `state` is the metaworld-state policy (MLP net) on a synthetic batch of
--state-batch states and task ids. One step = zero_grad, policy(batch).loss.backward(), AdamW step. Each
model runs --warmup untimed steps, then --repeats timed ones, flow and drift alternating so both meet the same
load of a shared machine. The table gives the median and the min-max spread, and drift's median (and minimum)
over flow's: on a machine shared with other jobs the minima are the least disturbed. Results merge into the
JSON under --label (e.g. "before" from a checkout of the code before a change, "after" from the change;
PYTHONPATH=<checkout>/src picks the library), so one file holds both. --net layerwise_expert runs the VLA with
the layer-wise expert instead (cond="cache": one block per VLM layer, width 0.75x the VLM's, its defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

import driftkit
from common import machine
from driftkit.atomic import write_text_atomic
from driftkit.normalize import NormStats
from driftkit.policy import make_policy
from driftkit.train.config import PRESETS

CAMERA = "observation.images.corner2"
PRESET = {"vla": "metaworld-vla", "state": "metaworld-state"}


def stats(dim: int) -> NormStats:
    return NormStats(mean=torch.zeros(dim), std=torch.ones(dim), q01=-2 * torch.ones(dim), q99=2 * torch.ones(dim))


def build(model: str, decoder: str, args):
    """(policy, batch) for one of PRESET's models with its decoder replaced by `decoder`."""
    config = PRESETS[PRESET[model]][0]().model
    b = args.vla_batch if model == "vla" else args.state_batch
    g = torch.Generator().manual_seed(0)
    batch = {"action": torch.randn(b, config.horizon, config.action_dim, generator=g),
             "observation.state": torch.randn(b, config.state_dim, generator=g)}
    if model == "vla":
        config = dataclasses.replace(config, decoder=decoder, cameras=(CAMERA,), image_shape=(3, 64, 64))
        if args.net == "layerwise_expert":
            config = dataclasses.replace(config, cond="cache", decoder_options={})
        for key in config.cameras:
            batch[key] = torch.rand(b, 3, 64, 64, generator=g)
        batch["task"] = [f"task {i % 10}: push the puck to the goal" for i in range(b)]
    else:
        config = dataclasses.replace(config, decoder=decoder)
        batch["task_index"] = torch.arange(b) % config.num_tasks
    torch.manual_seed(0)
    policy = make_policy(config)
    policy.set_stats({"action": stats(config.action_dim), "observation.state": stats(config.state_dim)})
    return policy.train(), batch


def step_fn(policy, batch):
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=3e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        policy(batch).loss.backward()
        opt.step()

    return step


def rows_for(model: str, args) -> list[dict]:
    """Flow and drift steps alternate (flow, drift, flow, ...), so both see the same load on a shared machine."""
    built = {name: build(model, name, args) for name in ("flow", "drift")}
    steps = {name: step_fn(*built[name]) for name in built}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    ms = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            ms[name].append(1000.0 * (time.perf_counter() - start))
    rows = []
    for name, policy_batch in built.items():
        policy, batch = policy_batch
        g = policy.decoder.config.train_samples if name == "drift" else None
        t = ms[name]
        net = args.net if model == "vla" else "mlp"
        rows.append(dict(model=model, net=net, decoder=name, batch=len(batch["action"]), train_samples=g,
                         median_ms=statistics.median(t), min_ms=min(t), max_ms=max(t), ms=t))
        print(f"{model:5s} {name:5s}: median {rows[-1]['median_ms']:.1f} ms ({min(t):.1f}-{max(t):.1f})", flush=True)
    return rows


TARGET = 1.5  # issue 14: a drift training step at most 1.5x a flow step on the VLA


def table(runs: dict) -> str:
    lines = ["| run | model | decoder | batch | G | median ms | min-max ms | drift / flow (medians) | (minima) |",
             "|---|---|---|---|---|---|---|---|---|"]
    verdicts, commands = [], []
    for label, run in runs.items():
        by = {(r["model"], r["decoder"]): r for r in run["rows"]}
        for r in run["rows"]:
            flow, net = by.get((r["model"], "flow")), r.get("net", "expert" if r["model"] == "vla" else "mlp")
            ratio, best = None, ""
            if r["decoder"] == "drift" and flow:
                ratio, best = r["median_ms"] / flow["median_ms"], f"{r['min_ms'] / flow['min_ms']:.2f}x"
            lines.append(f"| {label} | {r['model']} ({net}) | {r['decoder']} | {r['batch']} | "
                         f"{r['train_samples'] or ''} | "
                         f"{r['median_ms']:.1f} | {r['min_ms']:.1f}-{r['max_ms']:.1f} | "
                         f"{'' if ratio is None else f'{ratio:.2f}x'} | {best} |")
            if ratio is not None and r["model"] == "vla":
                verdict = "met" if ratio <= TARGET else "not met"
                verdicts.append(f"- {label} ({net}): {ratio:.2f}x (minima {best}), {verdict}")
        commands.append(f"- {label}: `{run['command']}` (library: {run['driftkit']}; machine: "
                        f"{json.dumps(run['machine'])})")
    return "\n".join([*lines, "", f"Target (issue 14): a drift step at most {TARGET}x a flow step on the VLA.",
                      *verdicts, "", "Runs:", *commands])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vla", "state"], choices=sorted(PRESET))
    p.add_argument("--vla-batch", type=int, default=32)
    p.add_argument("--state-batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--net", default="expert", choices=["expert", "layerwise_expert"], help="the VLA's decoder net")
    p.add_argument("--label", default="run", help="key of this run in the results (e.g. before / after)")
    p.add_argument("--out", default="benchmarks/results/train_step_cost_cpu.json")
    p.add_argument("--render", action="store_true", help="only rewrite the markdown from the JSON's runs")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    runs = json.loads(out.read_text())["runs"] if out.exists() else {}
    if not args.render:
        rows = [row for model in args.models for row in rows_for(model, args)]
        command = " ".join(shlex.quote(a) for a in sys.argv)
        runs[args.label] = {"command": command, "driftkit": driftkit.__file__, "args": vars(args),
                            "machine": machine(), "rows": rows}
        write_text_atomic(out, json.dumps({"runs": runs}, indent=2))
    write_text_atomic(out.with_suffix(".md"), table(runs) + "\n")
    print(table(runs))


if __name__ == "__main__":
    main()
