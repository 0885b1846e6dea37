"""Smoke test of the two serving benchmarks (benchmarks/serving_load.py, benchmarks/metaworld_rtc.py): their core
functions on a tiny untrained VLA (32 px, horizon 8), so the scripts cannot rot. Loopback only; every wait is
bounded (client timeouts, the scripts' own start / ready / time limits)."""

from __future__ import annotations

import json

import pytest

from bench_helpers import benchmark

serving_load = benchmark("serving_load")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' past_key_values rename


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`driftkit serve` in a subprocess (its port read from its start line) serving a tiny untrained VLA."""
    checkpoint = serving_load.build_untrained_vla(tmp_path_factory.mktemp("bench") / "vla", image_size=32, tiny=True)
    with serving_load.serve(checkpoint, max_batch=16, batch_window_ms=2.0, start_timeout=60) as srv:
        yield srv
    assert srv.proc.poll() is not None  # the context stopped the server


def test_load_benchmark_core_runs_two_client_processes(server):
    """2 client processes x 3 requests after 1 warm-up call each: every request answered, none dropped, the table
    and the overhead rows render."""
    results = serving_load.run_clients(server.port, 2, 3, warmup=1, image_size=32, horizon=8, time_limit=30,
                                       reply_timeout=30, ready_timeout=60)
    row = serving_load.summarize_config(results, 3, "on", 2)
    assert (row["replies"], row["sent"], row["errors"], row["dropped"], row["unsent"]) == (6, 6, 0, 0, 0), row
    assert row["rt_p50_ms"] >= row["infer_p50_ms"] > 0 and 1 <= row["mean_batch"] <= 2
    assert sum(row["rows_per_request_hist"].values()) == 6 and row["throughput_rps"] > 0
    base = {"predict_p50_ms": 1.0, "predict_p90_ms": 1.0, "pack_parse_p50_ms": 0.1, "repeats": 1}
    overhead = {"on": {"rt_p50_ms": row["rt_p50_ms"], "infer_p50_ms": row["infer_p50_ms"],
                       "overhead_vs_predict_ms": 0.0, "overhead_vs_infer_ms": 0.0}}
    md = serving_load.table([row], base, overhead, ["a note"])
    assert "| on (max_batch 16) | 2 | 6 |" in md and "a note" in md


def test_rtc_benchmark_core_runs_every_mode_and_resumes(server, tmp_path):
    """One 10-step Meta-World episode per mode through the served policy, the summary and comparisons, and the
    resume file round trip."""
    pytest.importorskip("metaworld")
    mr = benchmark("metaworld_rtc")
    from driftkit.envs.metaworld import MetaWorldEnv
    from driftkit.serving import PolicyClient

    settings = mr.Settings(horizon=8, exec_steps=4, max_steps=10, episodes=1)
    cells = []
    with PolicyClient("127.0.0.1", server.port, timeout=30) as client, \
            MetaWorldEnv("reach-v3", seed=0, image=True, image_size=32, max_steps=10) as env:
        assert client.metadata["rtc"] and client.metadata["horizon"] == 8
        for mode, d in (("sync", 0), ("naive", 2), ("rtc", 2)):  # an error frame would raise here
            cells.append(mr.run_cell(client, decoder="flow", mode=mode, delay=d, task="reach-v3", env_seed=0,
                                     settings=settings, env=env))
    for cell in cells:
        (ep,) = cell["episodes"]
        assert ep["length"] == 10 and ep["boundary_n"] + ep["within_n"] == 9
        # requests at t = 0, 4, 8: sync switches at 4 and 8; naive / rtc at 4 + 2 = 6 (the third is still in flight)
        assert ep["requests"] == 3 and ep["boundary_n"] == (2 if cell["mode"] == "sync" else 1)
    rows = mr.summarize(cells)
    assert [(r["mode"], r["delay"]) for r in rows] == [("sync", 0), ("naive", 2), ("rtc", 2)]
    pairs = {(c["a"], c["b"]) for c in mr.compare(rows)}
    assert pairs == {("rtc", "naive"), ("naive", "sync")}
    out = tmp_path / "out"
    out.mkdir()
    with (out / "cells.jsonl").open("w") as f:
        f.write("\n".join(json.dumps(c) for c in cells) + "\n{\"cut")  # and a line cut by an interruption
    assert [mr.cell_key(c) for c in mr.read_cells(out / "cells.jsonl", settings)] == [mr.cell_key(c) for c in cells]
    assert mr.read_cells(out / "cells.jsonl", mr.Settings(horizon=8, exec_steps=4, max_steps=11, episodes=1)) == []
    mr.main(["--checkpoint", "flow=unused", "--tasks", "reach-v3", "--seeds", "0", "--delays", "2", "--episodes",
             "1", "--max-steps", "10", "--horizon", "8", "--exec-steps", "4", "--out", str(out), "--summary-only"])
    summary = (out / "summary.md").read_text()
    assert "| flow | rtc | 2 | 1 |" in summary and "rtc - naive" in summary
    assert json.loads((out / "results.json").read_text())["missing_cells"] == 0
