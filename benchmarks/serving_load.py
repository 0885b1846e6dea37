"""Load test of `driftkit serve`: a tiny VLA served from a subprocess on 127.0.0.1, hammered by 1-16 concurrent
clients, each in its own process, with micro-batching on and off; plus the server's overhead over an in-process
`policy.predict` of the same observation.

    python benchmarks/serving_load.py                          # untrained metaworld-vla flow policy, 64 px
    python benchmarks/serving_load.py --checkpoint DIR         # any saved policy or checkpoint (a VLA)
    python benchmarks/serving_load.py --clients 1,2 --requests 20 --out /tmp/x.json   # a quick look

Each client process connects (PolicyClient), makes `--warmup` calls, reports ready and waits; once every client
is ready the parent tells them all to start, and each sends `--requests` requests back to back (a closed loop:
the next one when the reply is in), each a realistic observation: a 64x64x3 uint8 corner2 image, the 39-d
state and the instruction. Per request a client records its round trip and the server's reply timing
(infer_ms, queue_ms, batch_size, the policy's stage times). Every loop is bounded in count and in time (a
client stops sending after `--time-limit` s; what it did not send counts as unsent), loopback only; the server
subprocess runs with OMP_NUM_THREADS=MKL_NUM_THREADS=1 (torch threads = 1) on the CPU.

Recorded per (batching, clients): p50 / p90 / p99 / max client round trip, p50 / p90 server infer_ms (one
batched predict), p50 queue_ms, mean rows per predict, throughput (replies/s over the measured window), errors
(exceptions or error frames), dropped (requests sent without a reply), reconnects, and deadline misses: round
trips longer than 8 control steps of Meta-World (8 x 12.5 ms = 100 ms, the execution horizon of the VLA's
chunk at its 80 Hz control rate). Results: benchmarks/results/serving_load.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "serving_load.json"
CAMERA_KEY = "observation.images.corner2"
INSTRUCTION = "reach the goal position"  # overwritten by the real reach-v3 instruction when it can be read
CONTROL_DT_MS = 12.5  # Meta-World: frame_skip 5 x 2.5 ms
EXEC_STEPS = 8
DEADLINE_MS = EXEC_STEPS * CONTROL_DT_MS


# ---- a policy to serve -----------------------------------------------------------------------------------------
def build_untrained_vla(out: Path, image_size: int = 64, decoder: str = "flow", tiny: bool = False) -> Path:
    """Save an untrained VLA of the metaworld-vla preset (smolvlm-tiny, horizon 16, 4-d actions, 39-d state,
    the corner2 camera) to `out`; latency does not depend on the weights. tiny=True shrinks the decoder and the
    horizon (for the CI smoke test)."""
    import dataclasses

    import torch

    from driftkit.normalize import NormStats
    from driftkit.policy import make_policy
    from driftkit.train import make_config

    cfg = make_config("metaworld-vla").model
    changes = dict(cameras=(CAMERA_KEY,), image_shape=(3, image_size, image_size), decoder=decoder)
    if tiny:
        changes.update(horizon=8, decoder_options={"hidden_dim": 32, "depth": 1})
    cfg = dataclasses.replace(cfg, **changes)
    torch.manual_seed(0)
    policy = make_policy(cfg)

    def stats(d: int) -> NormStats:
        return NormStats(mean=torch.zeros(d), std=torch.ones(d), q01=-torch.ones(d), q99=torch.ones(d))

    policy.set_stats({"action": stats(cfg.action_dim), "observation.state": stats(cfg.state_dim)})
    policy.save_pretrained(out)
    return out


def instruction() -> str:
    try:
        from driftkit.envs.tasks import instruction as task_instruction

        return task_instruction("reach-v3")
    except Exception:  # noqa: BLE001  (any readable sentence of the right length will do)
        return INSTRUCTION


def observation(seed: int, image_size: int = 64, state_dim: int = 39) -> dict:
    """A realistic request: uint8 [H, W, 3] corner2 image, float32 state, the instruction."""
    rng = np.random.default_rng(seed)
    return {CAMERA_KEY: rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8),
            "observation.state": rng.standard_normal(state_dim).astype(np.float32),
            "task": instruction()}


# ---- the server subprocess ---------------------------------------------------------------------------------------
@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def server_env(threads: int = 1) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="",
               PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else src
    return env


@contextmanager
def serve(checkpoint: Path, max_batch: int = 16, batch_window_ms: float = 2.0, threads: int = 1,
          start_timeout: float = 180.0):
    """`driftkit serve` in a subprocess on 127.0.0.1 and a free port (--port 0, read from its start line);
    yields once /healthz answers; terminates it (then kills it) on exit."""
    cmd = [sys.executable, "-m", "driftkit.cli", "serve", "--checkpoint", str(checkpoint), "--host", "127.0.0.1",
           "--port", "0", "--max-batch", str(max_batch), "--batch-window-ms", str(batch_window_ms),
           "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=server_env(threads), stdin=subprocess.DEVNULL)
    lines: queue.Queue = queue.Queue()
    log: list[str] = []

    def drain():  # keeps the pipe empty for the server's whole life
        for line in proc.stdout:
            log.append(line.rstrip())
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    server = None
    try:
        deadline = time.monotonic() + start_timeout
        port = None
        while port is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"driftkit serve did not start within {start_timeout} s; log:\n" + "\n".join(log))
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"driftkit serve exited with {proc.wait()}; log:\n" + "\n".join(log))
            if line.startswith("serving ") and " on ws://" in line:
                port = int(line.split(" on ws://", 1)[1].split()[0].rsplit(":", 1)[1])
        server = ServerProcess(proc, port, log)
        for _ in range(100):  # bounded: about 10 s
            try:
                with urllib.request.urlopen(server.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"{server.url}/healthz never answered 200")
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# ---- one client process ------------------------------------------------------------------------------------------
def client_main(spec: dict) -> None:
    """Worker entry (a separate process): connect, warm up, print READY, wait for GO on stdin, run, write JSON."""
    from driftkit.serving import PolicyClient
    from driftkit.serving.client import to_wire
    from driftkit.serving import packb

    out: dict = {"client": spec["index"], "records": [], "errors": [], "unsent": 0, "sent": 0, "dropped": 0}
    obs = observation(spec["seed"], spec["image_size"])
    out["request_bytes"] = len(packb(to_wire(obs)))
    client = PolicyClient("127.0.0.1", spec["port"], timeout=spec["reply_timeout"], retries=3)
    try:
        for _ in range(spec["warmup"]):
            client.infer(obs)
        print("READY", flush=True)
        ready, _, _ = select.select([sys.stdin], [], [], spec["go_timeout"])
        if not ready or sys.stdin.readline().strip() != "GO":
            raise TimeoutError("no GO from the parent")
        start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across the processes of this machine
        stop_at = start + spec["time_limit"]
        for i in range(spec["requests"]):
            if time.perf_counter() > stop_at:
                out["unsent"] = spec["requests"] - i
                break
            tic = time.perf_counter()
            out["sent"] += 1
            try:
                reply = client.infer(obs)
            except (TimeoutError, ConnectionError) as err:  # sent, never answered
                out["dropped"] += 1
                out["errors"].append(f"dropped: {type(err).__name__}: {str(err)[:300]}")
                continue
            except Exception as err:  # noqa: BLE001  (an error frame: counted and reported, the loop goes on)
                out["errors"].append(f"{type(err).__name__}: {str(err)[:300]}")
                continue
            toc = time.perf_counter()
            actions = np.asarray(reply["actions"])
            st, pt = reply.get("server_timing", {}), reply.get("policy_timing", {})
            ok = actions.shape == (spec["horizon"], spec["action_dim"]) and bool(np.isfinite(actions).all())
            if not ok:
                out["errors"].append(f"bad actions of shape {list(actions.shape)}")
            out["records"].append({"t0": tic, "t1": toc, "rt_ms": 1000.0 * (toc - tic),
                                   "infer_ms": st.get("infer_ms"), "queue_ms": st.get("queue_ms"),
                                   "batch_size": st.get("batch_size"), "prev_total_ms": st.get("prev_total_ms"),
                                   **{k: v for k, v in pt.items()}})
        out["reconnects"] = client.connects - 1
    except Exception as err:  # noqa: BLE001
        out["errors"].append(f"fatal {type(err).__name__}: {str(err)[:300]}")
        out["unsent"] = spec["requests"] - out["sent"]
        out["reconnects"] = max(0, client.connects - 1)
        print("READY", flush=True)  # never leave the parent waiting
    finally:
        client.close()
        Path(spec["out"]).write_text(json.dumps(out))
        print("DONE", flush=True)


def run_clients(port: int, n_clients: int, requests: int, *, warmup: int = 2, image_size: int = 64,
                horizon: int = 16, action_dim: int = 4, time_limit: float = 300.0, reply_timeout: float = 60.0,
                ready_timeout: float = 300.0) -> list[dict]:
    """n_clients client processes against 127.0.0.1:port; returns their result dicts (one per client)."""
    tmp = Path(tempfile.mkdtemp(prefix="driftkit-load-"))
    procs = []
    for i in range(n_clients):
        spec = {"index": i, "seed": 1000 + i, "port": port, "requests": requests, "warmup": warmup,
                "image_size": image_size, "horizon": horizon, "action_dim": action_dim, "time_limit": time_limit,
                "reply_timeout": reply_timeout, "go_timeout": ready_timeout + 60, "out": str(tmp / f"c{i}.json")}
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      env=server_env(1)))
    try:
        deadline = time.monotonic() + ready_timeout
        for p in procs:  # READY lines (a worker that fails prints READY too, then reports its error)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the clients were not ready within {ready_timeout} s")
                r, _, _ = select.select([p.stdout], [], [], left)
                if not r:
                    continue
                line = p.stdout.readline()
                if line == "" or line.strip() == "READY":
                    break
        for p in procs:
            try:
                p.stdin.write("GO\n")
                p.stdin.flush()
            except BrokenPipeError:
                pass
        for p in procs:
            p.wait(time_limit + reply_timeout * 2 + 60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    results = []
    for i in range(n_clients):
        f = tmp / f"c{i}.json"
        results.append(json.loads(f.read_text()) if f.is_file() else
                       {"client": i, "records": [], "errors": ["no result file"], "unsent": requests, "reconnects": 0,
                        "sent": 0, "dropped": 0})
    return results


# ---- statistics --------------------------------------------------------------------------------------------------
def pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def summarize_config(results: list[dict], requests: int, batching: str, n_clients: int, max_batch: int = 16,
                     batch_window_ms: float = 2.0) -> dict:
    recs = [r for c in results for r in c["records"]]
    rt = [r["rt_ms"] for r in recs]
    infer = [r["infer_ms"] for r in recs if r.get("infer_ms") is not None]
    queue_ms = [r["queue_ms"] for r in recs if r.get("queue_ms") is not None]
    batch = [r["batch_size"] for r in recs if r.get("batch_size") is not None]
    other = [r["rt_ms"] - r["queue_ms"] - r["infer_ms"] for r in recs
             if r.get("queue_ms") is not None and r.get("infer_ms") is not None]
    dropped = sum(c.get("dropped", 0) for c in results)
    errors = sum(len(c["errors"]) for c in results) - dropped
    unsent = sum(c.get("unsent", 0) for c in results)
    window = (max(r["t1"] for r in recs) - min(r["t0"] for r in recs)) if recs else float("nan")
    hist: dict[int, int] = {}
    for b in batch:
        hist[int(b)] = hist.get(int(b), 0) + 1
    return {
        "batching": batching, "max_batch": max_batch, "batch_window_ms": batch_window_ms, "clients": n_clients,
        "requests_per_client": requests, "replies": len(recs),
        "rt_p50_ms": pct(rt, 50), "rt_p90_ms": pct(rt, 90), "rt_p99_ms": pct(rt, 99),
        "rt_max_ms": max(rt) if rt else float("nan"), "rt_mean_ms": float(np.mean(rt)) if rt else float("nan"),
        "infer_p50_ms": pct(infer, 50), "infer_p90_ms": pct(infer, 90), "queue_p50_ms": pct(queue_ms, 50),
        "queue_p90_ms": pct(queue_ms, 90), "other_p50_ms": pct(other, 50), "other_p90_ms": pct(other, 90),
        "stage_p50_ms": {k: pct([r[f"{k}_ms"] for r in recs if f"{k}_ms" in r], 50)
                         for k in ("preprocess", "prefix", "decoder")},
        "mean_batch": float(np.mean(batch)) if batch else float("nan"),
        "rows_per_request_hist": dict(sorted(hist.items())),
        "throughput_rps": len(recs) / window if recs and window > 0 else float("nan"),
        "window_s": window, "errors": errors, "error_samples": [e for c in results for e in c["errors"]][:5],
        "sent": sum(c.get("sent", 0) for c in results), "dropped": dropped, "unsent": unsent,
        "reconnects": sum(c.get("reconnects", 0) for c in results),
        "deadline_misses": int(sum(x > DEADLINE_MS for x in rt)),
        "request_bytes": results[0].get("request_bytes") if results else None,
    }


def in_process(checkpoint: Path, repeats: int = 200, warmup: int = 5, image_size: int = 64) -> dict:
    """Median ms of policy.predict (torch threads = 1) on the very tensors the server builds from the same request
    (plainly, i.e. under predict's own no_grad as the server and driftkit.eval call it, and under
    torch.inference_mode), and of the request's pack + parse (what the server adds besides the socket)."""
    import torch

    from driftkit.policy import load_policy
    from driftkit.serving import ServeSpec, packb, parse_request
    from driftkit.serving.client import to_wire

    torch.set_num_threads(1)
    policy = load_policy(checkpoint, device="cpu")
    spec = ServeSpec.from_policy(policy)
    obs = observation(1000, image_size)
    request = parse_request(packb(to_wire(obs)), spec)

    def timed(fn, n):
        out = []
        for _ in range(n):
            tic = time.perf_counter()
            fn()
            out.append(1000.0 * (time.perf_counter() - tic))
        return out

    timed(lambda: policy.predict(request.obs), warmup)
    predict_ms = timed(lambda: policy.predict(request.obs), repeats)  # no_grad, as the server and the evaluator
    with torch.inference_mode():
        inference_mode_ms = timed(lambda: policy.predict(request.obs), repeats)
    parse_ms = timed(lambda: parse_request(packb(to_wire(obs)), spec), repeats)
    return {"predict_p50_ms": statistics.median(predict_ms), "predict_p90_ms": pct(predict_ms, 90),
            "predict_inference_mode_p50_ms": statistics.median(inference_mode_ms),
            "pack_parse_p50_ms": statistics.median(parse_ms), "repeats": repeats,
            "horizon": spec.horizon, "action_dim": spec.action_dim, "nfe": int(policy.nfe())}


