"""Meta-World closed loop THROUGH `driftkit serve` with a simulated inference delay: synchronous execution vs
naive asynchronous chunk switching vs real-time chunking (RTC), for VLA checkpoints with a flow and a drift
decoder.

    # data + checkpoints (the ones of benchmarks/results/metaworld-rtc; see summary.md for the exact commands)
    driftkit collect --tasks reach-v3,button-press-topdown-v3 --episodes 20 --noise-std 0.1 --image --out DATA
    driftkit train --preset metaworld-vla --set data.root=DATA --set decoder=flow --set steps=N --set output_dir=RUNS/flow
    driftkit train --preset metaworld-vla --set data.root=DATA --set decoder=drift --set steps=N --set output_dir=RUNS/drift
    python benchmarks/metaworld_rtc.py --checkpoint flow=RUNS/flow --checkpoint drift=RUNS/drift
    python benchmarks/metaworld_rtc.py ... --summary-only --notes-file benchmarks/results/metaworld-rtc/notes.md
                                                               # rebuild summary.md / results.json from the cells

The delay is simulated in control steps, deterministically (wall-clock latency plays no part): the chunk
requested at step t with observation o_t becomes usable at step t + d; until then the robot keeps executing the
previous chunk. With chunk length H and execution horizon s (a new request every s steps):
    sync   the env waits for every chunk: request at t = 0, s, 2s, ...; chunk k runs its indices 0..s-1 (no delay)
    naive  request at t = ks with o_ks while chunk k-1 runs on (its indices s..s+d-1); at t = ks + d switch to
           chunk k from its index d (it runs indices d..s+d-1); chunk 0 (the cold start) runs from index 0
    rtc    as naive, and the request carries prev_actions = chunk k-1's not-yet-executed actions at the time of
           o_ks (its indices s..H-1, aligned to the new chunk's indices 0..H-s-1), delay d and
           execution_horizon s (the server's RTC fields): flow is guided at every Euler step, drift draws 8
           candidates and keeps the one closest to the prefix (driftkit.rtc)
Every request carries a seed derived from (task, env seed, episode, request number), so the modes and decoders
see the same sampling noise schedule; the server runs seeded requests alone.

Per (decoder, mode, d): success with its binomial SE and the spread over evaluation seeds, and smoothness: the
mean |a_t - a_{t-1}| (mean over the 4 action dims, the executed, clipped actions) at chunk boundaries (the step
at which the executed chunk changes) vs within chunks. Each finished (decoder, mode, d, task, seed) cell is
appended as one JSON line to cells.jsonl; a rerun skips the cells already there (same settings), so an
interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "metaworld-rtc"
MODES = ("sync", "naive", "rtc")


@dataclass(frozen=True)
class Settings:
    horizon: int = 16
    """H, actions per chunk (the checkpoints' horizon)."""
    exec_steps: int = 8
    """s, actions executed per chunk (and the RTC execution horizon)."""
    max_steps: int = 150
    episodes: int = 10
    """Episodes per (task, seed) cell."""

    def check(self, delays) -> None:
        for d in delays:
            if not (0 <= d <= self.exec_steps <= self.horizon - d):
                raise ValueError(f"delay {d} with s={self.exec_steps}, H={self.horizon}: need d <= s <= H - d")


def request_seed(task: str, env_seed: int, episode: int, k: int) -> int:
    digest = hashlib.sha256(f"{task}/{env_seed}/{episode}/{k}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def episode_served(client, env, *, mode: str, delay: int, settings: Settings, task: str, env_seed: int,
                   episode: int) -> dict:
    """One closed-loop episode through `client` (a PolicyClient) on a MetaWorldEnv."""
    h, s, d = settings.horizon, settings.exec_steps, (0 if mode == "sync" else delay)
    obs = env.reset()
    text = env.instruction
    infer_ms: list[float] = []
    rt_ms: list[float] = []
    n_requests = 0

    def request(o, prev=None) -> np.ndarray:
        nonlocal n_requests
        msg = {"observation.images.corner2": o.image, "observation.state": o.state, "task": text,
               "seed": request_seed(task, env_seed, episode, n_requests)}
        if prev is not None:
            msg.update(prev_actions=np.ascontiguousarray(prev, dtype=np.float32), delay=d, execution_horizon=s)
        n_requests += 1
        tic = time.perf_counter()
        reply = client.infer(msg)
        rt_ms.append(1000.0 * (time.perf_counter() - tic))
        infer_ms.append(float(reply["server_timing"]["infer_ms"]))
        chunk = np.asarray(reply["actions"], dtype=np.float32)
        if chunk.shape[0] != h:
            raise ValueError(f"the server sent a chunk of {chunk.shape[0]} actions; --horizon is {h}")
        return chunk

    chunk, start, chunk_id = request(obs), 0, 0
    pending = None  # (chunk, usable at step, index-0 step, id)
    next_request = s
    prev_action, prev_id = None, None
    boundary, within = [], []
    success, t = False, 0
    while t < settings.max_steps:
        if mode == "sync":
            if t - start == s:
                chunk, start, chunk_id = request(obs), t, chunk_id + 1
        else:
            if pending is not None and t == pending[1]:  # the chunk requested d steps ago arrives
                chunk, _, start, chunk_id = pending
                pending = None
            if t == next_request:
                remaining = chunk[t - start:] if mode == "rtc" else None  # not yet executed at o_t
                pending = (request(obs, remaining), t + d, t, chunk_id + 1)
                next_request += s
                if d == 0:
                    chunk, _, start, chunk_id = pending
                    pending = None
        action = np.clip(chunk[t - start], -1.0, 1.0)
        if prev_action is not None:
            jump = float(np.abs(action - prev_action).mean())
            (boundary if chunk_id != prev_id else within).append(jump)
        prev_action, prev_id = action, chunk_id
        step = env.step(action)
        obs, t = step.obs, t + 1
        if step.success:
            success = True
            break
        if step.truncated:
            break
    return {"episode": episode, "success": success, "length": t, "requests": n_requests,
            "boundary_sum": float(sum(boundary)), "boundary_n": len(boundary), "within_sum": float(sum(within)),
            "within_n": len(within), "infer_ms_median": float(np.median(infer_ms)),
            "rt_ms_median": float(np.median(rt_ms))}


def run_cell(client, *, decoder: str, mode: str, delay: int, task: str, env_seed: int, settings: Settings,
             image_size: int = 64, env=None) -> dict:
    """Every episode of one (decoder, mode, d, task, seed) cell -> its JSON record. env: reuse this MetaWorldEnv
    (its goal sequence then continues; the sweep makes a fresh one per cell, seeded by env_seed)."""
    from driftkit.envs.metaworld import MetaWorldEnv

    tic = time.monotonic()
    with ExitStack() as stack:
        if env is None:
            env = stack.enter_context(MetaWorldEnv(task, seed=env_seed, image=True, image_size=image_size,
                                                   max_steps=settings.max_steps))
        episodes = [episode_served(client, env, mode=mode, delay=delay, settings=settings, task=task,
                                   env_seed=env_seed, episode=e) for e in range(settings.episodes)]
    return {"decoder": decoder, "mode": mode, "delay": 0 if mode == "sync" else delay, "task": task,
            "seed": env_seed, "settings": asdict(settings), "episodes": episodes,
            "successes": sum(e["success"] for e in episodes), "n": len(episodes),
            "seconds": time.monotonic() - tic}


def command_line() -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in sys.argv)


def cell_key(rec: dict) -> tuple:
    return (rec["decoder"], rec["mode"], rec["delay"], rec["task"], rec["seed"])


def read_cells(path: Path, settings: Settings) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by an interruption: that cell runs again
            continue
        if rec.get("settings") == asdict(settings):
            out.append(rec)
    return out


def plan(decoders: list[str], delays: list[int], tasks: list[str], seeds: list[int]) -> list[tuple]:
    """(decoder, mode, d, task, seed) in run order: seed by seed, so a cut sweep still has every configuration."""
    configs = [("sync", 0)] + [(m, d) for d in delays for m in ("naive", "rtc")]
    return [(dec, m, d, task, seed) for seed in seeds for dec in decoders for m, d in configs for task in tasks]


# ---- statistics -----------------------------------------------------------------------------------------------
def summarize(cells: list[dict]) -> list[dict]:
    from driftkit.eval.stats import binomial_se, seed_spread

    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["decoder"], c["mode"], c["delay"]), []).append(c)
    rows = []
    for (dec, mode, d), cs in groups.items():
        eps = [e for c in cs for e in c["episodes"]]
        n, k = len(eps), sum(e["success"] for e in eps)
        p = k / n
        by_seed: dict[int, list[bool]] = {}
        by_task: dict[str, list[bool]] = {}
        for c in cs:
            by_seed.setdefault(c["seed"], []).extend(e["success"] for e in c["episodes"])
            by_task.setdefault(c["task"], []).extend(e["success"] for e in c["episodes"])
        b_sum, b_n = sum(e["boundary_sum"] for e in eps), sum(e["boundary_n"] for e in eps)
        w_sum, w_n = sum(e["within_sum"] for e in eps), sum(e["within_n"] for e in eps)
        per_ep_b = [e["boundary_sum"] / e["boundary_n"] for e in eps if e["boundary_n"]]
        per_ep_w = [e["within_sum"] / e["within_n"] for e in eps if e["within_n"]]
        rows.append({
            "decoder": dec, "mode": mode, "delay": d, "episodes": n, "successes": k, "success": p,
            "success_se": binomial_se(p, n),
            "seed_std": seed_spread([np.mean(v) for _, v in sorted(by_seed.items())]),
            "per_seed": {str(s): float(np.mean(v)) for s, v in sorted(by_seed.items())},
            "per_task": {t: float(np.mean(v)) for t, v in by_task.items()},
            "mean_length": float(np.mean([e["length"] for e in eps])),
            "boundary_jump": b_sum / b_n if b_n else float("nan"), "boundary_n": b_n,
            "boundary_jump_se": _se(per_ep_b), "within_jump": w_sum / w_n if w_n else float("nan"),
            "within_jump_se": _se(per_ep_w), "within_n": w_n,
            "infer_ms_median": float(np.median([e["infer_ms_median"] for e in eps])),
        })
    order = {m: i for i, m in enumerate(MODES)}
    return sorted(rows, key=lambda r: (r["decoder"], r["delay"], order[r["mode"]]))