# ---- the sweep ---------------------------------------------------------------------------------------------------
BATCHING = {"on": {"max_batch": 16, "batch_window_ms": 2.0}, "off": {"max_batch": 1, "batch_window_ms": 2.0}}


def sweep(checkpoint: Path, clients: list[int], requests: int, batching: list[str], warmup: int = 2,
          image_size: int = 64, horizon: int = 16, action_dim: int = 4, time_limit: float = 300.0,
          log=print) -> list[dict]:
    rows = []
    for mode in batching:
        opts = BATCHING[mode]
        with serve(checkpoint, **opts) as server:
            log(f"batching {mode} ({opts}): {server.log[-1] if server.log else ''}")
            for n in clients:
                tic = time.monotonic()
                results = run_clients(server.port, n, requests, warmup=warmup, image_size=image_size,
                                      horizon=horizon, action_dim=action_dim, time_limit=time_limit)
                row = summarize_config(results, requests, mode, n, **opts)
                rows.append(row)
                log(f"  {n:2d} clients: p50 {row['rt_p50_ms']:.1f} p99 {row['rt_p99_ms']:.1f} ms, infer p50 "
                    f"{row['infer_p50_ms']:.1f} ms, {row['throughput_rps']:.1f} req/s, batch {row['mean_batch']:.2f}, "
                    f"errors {row['errors']}, dropped {row['dropped']}, unsent {row['unsent']} "
                    f"({time.monotonic() - tic:.0f} s)")
    return rows