def _se(values) -> float:
    """SE of a mean over episodes (each episode one value)."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) >= 2 else float("nan")


def compare(rows: list[dict]) -> list[dict]:
    """RTC vs naive and naive vs sync at each delay: differences with their noise floor (2 SE of the difference,
    the two groups taken as independent)."""
    by = {(r["decoder"], r["mode"], r["delay"]): r for r in rows}
    out = []
    for (dec, mode, d), r in by.items():
        pairs = []
        if mode == "rtc" and (dec, "naive", d) in by:
            pairs.append(("rtc", "naive", by[(dec, "naive", d)]))
        if mode == "naive" and (dec, "sync", 0) in by:
            pairs.append(("naive", "sync", by[(dec, "sync", 0)]))
        for a, b, other in pairs:
            ds = r["success"] - other["success"]
            floor_s = 2 * math.hypot(r["success_se"], other["success_se"])
            dj = r["boundary_jump"] - other["boundary_jump"]
            floor_j = 2 * math.hypot(r["boundary_jump_se"], other["boundary_jump_se"])
            out.append({"decoder": dec, "delay": d, "a": a, "b": b, "success_diff": ds, "success_floor": floor_s,
                        "success_inside_noise": abs(ds) <= floor_s, "boundary_jump_diff": dj,
                        "boundary_jump_floor": floor_j, "boundary_inside_noise": abs(dj) <= floor_j})
    return out


def markdown(rows: list[dict], comparisons: list[dict], notes: list[str], missing: int) -> str:
    lines = ["# Meta-World through `driftkit serve` with a simulated inference delay: sync vs naive async vs RTC",
             "", *notes, ""]
    if missing:
        lines += [f"**{missing} planned cell(s) have not run yet; the table covers the finished ones.**", ""]
    lines += ["| decoder | mode | d | episodes | success % | ± binomial SE | seed std | per seed % | per task % | "
              "mean length | boundary jump | within jump | boundary / within | server ms (median) |",
              "|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = r["boundary_jump"] / r["within_jump"] if r["within_jump"] else float("nan")
        per_seed = ", ".join(f"{100 * v:.0f}" for v in r["per_seed"].values())
        per_task = ", ".join(f"{t.replace('-v3', '')} {100 * v:.0f}" for t, v in r["per_task"].items())
        seed_std = "-" if math.isnan(r["seed_std"]) else f"{100 * r['seed_std']:.1f}"
        lines.append(f"| {r['decoder']} | {r['mode']} | {r['delay'] if r['mode'] != 'sync' else '-'} | "
                     f"{r['episodes']} | {100 * r['success']:.1f} | {100 * r['success_se']:.1f} | {seed_std} | "
                     f"{per_seed} | {per_task} | {r['mean_length']:.0f} | {r['boundary_jump']:.4f} ± "
                     f"{r['boundary_jump_se']:.4f} | {r['within_jump']:.4f} ± {r['within_jump_se']:.4f} | "
                     f"{ratio:.2f} | {r['infer_ms_median']:.1f} |")
    lines += ["", "## Differences (noise floor = 2 SE of the difference)", "",
              "| decoder | d | comparison | success diff (points) | floor | boundary jump diff | floor |",
              "|---|---:|---|---:|---:|---:|---:|"]
    for c in sorted(comparisons, key=lambda c: (c["decoder"], c["delay"], c["a"])):
        s_note = " (inside noise)" if c["success_inside_noise"] else ""
        j_note = " (inside noise)" if c["boundary_inside_noise"] else ""
        lines.append(f"| {c['decoder']} | {c['delay']} | {c['a']} - {c['b']} | {100 * c['success_diff']:+.1f}{s_note} "
                     f"| ±{100 * c['success_floor']:.1f} | {c['boundary_jump_diff']:+.4f}{j_note} | "
                     f"±{c['boundary_jump_floor']:.4f} |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, cells: list[dict], planned: int, settings: Settings, extra: dict,
                  notes: list[str]) -> None:
    sys.path.insert(0, str(HERE))
    from common import machine

    from driftkit.atomic import write_text_atomic

    rows = summarize(cells) if cells else []
    comparisons = compare(rows)
    missing = max(0, planned - len(cells))
    command = command_line()
    runs = list(dict.fromkeys(c["command"] for c in cells if c.get("command")))
    header = [f"Command: `{command}`", ""]
    if runs and runs != [command]:
        header += ["Cells run by: " + "; ".join(f"`{r}`" for r in runs), ""]
    header += [f"Machine: `{json.dumps(machine())}`", "", *[f"- {n}" for n in notes],
               f"- Closed-loop time of the cells: {sum(c.get('seconds', 0) for c in cells) / 60:.1f} min for "
               f"{sum(c['n'] for c in cells)} episodes in {len(cells)} cells."]
    payload = {"command": command, "machine": machine(), "settings": asdict(settings), **extra,
               "summary": rows, "comparisons": comparisons, "missing_cells": missing,
               "cells": [{k: v for k, v in c.items() if k != "episodes"} for c in cells],
               "episodes_file": "cells.jsonl (one line per cell, every episode)"}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "results.json", json.dumps(payload, indent=2))
    write_text_atomic(out / "summary.md", markdown(rows, comparisons, header, missing))


# ---- the sweep --------------------------------------------------------------------------------------------------
_CLIENTS: dict = {}


def _worker_cell(ports: dict, cell: tuple, settings: Settings, image_size: int) -> dict:
    """One cell in a worker process (its own client per server, kept for the worker's life)."""
    from driftkit.serving import PolicyClient

    dec, mode, d, task, seed = cell
    if dec not in _CLIENTS:
        _CLIENTS[dec] = PolicyClient("127.0.0.1", ports[dec], timeout=120)
    return run_cell(_CLIENTS[dec], decoder=dec, mode=mode, delay=d, task=task, env_seed=seed, settings=settings,
                    image_size=image_size)


def parse_checkpoints(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--checkpoint takes LABEL=DIR, got {item!r}")
        label, path = item.split("=", 1)
        out[label] = Path(path)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", default=[], help="LABEL=DIR (a run folder or a checkpoint); "
                   "repeat for each decoder, e.g. flow=runs/flow drift=runs/drift.")
    p.add_argument("--tasks", default="reach-v3,button-press-topdown-v3")
    p.add_argument("--seeds", default="0,1,2", help="Environment (evaluation) seeds.")
    p.add_argument("--delays", default="2,4", help="Simulated delays d in control steps.")
    p.add_argument("--episodes", type=int, default=10, help="Episodes per task and seed.")
    p.add_argument("--max-steps", type=int, default=150)
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--exec-steps", type=int, default=8, help="s: actions executed per chunk (RTC execution horizon).")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--budget-min", type=float, default=None, help="Stop starting new cells after this many minutes "
                   "(the cells left are listed as missing; a rerun resumes).")
    p.add_argument("--workers", type=int, default=2, help="Cells run at once, each in its own process (the env's "
                   "software rendering takes one core; the servers are mostly idle).")
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--note", action="append", default=[], help="A line added to summary.md (budget, what was cut).")
    p.add_argument("--notes-file", type=Path, default=None, help="A file whose non-empty lines are added as notes.")
    args = p.parse_args(argv)

    if args.notes_file is not None:
        args.note += [line.strip() for line in args.notes_file.read_text().splitlines() if line.strip()]
    settings = Settings(args.horizon, args.exec_steps, args.max_steps, args.episodes)
    delays = [int(d) for d in args.delays.split(",") if d]
    settings.check(delays)
    checkpoints = parse_checkpoints(args.checkpoint)
    tasks = [t for t in args.tasks.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    todo = plan(list(checkpoints), delays, tasks, seeds)
    cells_file = args.out / "cells.jsonl"
    done = {cell_key(c): c for c in read_cells(cells_file, settings)}
    notes = [f"Setup: tasks {', '.join(tasks)}; evaluation seeds {seeds}, {settings.episodes} episodes per task and "
             f"seed, at most {settings.max_steps} steps; chunk H = {settings.horizon}, execution horizon s = "
             f"{settings.exec_steps}; delays d = {delays} control steps (simulated, deterministic); the server "
             "is `driftkit serve` in a subprocess (loopback, CPU, torch threads 1); each request seeded.",
             "Smoothness: mean |a_t - a_{t-1}| (mean over action dims) at chunk boundaries vs within chunks, "
             "± SE over episodes.", *args.note]
    extra = {"checkpoints": {k: str(v) for k, v in checkpoints.items()}, "tasks": tasks, "seeds": seeds,
             "delays": delays}
    if args.summary_only or not todo:
        cells = [done[k] for k in map(tuple, todo) if k in done] if todo else list(done.values())
        write_summary(args.out, cells, len(todo) or len(cells), settings, extra, notes)
        print(f"wrote {args.out / 'summary.md'} ({len(cells)} cells)")
        return

    sys.path.insert(0, str(HERE))
    from serving_load import serve

    from driftkit.serving import PolicyClient

    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    left = [c for c in todo if c not in done]
    print(f"{len(todo)} cells planned, {len(todo) - len(left)} done, {len(left)} to run", flush=True)
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ExitStack() as stack:
        ports = {}
        for label, path in checkpoints.items():
            if any(c[0] == label for c in left):
                server = stack.enter_context(serve(path, max_batch=1))
                with PolicyClient("127.0.0.1", server.port, timeout=120) as probe:
                    meta = probe.metadata
                if meta["horizon"] != settings.horizon or not meta["rtc"]:
                    raise SystemExit(f"{label}: the server reports horizon {meta['horizon']}, rtc {meta['rtc']}; "
                                     f"need horizon {settings.horizon} and RTC support")
                ports[label] = server.port
                print(f"{label}: {server.log[-1]}", flush=True)
        pool = stack.enter_context(ProcessPoolExecutor(max(1, args.workers),
                                                       mp_context=multiprocessing.get_context("spawn")))
        queue, running, finished = list(left), {}, 0
        while queue or running:
            while queue and len(running) < max(1, args.workers):
                if args.budget_min is not None and time.monotonic() - started > 60 * args.budget_min:
                    print(f"budget of {args.budget_min} min reached: {len(queue)} cells not started", flush=True)
                    queue = []
                    break
                cell = queue.pop(0)
                running[pool.submit(_worker_cell, ports, cell, settings, args.image_size)] = cell
            if not running:
                break
            ready, _ = wait(list(running), timeout=1800, return_when=FIRST_COMPLETED)
            if not ready:
                raise TimeoutError("no cell finished within 30 minutes")
            for future in ready:
                running.pop(future)
                rec = future.result()
                rec["command"] = command_line()
                rec["checkpoint"] = str(checkpoints[rec["decoder"]])
                with cells_file.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                done[cell_key(rec)] = rec
                finished += 1
                print(f"[{finished}/{len(left)}] {rec['decoder']} {rec['mode']} d={rec['delay']} {rec['task']} seed "
                      f"{rec['seed']}: {rec['successes']}/{rec['n']} ({rec['seconds']:.0f} s; total "
                      f"{(time.monotonic() - started) / 60:.1f} min)", flush=True)
    cells = [done[k] for k in todo if k in done]
    write_summary(args.out, cells, len(todo), settings, extra, notes)
    print(f"wrote {args.out / 'summary.md'} ({len(cells)} of {len(todo)} cells)")


if __name__ == "__main__":
    main()