def table(rows: list[dict], base: dict, overhead: dict, notes: list[str]) -> str:
    lines = ["# Serving load: `driftkit serve` under 1-16 concurrent clients (loopback, CPU)", ""]
    lines += notes + [""]
    lines += ["| batching | clients | replies | RT p50 ms | RT p90 ms | RT p99 ms | RT max ms | infer p50 ms | "
              "queue p50 ms | rest p50 ms | rows/predict | req/s | errors | dropped | unsent | > 100 ms |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batching']} (max_batch {r['max_batch']}) | {r['clients']} | {r['replies']} | "
                     f"{r['rt_p50_ms']:.1f} | {r['rt_p90_ms']:.1f} | {r['rt_p99_ms']:.1f} | {r['rt_max_ms']:.1f} | "
                     f"{r['infer_p50_ms']:.1f} | {r['queue_p50_ms']:.1f} | {r['other_p50_ms']:.1f} | "
                     f"{r['mean_batch']:.2f} | "
                     f"{r['throughput_rps']:.1f} | {r['errors']} | {r['dropped']} | {r['unsent']} | "
                     f"{r['deadline_misses']} |")
    lines += ["", "## Overhead of the server over an in-process predict (one client, same observation)", "",
              f"In-process `policy.predict` (torch threads 1, {base['repeats']} calls, under predict's own no_grad as "
              f"the server and driftkit.eval call it): median {base['predict_p50_ms']:.2f} ms (p90 "
              f"{base['predict_p90_ms']:.2f}); under torch.inference_mode: "
              f"{base.get('predict_inference_mode_p50_ms', float('nan')):.2f} ms; pack + parse of the request "
              f"in-process: {base['pack_parse_p50_ms']:.2f} ms.", "",
              "| batching | RT p50 ms | server infer p50 ms | RT - in-process predict (ms) | RT - server infer (ms) |",
              "|---|---:|---:|---:|---:|"]
    for mode, o in overhead.items():
        lines.append(f"| {mode} | {o['rt_p50_ms']:.2f} | {o['infer_p50_ms']:.2f} | {o['overhead_vs_predict_ms']:.2f} "
                     f"| {o['overhead_vs_infer_ms']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="A saved VLA (default: an untrained metaworld-vla policy built under a temp dir).")
    p.add_argument("--decoder", default="flow", help="Decoder of the untrained policy (without --checkpoint).")
    p.add_argument("--clients", default="1,2,4,8,16")
    p.add_argument("--requests", type=int, default=200, help="Measured requests per client.")
    p.add_argument("--warmup", type=int, default=2, help="Warm-up calls per client (not measured).")
    p.add_argument("--batching", default="on,off", help="on: max_batch 16, 2 ms window; off: max_batch 1.")
    p.add_argument("--in-process-repeats", type=int, default=200)
    p.add_argument("--time-limit", type=float, default=300.0, help="Seconds a client may send for (per config).")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        client_main(json.loads(args.worker))
        return

    sys.path.insert(0, str(HERE))
    from common import write_results

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="driftkit-serve-bench-") as tmp:
        checkpoint = args.checkpoint or build_untrained_vla(Path(tmp) / "policy", args.image_size, args.decoder)
        base = in_process(checkpoint, args.in_process_repeats, image_size=args.image_size)
        print(f"in-process predict: {base['predict_p50_ms']:.2f} ms median", flush=True)
        clients = [int(c) for c in args.clients.split(",")]
        modes = [m for m in args.batching.split(",") if m]
        rows = sweep(checkpoint, clients, args.requests, modes, args.warmup, args.image_size, base["horizon"],
                     base["action_dim"], args.time_limit, log=lambda s: print(s, flush=True))
    overhead = {}
    for r in rows:
        if r["clients"] == 1:
            overhead[r["batching"]] = {"rt_p50_ms": r["rt_p50_ms"], "infer_p50_ms": r["infer_p50_ms"],
                                       "overhead_vs_predict_ms": r["rt_p50_ms"] - base["predict_p50_ms"],
                                       "overhead_vs_infer_ms": r["rt_p50_ms"] - r["infer_p50_ms"]}
    import torch

    notes = [
        f"Policy: {'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'an untrained metaworld-vla VLA'} "
        f"(smolvlm-tiny, {args.decoder if not args.checkpoint else 'its'} decoder, horizon {base['horizon']}, "
        f"{base['nfe']} network evaluations per chunk); latency does not depend on the weights.",
        "Server: `driftkit serve --device cpu` in a subprocess on 127.0.0.1, OMP_NUM_THREADS=MKL_NUM_THREADS=1 "
        "(torch threads 1); batching on = max_batch 16, batch window 2 ms; off = max_batch 1.",
        f"Clients: separate processes (PolicyClient), {args.warmup} warm-up calls each, then {args.requests} "
        f"requests back to back (closed loop); request = 64x64x3 uint8 image + 39-d float32 state + instruction "
        f"({rows[0]['request_bytes'] if rows else '?'} bytes of msgpack).",
        f"Machine: {os.cpu_count()} CPU cores shared by the server (its predict thread, torch threads 1, and its "
        "event loop), every client process and this parent: with 8-16 client processes the clients contend with "
        "the server for the cores, so those rows measure this machine's contention as well as the server "
        "(see 'rest').",
        f"RT = client round trip; infer = the server's predict of the batch the request ran in; queue = wait from "
        f"arrival to the start of its predict (includes the 2 ms batch window when batching is on); rest = RT - "
        f"queue - infer (serialisation, sockets, the event loop, CPU contention); "
        f"'> 100 ms' = round trips over {EXEC_STEPS} Meta-World control steps "
        f"({DEADLINE_MS:.0f} ms). dropped = sent without a reply; unsent = not sent within the time limit.",
        f"torch {torch.__version__}; whole run {time.monotonic() - started:.0f} s.",
    ]
    payload = {"rows": rows, "in_process": base, "overhead": overhead, "notes": notes,
               "settings": {"clients": clients, "requests": args.requests, "warmup": args.warmup,
                            "batching": {m: BATCHING[m] for m in modes}, "image_size": args.image_size,
                            "server_torch_threads": 1, "deadline_ms": DEADLINE_MS}}
    write_results(args.out, payload, table(rows, base, overhead, notes))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
