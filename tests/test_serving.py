"""`driftkit serve`: the websocket policy server, its msgpack-numpy protocol, PolicyClient and ActionQueue.

Every server here listens on 127.0.0.1 (port 0 = a free port); every network wait is bounded (client timeouts,
bounded polls, subprocess timeouts). Each test names, in a comment, a mutation of src/ it catches."""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from driftkit.normalize import NormStats
from driftkit.policy import StatePolicy, StatePolicyConfig, VLMPolicy, VLMPolicyConfig, load_policy
from driftkit.serving import (
    ActionQueue,
    BadRequestError,
    PolicyClient,
    PolicyServer,
    RequestError,
    ServeSpec,
    ServerError,
    packb,
    parse_request,
    unpackb,
)
from vlm_helpers import images

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

S, T, D = 3, 4, 2
SMALL = {"hidden_dim": 32, "depth": 1}
CAMERAS = ("observation.images.front", "observation.images.wrist")
OPENPI_VENV = Path("/tmp/openpi-venv/bin/python")
WAIT = 20.0  # seconds any single network wait may take before the test fails


def stats(dim: int, seed: int) -> NormStats:
    g = torch.Generator().manual_seed(seed)
    mean, std = torch.randn(dim, generator=g), torch.rand(dim, generator=g) + 0.5
    return NormStats(mean=mean, std=std, q01=mean - 2 * std, q99=mean + 2 * std)


def state_policy(decoder: str = "flow", num_tasks: int = 2, seed: int = 0) -> StatePolicy:
    torch.manual_seed(seed)
    cfg = StatePolicyConfig(state_dim=S, action_dim=D, horizon=T, num_tasks=num_tasks, task_embed_dim=8,
                            hidden_dim=32, cond_dim=32, decoder=decoder, decoder_options=dict(SMALL))
    policy = StatePolicy(cfg)
    policy.set_stats({"action": stats(D, 1), "observation.state": stats(S, 2)})
    return policy.eval()


def state(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(S).astype(np.float32)


def in_process(policy, obs: dict, seed: int | None = None, **kw) -> np.ndarray:
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return policy.predict(obs, generator=gen, **kw)[0].float().numpy()


def state_ref(policy, st: np.ndarray, task_index: int = 1, seed: int | None = None, **kw) -> np.ndarray:
    obs = {"observation.state": torch.from_numpy(st)[None], "task_index": torch.tensor([task_index])}
    return in_process(policy, obs, seed, **kw)


@pytest.fixture(scope="module")
def flow_policy():
    return state_policy("flow")


@pytest.fixture(scope="module")
def flow_server(flow_policy):
    server = PolicyServer(flow_policy, port=0).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def vlm_policy():
    torch.manual_seed(0)
    cfg = VLMPolicyConfig(backbone="smolvlm-tiny", num_query_tokens=4, cond="query", decoder="flow",
                          decoder_options=dict(SMALL), horizon=T, action_dim=D, state_dim=S, cameras=CAMERAS,
                          image_shape=(3, 64, 64))
    policy = VLMPolicy(cfg)
    policy.set_stats({"action": stats(D, 3), "observation.state": stats(S, 4)})
    return policy.eval()


@pytest.fixture(scope="module")
def vlm_server(vlm_policy):
    server = PolicyServer(vlm_policy, port=0).start()
    yield server
    server.stop()


@contextmanager
def raw_connection(port: int):
    """A bare websocket (no PolicyClient logic): yields (connection, metadata)."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, proxy=None, open_timeout=WAIT) as ws:
        yield ws, unpackb(ws.recv(timeout=WAIT))


def poll(condition, what: str, timeout: float = WAIT) -> None:
    """Wait (bounded) until condition() holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def healthz(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


class Hooked:
    """A served policy with test hooks: predict waits for `gate` and raises when fail(obs) says so."""

    def __init__(self, policy):
        self.policy = policy
        self.config = policy.config
        self.decoder = policy.decoder
        self.device = policy.device
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls = 0
        self.fail = None

    def nfe(self, steps=None):
        return self.policy.nfe(steps)

    def predict(self, obs, num_samples=1, steps=None, select=None, clusters=2, generator=None, timer=None,
                temperature=None, inpaint=None):
        self.calls += 1
        self.entered.set()
        assert self.gate.wait(WAIT), "the test never opened the gate"
        if self.fail is not None and self.fail(obs):
            raise RuntimeError("boom: the policy failed on purpose")
        return self.policy.predict(obs, num_samples=num_samples, steps=steps, select=select, generator=generator,
                                   timer=timer, temperature=temperature)


# ---- 1. the wire format --------------------------------------------------------------------------------------
# Mutations caught: dtype.name ("float32") instead of dtype.str ("<f4"); the shape or the b"__ndarray__" /
# b"__npgeneric__" tags renamed or sent as str keys; object / complex arrays packed (or unpacked) instead of
# refused; a forged map whose bytes do not fit its shape read anyway.
def test_msgpack_numpy_matches_openpi_layout():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = msgpack.unpackb(packb({"a": arr, "s": np.float32(1.5)}), raw=False, strict_map_key=False)
    assert raw["a"] == {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": "<f4", b"shape": [2, 3]}
    assert raw["s"] == {b"__npgeneric__": True, b"data": 1.5, b"dtype": "<f4"}
    back = unpackb(packb({"a": arr[:, ::2], "s": np.int16(-3), "p": "go", "u": np.zeros((0, 4), np.uint8)}))
    assert np.array_equal(back["a"], arr[:, ::2]) and back["a"].dtype == np.float32
    assert back["s"] == -3 and back["s"].dtype == np.int16 and back["p"] == "go" and back["u"].shape == (0, 4)
    for bad in (np.array([object()]), np.zeros(2, np.complex64), np.zeros(2, [("x", "<f4")])):
        with pytest.raises(ValueError, match="dtype"):
            packb(bad)
    forged = msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]})
    with pytest.raises(ValueError, match="object, void and complex"):
        unpackb(forged)
    short = msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 7, b"dtype": "<f4", b"shape": [2]})
    with pytest.raises(ValueError, match="needs 8 bytes, got 7"):
        unpackb(short)


# ---- 2. same actions as in-process, through every alias and image layout ---------------------------------
# Mutations caught: a seeded request not given its own torch.Generator().manual_seed(seed) (or the seed
# ignored); the openpi aliases (observation/state) not mapped; task_index dropped (the other embedding is used);
# the reply not float32 [T, D].
@pytest.mark.parametrize("keys", ["lerobot", "openpi"])
def test_state_actions_equal_in_process_predict(flow_policy, flow_server, keys):
    st = state(1)
    key = "observation.state" if keys == "lerobot" else "observation/state"
    with PolicyClient("127.0.0.1", flow_server.port, timeout=WAIT) as client:
        reply = client.infer({key: st, "task_index": 1, "seed": 11})
        again = client.infer({key: torch.from_numpy(st), "task_index": np.int64(1), "seed": 11})
    assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (T, D)
    want = state_ref(flow_policy, st, task_index=1, seed=11)
    np.testing.assert_array_equal(reply["actions"], want)
    np.testing.assert_array_equal(again["actions"], want)
    assert not np.array_equal(want, state_ref(flow_policy, st, task_index=0, seed=11))  # task_index matters
    assert set(reply["server_timing"]) >= {"infer_ms", "prev_total_ms"}
    assert reply["server_timing"]["prev_total_ms"] is None and again["server_timing"]["prev_total_ms"] > 0
    assert set(reply["policy_timing"]) == {"preprocess_ms", "prefix_ms", "decoder_ms"}
    assert reply["policy_timing"]["decoder_ms"] > 0


# Mutations caught: HWC images not transposed to CHW (or transposed H <-> W); uint8 not scaled by 1/255;
# observation/image and observation/wrist_image mapped to the wrong cameras (swapped); the prompt alias not
# reaching `task`; float CHW images rescaled again; num_samples / select not passed through.
@pytest.mark.parametrize("layout", ["lerobot-hwc", "openpi-chw", "openpi-hwc", "lerobot-float-chw"])
def test_vlm_actions_equal_in_process_predict(vlm_policy, vlm_server, layout):
    front, wrist = images(2, seed=5)
    st = state(2)
    as_chw = lambda x: np.ascontiguousarray(x.transpose(2, 0, 1))  # noqa: E731
    image = {"lerobot-hwc": lambda x: x, "openpi-chw": as_chw, "openpi-hwc": lambda x: x,
             "lerobot-float-chw": lambda x: as_chw(x).astype(np.float32) / 255.0}[layout]
    if layout.startswith("lerobot"):
        obs = {CAMERAS[0]: image(front), CAMERAS[1]: image(wrist), "observation.state": st, "task": "pick it"}
    else:
        obs = {"observation/image": image(front), "observation/wrist_image": image(wrist),
               "observation/state": st, "prompt": "pick it"}
    with PolicyClient("127.0.0.1", vlm_server.port, timeout=WAIT) as client:
        got = client.infer({**obs, "seed": 3, "num_samples": 2, "select": "medoid"})["actions"]
    to_tensor = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255.0  # noqa: E731
    ref = {CAMERAS[0]: to_tensor(front), CAMERAS[1]: to_tensor(wrist), "observation.state":
           torch.from_numpy(st)[None], "task": ["pick it"]}
    np.testing.assert_array_equal(got, in_process(vlm_policy, ref, seed=3, num_samples=2, select="medoid"))


# Mutations caught: metadata missing or naming another horizon / action_dim / camera order / image size / NFE;
# /healthz not answered (process_request hook missing) or answered with another status.
def test_metadata_and_healthz(vlm_policy, vlm_server, flow_server):
    with PolicyClient("127.0.0.1", vlm_server.port, timeout=WAIT) as client:
        meta = client.metadata
    assert meta["kind"] == "vlm" and meta["decoder"] == "flow"
    assert (meta["horizon"], meta["action_dim"], meta["state_dim"]) == (T, D, S)
    assert meta["cameras"] == list(CAMERAS) and meta["image_shape"] == [3, 64, 64]
    assert meta["openpi_cameras"] == {"observation/image": CAMERAS[0], "observation/wrist_image": CAMERAS[1]}
    assert meta["nfe"] == vlm_policy.nfe() and meta["needs_task"] is True
    assert healthz(vlm_server.port) == 200 and healthz(flow_server.port) == 200


# ---- 3. bad requests: an error naming the problem, the connection and the server keep serving --------------
GOOD = {"observation.state": state(0), "task_index": 0}
BAD_STATE = [
    ("missing key", {"task_index": 0}, "missing key 'observation.state'"),
    ("extra key", {**GOOD, "observation.bogus": 1.0}, "unknown key(s) ['observation.bogus']"),
    ("wrong shape", {**GOOD, "observation.state": np.zeros(S + 1, np.float32)}, "has shape [4]"),
    ("wrong dtype", {**GOOD, "observation.state": np.zeros(S, np.int64)}, "has dtype int64"),
    ("NaN", {**GOOD, "observation.state": np.array([0, np.nan, 0], np.float32)}, "non-finite"),
    ("inf", {**GOOD, "observation.state": np.array([0, 0, np.inf])}, "non-finite"),
    ("two aliases", {**GOOD, "observation/state": state(0)}, "both give 'observation.state'"),
    ("bad option", {**GOOD, "num_samples": 0}, "num_samples=0"),
    ("bad select", {**GOOD, "select": "best"}, "select='best'"),
    ("bad task_index", {**GOOD, "task_index": 5}, "task_index=5"),
    ("RTC without prev_actions", {**GOOD, "delay": 1}, "without 'prev_actions'"),
    ("RTC wrong width", {**GOOD, "prev_actions": np.zeros((2, D + 1), np.float32), "delay": 1,
                         "execution_horizon": 1}, "'prev_actions' has shape [2, 3]"),
]


# Mutations caught: validation skipped (predict raises instead: the reply is a traceback and a 1011 close, not
# a message naming the key); validation errors closing the connection (the follow-up on the same connection
# fails); a check removed (the bad value is answered with actions).
@pytest.mark.parametrize("name, payload, message", BAD_STATE, ids=[b[0] for b in BAD_STATE])
def test_bad_state_request_named_and_server_keeps_serving(flow_server, name, payload, message):
    with PolicyClient("127.0.0.1", flow_server.port, timeout=WAIT) as client:
        with pytest.raises(BadRequestError) as err:
            client.infer(payload)
        assert message in str(err.value)
        assert client.infer(GOOD)["actions"].shape == (T, D)  # the same connection still answers
        assert client.connects == 1


BAD_BYTES = [
    ("malformed msgpack", b"\xc1\xc1 not msgpack", "malformed msgpack"),
    ("truncated msgpack", packb(GOOD)[:-3], "malformed msgpack"),
    ("not a map", packb([1, 2, 3]), "msgpack list"),
    ("text frame", "observation.state=1", "text frame"),
]


# Mutations caught: an exception from msgpack.unpackb escaping as an internal error (1011 close) instead of a
# bad-request message; a top-level non-map handed to validation.
@pytest.mark.parametrize("name, data, message", BAD_BYTES, ids=[b[0] for b in BAD_BYTES])
def test_malformed_frames_named_and_connection_kept(flow_server, name, data, message):
    with raw_connection(flow_server.port) as (ws, _):
        ws.send(data)
        reply = ws.recv(timeout=WAIT)
        assert isinstance(reply, str) and reply.startswith("driftkit serve: bad request:") and message in reply
        ws.send(packb(GOOD))
        assert unpackb(ws.recv(timeout=WAIT))["actions"].shape == (T, D)


BAD_VLM = [
    ("wrong image size", {"observation/image": np.zeros((32, 32, 3), np.uint8)}, "expects [64, 64, 3] or [3, 64, 64]"),
    ("image dtype", {"observation/image": np.zeros((64, 64, 3), np.int32)}, "images must be uint8"),
    ("float HWC", {"observation/image": np.zeros((64, 64, 3), np.float32)}, "float images must be [3, 64, 64]"),
    ("float out of range", {"observation/image": np.full((3, 64, 64), 2.0, np.float32)}, "in [0, 1]"),
    ("missing camera", {"observation/image": None}, "missing key 'observation.images.front'"),
    ("missing prompt", {"prompt": None}, "missing key 'task'"),
    ("prompt not a string", {"prompt": 3}, "expected the instruction as a string"),
    ("temperature", {"temperature": -1.0}, "temperature=-1.0"),
]


# Mutations caught: the image size not checked against config.image_shape (the backbone resizes silently);
# float HWC accepted as CHW; out-of-range floats accepted; the VLM's prompt not required.
@pytest.mark.parametrize("name, change, message", BAD_VLM, ids=[b[0] for b in BAD_VLM])
def test_bad_vlm_request_named(vlm_server, name, change, message):
    front, wrist = images(2, seed=1)
    obs = {"observation/image": front, "observation/wrist_image": wrist, "observation/state": state(0),
           "prompt": "go"}
    obs = {k: v for k, v in {**obs, **change}.items() if v is not None}
    with raw_connection(vlm_server.port) as (ws, _):
        ws.send(packb(obs))
        reply = ws.recv(timeout=WAIT)
        assert isinstance(reply, str) and message in reply, reply


# Mutations caught: the task map not consulted (a prompt of the training data must pick its task_index); an
# unknown instruction silently mapped to task 0.
def test_task_map_turns_prompt_into_task_index(flow_policy):
    spec = ServeSpec.from_policy(flow_policy, task_map={"reach": 0, "push": 1})
    request = parse_request(packb({"observation/state": state(0), "prompt": "push"}), spec)
    assert request.obs["task_index"].tolist() == [1]
    with pytest.raises(RequestError, match="'jump'"):
        parse_request(packb({"observation/state": state(0), "prompt": "jump"}), spec)
    with pytest.raises(RequestError, match="trained on 2 tasks"):
        parse_request(packb({"observation/state": state(0)}), ServeSpec.from_policy(flow_policy))


# ---- 4. failures inside predict: traceback + 1011 for that request only --------------------------------------
# Mutations caught: a predict exception killing the server or the batcher (later requests hang); the 1011 close
# missing (the openpi behaviour); one failing row failing every row of its batch; PolicyClient not reconnecting
# after the server closed the connection.
def test_predict_failure_closes_1011_and_spares_others():
    hooked = Hooked(state_policy("regression", num_tasks=1))
    hooked.fail = lambda obs: bool((obs["observation.state"][:, 0] > 100).any())
    with PolicyServer(hooked, port=0, batch_window_ms=300).start() as server:
        with raw_connection(server.port) as (ws, _):
            ws.send(packb({"observation.state": np.full(S, 1000.0, np.float32)}))
            text = ws.recv(timeout=WAIT)
            assert "internal error" in text and "Traceback" in text and "boom" in text
            with pytest.raises(Exception):
                ws.recv(timeout=WAIT)
            assert ws.close_code == 1011
        results: dict = {}

        def ask(name, value):
            with PolicyClient("127.0.0.1", server.port, timeout=WAIT) as client:
                barrier.wait(WAIT)
                try:
                    results[name] = client.infer({"observation.state": np.full(S, value, np.float32)})
                except ServerError as err:
                    results[name] = err

        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=ask, args=a) for a in (("bad", 1000.0), ("good", 0.5))]
        [t.start() for t in threads]
        [t.join(WAIT) for t in threads]
        assert isinstance(results["bad"], ServerError) and "boom" in str(results["bad"])
        assert results["good"]["actions"].shape == (T, D)
        assert server.stats.failures == 2
        with PolicyClient("127.0.0.1", server.port, timeout=WAIT) as client:
            with pytest.raises(ServerError):
                client.infer({"observation.state": np.full(S, 1000.0, np.float32)})
            assert client.infer(GOOD_NO_TASK)["actions"].shape == (T, D) and client.connects == 2


GOOD_NO_TASK = {"observation.state": state(0)}

CLIENT_SCRIPT = textwrap.dedent("""
    import sys, time
    from websockets.sync.client import connect
    with connect(sys.argv[1], compression=None, max_size=None, proxy=None, open_timeout=20) as ws:
        ws.recv(timeout=20)
        ws.send(open(sys.argv[2], "rb").read())
        print("sent", flush=True)
        time.sleep(60)
""")


# ---- 5. dead clients, busy server, restarts ----------------------------------------------------------------
# Mutations caught: inference on the event loop (the handshake, /healthz and metadata stall behind the running
# predict); a dead connection's queued request still run (stats.dropped stays 0, the policy is called for it);
# a dead connection's reply crashing the server; the server not serving the next client.
def test_killed_clients_leave_the_server_serving(tmp_path):
    hooked = Hooked(state_policy("regression", num_tasks=1))
    payload = tmp_path / "request.bin"
    payload.write_bytes(packb(GOOD_NO_TASK))
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    with PolicyServer(hooked, port=0, batch_window_ms=0).start() as server:
        uri = f"ws://127.0.0.1:{server.port}"
        hooked.gate.clear()
        procs = []
        try:
            for i in range(2):  # the first one's predict runs (held at the gate), the second one's waits
                proc = subprocess.Popen([sys.executable, str(script), uri, str(payload)], stdout=subprocess.PIPE,
                                        text=True)
                procs.append(proc)
                assert proc.stdout.readline().strip() == "sent"
                poll(lambda: server.stats.requests == i + 1, f"request {i + 1} to arrive")
            assert hooked.entered.wait(WAIT) and hooked.calls == 1
            # the event loop is free while predict runs: a new client connects, /healthz answers
            start = time.monotonic()
            client = PolicyClient("127.0.0.1", server.port, timeout=5)
            assert client.metadata["kind"] == "state" and healthz(server.port) == 200
            assert time.monotonic() - start < 5
            for proc in procs:
                proc.send_signal(signal.SIGKILL)
                proc.wait(WAIT)
            poll(lambda: server.stats.disconnects == 2, "both killed clients to be noticed")
        finally:
            hooked.gate.set()
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(WAIT)
        poll(lambda: server.stats.dropped == 1, "the queued request of the dead client to be dropped")
        assert client.infer(GOOD_NO_TASK)["actions"].shape == (T, D)
        assert hooked.calls == 2  # the running one and this one; the dead client's queued one never ran
        client.close()


# Mutations caught: PolicyClient not reconnecting after a dropped connection (the restarted server is never
# reached); reconnects unbounded (the down-server call never returns) or not retried at all.
def test_client_reconnects_to_a_restarted_server():
    policy = state_policy("regression", num_tasks=1)
    server = PolicyServer(policy, port=0).start()
    port = server.port
    client = PolicyClient("127.0.0.1", port, timeout=WAIT, retries=3, backoff_s=0.02)
    first = client.infer(GOOD_NO_TASK)["actions"]
    server.stop()
    server = PolicyServer(policy, port=port).start()
    try:
        np.testing.assert_array_equal(client.infer(GOOD_NO_TASK)["actions"], first)
        assert client.connects == 2
    finally:
        server.stop()
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="could not connect"):
        client.infer(GOOD_NO_TASK)
    assert time.monotonic() - start < 5
    client.close()


# ---- 6. micro-batching ---------------------------------------------------------------------------------------
def concurrent_infer(port: int, payloads: list[dict]) -> list:
    """One PolicyClient per payload, all sending at once (after a barrier)."""
    barrier = threading.Barrier(len(payloads))
    out: list = [None] * len(payloads)

    def ask(i):
        with PolicyClient("127.0.0.1", port, timeout=WAIT) as client:
            barrier.wait(WAIT)
            out[i] = client.infer(payloads[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(payloads))]
    [t.start() for t in threads]
    [t.join(2 * WAIT) for t in threads]
    assert all(o is not None for o in out), "a client got no reply"
    return out


# Mutations caught: no batching (one predict per request); batched rows split back in the wrong order (each
# client gets another's actions); rows with different options merged into one call (num_samples=3 differs).
def test_concurrent_clients_are_batched_and_get_their_own_actions():
    policy = state_policy("regression", num_tasks=1)
    with PolicyServer(policy, port=0, batch_window_ms=300, max_batch=16).start() as server:
        payloads = [{"observation.state": state(10 + i)} for i in range(6)]
        payloads[5]["num_samples"] = 3
        replies = concurrent_infer(server.port, payloads)
        for payload, reply in zip(payloads, replies):
            want = state_ref(policy, payload["observation.state"], task_index=0,
                             num_samples=payload.get("num_samples", 1))
            np.testing.assert_allclose(reply["actions"], want, rtol=1e-5, atol=1e-6)
        assert server.stats.requests == 6 and server.stats.predict_calls < 6
        assert max(r["server_timing"]["batch_size"] for r in replies) >= 2
        assert replies[5]["server_timing"]["batch_size"] == 1  # its options differ from the others'


# Mutations caught: seeded requests batched with others (rows share one generator: the actions differ from the
# in-process seeded predict); unseeded requests no longer batched.
def test_seeded_requests_run_alone_and_match_in_process(flow_policy):
    with PolicyServer(flow_policy, port=0, batch_window_ms=300).start() as server:
        payloads = [{"observation.state": state(20 + i), "task_index": i % 2, "seed": 100 + i} for i in range(3)]
        payloads += [{"observation.state": state(30 + i), "task_index": 0} for i in range(2)]
        replies = concurrent_infer(server.port, payloads)
        for payload, reply in zip(payloads[:3], replies):
            np.testing.assert_array_equal(reply["actions"], state_ref(flow_policy, payload["observation.state"],
                                                                      payload["task_index"], payload["seed"]))
            assert reply["server_timing"]["batch_size"] == 1
        assert server.stats.predict_calls <= 4  # 3 seeded alone + the 2 unseeded together


# ---- 7. real-time chunking fields ----------------------------------------------------------------------------
# Mutations caught: prev_actions / delay / execution_horizon / rtc_beta not turned into
# Inpaint.from_previous (or not passed to predict); RTC requests with other delays merged into one batch.
def test_rtc_fields_reach_predict(flow_policy, flow_server):
    import inspect

    if "inpaint" not in inspect.signature(flow_policy.predict).parameters:
        pytest.skip("Policy.predict takes no `inpaint` yet (real-time chunking not landed)")
    from driftkit.rtc import Inpaint

    prev = np.random.default_rng(4).standard_normal((3, D)).astype(np.float32)
    st = state(4)
    with PolicyClient("127.0.0.1", flow_server.port, timeout=WAIT) as client:
        assert client.metadata["rtc"] is True
        got = client.infer({"observation.state": st, "task_index": 1, "seed": 9, "prev_actions": prev,
                            "delay": 1, "execution_horizon": 2, "rtc_beta": 5.0})["actions"]
    inpaint = Inpaint.from_previous(torch.from_numpy(prev), horizon=T, delay=1, execution_horizon=2, beta=5.0)
    want = state_ref(flow_policy, st, 1, seed=9, inpaint=inpaint)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, state_ref(flow_policy, st, 1, seed=9))
    spec = ServeSpec.from_policy(flow_policy)
    a, b = (parse_request(packb({"observation.state": st, "task_index": 0, "prev_actions": prev, "delay": d,
                                 "execution_horizon": 2}), spec) for d in (1, 2))
    assert a.batch_key() is not None and a.batch_key() != b.batch_key()


# ---- 8. ActionQueue ------------------------------------------------------------------------------------------
class FakeClient:
    """infer returns chunk k (every value 10 k + index) and blocks while `hold` is clear."""

    def __init__(self, horizon: int = 4):
        self.metadata = {"horizon": horizon}
        self.sent: list[dict] = []
        self.hold = threading.Event()
        self.hold.set()

    def infer(self, obs):
        k = len(self.sent)
        self.sent.append(obs)
        assert self.hold.wait(WAIT)
        return {"actions": np.stack([np.full(D, 10.0 * k + i, np.float32) for i in range(T)])}


# Mutations caught: stale actions of a late chunk kept (d not dropped); the overlap not merged 0.3 old + 0.7 new
# (or latest_only averaging); the delay counted in ticks instead of actions executed (a starved queue); the
# cold start entering the delay estimate; the RTC fields (prev_actions = the queued actions, the delay capped
# at them) not sent.
@pytest.mark.parametrize("merge", ["weighted_average", "latest_only"])
def test_action_queue_merges_and_measures_delay(merge):
    fake = FakeClient()
    q = ActionQueue(fake, threshold=0.5, merge=merge, rtc=True)
    assert q.step({"t": 0})[0] == 0.0  # cold start: waits for chunk 0, all of it usable
    assert q.step({"t": 1})[0] == 1.0
    fake.hold.clear()
    assert q.step({"t": 2})[0] == 2.0  # 2 left <= 0.5 * 4: chunk 1 requested with this observation
    poll(lambda: len(fake.sent) == 2, "the background request")
    assert fake.sent[1]["t"] == 2 and fake.sent[1]["delay"] == 0  # no warm delay measured yet
    np.testing.assert_array_equal(fake.sent[1]["prev_actions"][:, 0], [2.0, 3.0])
    fake.hold.set()
    assert q.wait_pending(WAIT)
    # one action (2.0) ran while chunk 1 was in flight: its index 0 is stale, index 1 overlaps the old 3.0
    merged = 0.3 * 3.0 + 0.7 * 11.0 if merge == "weighted_average" else 11.0
    assert q.step({"t": 3})[0] == pytest.approx(merged)
    assert q.delays == [1]
    fake.hold.clear()
    assert q.step({"t": 4})[0] == 12.0  # 2 left: chunk 2 requested, announcing the measured delay
    poll(lambda: len(fake.sent) == 3, "the background request")
    assert fake.sent[2]["delay"] == 1 and fake.sent[2]["execution_horizon"] == 2
    assert q.step({"t": 5})[0] == 13.0
    threading.Timer(0.3, fake.hold.set).start()
    # the queue is empty: step waits; 2 actions ran while chunk 2 was in flight although 3 ticks passed
    assert q.step({"t": 6})[0] == 22.0
    assert q.delays == [1, 2] and q.starved_ticks == 1
    assert q.step({"t": 7})[0] == 23.0  # 1 left: the announced delay (2) is capped at the 1 action queued
    poll(lambda: len(fake.sent) == 4, "the background request")
    assert fake.sent[3]["delay"] == 1 and fake.sent[3]["prev_actions"].shape == (1, D)
    q.close()


# Mutations caught: ActionQueue's RTC fields refused by the real server (names or types off); the queue not
# refilling from a real server.
def test_action_queue_against_the_server(flow_server):
    with PolicyClient("127.0.0.1", flow_server.port, timeout=WAIT) as client:
        q = ActionQueue(client, threshold=0.5, rtc=client.metadata["rtc"], options={"task_index": 1})
        actions = []
        q.run(lambda: {"observation.state": state(len(actions))}, actions.append, steps=12, hz=200)
        q.close()
    assert len(actions) == 12 and all(a.shape == (D,) and np.isfinite(a).all() for a in actions)
    assert len(q.delays) >= 2 and any("prev_actions" in r for r in q.requests) == client.metadata["rtc"]


# ---- 9. the command line, and openpi's own client ---------------------------------------------------------
def write_run(tmp_path: Path) -> tuple[Path, StatePolicy]:
    """A run folder with two complete checkpoints; returns (run, the newer checkpoint's policy)."""
    run = tmp_path / "run"
    newest = None
    for step, seed in ((1, 1), (2, 2)):
        newest = state_policy("flow", num_tasks=1, seed=seed)
        ckpt = run / "checkpoints" / f"step_{step:08d}"
        newest.save_pretrained(ckpt)
        (ckpt / "trainer_state.json").write_text(json.dumps({"step": step}))
    (run / "checkpoints" / "step_00000003").mkdir()  # incomplete: no trainer_state.json
    return run, newest


@contextmanager
def cli_server(checkpoint: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "driftkit.cli", "serve", "--checkpoint", str(checkpoint),
                             "--port", "0", "--device", "cpu"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        seen = []
        while True:
            line = lines.get(timeout=90)
            seen.append(line)
            if line.startswith("serving "):
                break
            assert proc.poll() is None, "".join(seen)
        port = int(line.split("ws://127.0.0.1:")[1].split()[0])
        yield port, line
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(WAIT)


# Mutations caught: `driftkit serve` not registered; a run folder not resolved to its newest complete
# checkpoint (the older one's actions differ); SIGTERM not stopping it.
def test_cli_serves_the_newest_checkpoint(tmp_path):
    run, newest = write_run(tmp_path)
    with cli_server(run) as (port, banner):
        assert "step_00000002" in banner
        with PolicyClient("127.0.0.1", port, timeout=WAIT) as client:
            got = client.infer({"observation/state": state(7), "seed": 5})["actions"]
        assert healthz(port) == 200
    reloaded = load_policy(run / "checkpoints" / "step_00000002")
    np.testing.assert_array_equal(got, state_ref(newest, state(7), 0, seed=5))
    np.testing.assert_array_equal(got, state_ref(reloaded, state(7), 0, seed=5))


OPENPI_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from openpi_client import msgpack_numpy
    from openpi_client.websocket_client_policy import WebsocketClientPolicy
    packed = msgpack_numpy.packb({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(1.5),
                                  "p": "x"})
    policy = WebsocketClientPolicy("127.0.0.1", int(sys.argv[1]))
    state = np.array(json.loads(sys.argv[2]), dtype=np.float32)
    first = policy.infer({"observation/state": state, "prompt": "go", "seed": 5})
    try:
        policy.infer({"prompt": "go"})
        error = None
    except RuntimeError as err:
        error = str(err)
    again = policy.infer({"observation/state": state, "prompt": "go", "seed": 5})
    print(json.dumps({"meta": policy.get_server_metadata(), "packed": packed.hex(), "error": error,
                      "first": first["actions"].tolist(), "again": again["actions"].tolist(),
                      "timing": sorted(first["server_timing"])}))
""")


# Mutations caught: a wire format openpi's msgpack_numpy cannot read or packs differently; a bad request closing
# the connection (openpi's client never reconnects: its next infer would fail).
@pytest.mark.skipif(not OPENPI_VENV.is_file(), reason="no /tmp/openpi-venv with openpi-client")
def test_openpi_websocket_client_policy(tmp_path):
    policy = state_policy("flow", num_tasks=1)
    with PolicyServer(policy, port=0).start() as server:
        out = subprocess.run([str(OPENPI_VENV), "-c", OPENPI_SCRIPT, str(server.port), json.dumps(state(8).tolist())],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    want = state_ref(policy, state(8), 0, seed=5)
    np.testing.assert_array_equal(np.array(result["first"], np.float32), want)
    np.testing.assert_array_equal(np.array(result["again"], np.float32), want)
    assert "missing key 'observation.state'" in result["error"]
    assert result["meta"]["horizon"] == T and "infer_ms" in result["timing"]
    ours = packb({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(1.5), "p": "x"})
    assert ours.hex() == result["packed"]


# Mutation caught: the check testing for nn.Module's own `compile` (every policy has one), so a state policy
# reaches the VLM-only compile path and fails with an AttributeError instead of a named error.
def test_cli_compile_names_a_policy_it_cannot_compile(tmp_path):
    from typer.testing import CliRunner

    from driftkit.cli import app

    run, _ = write_run(tmp_path)
    result = CliRunner().invoke(app, ["serve", "--checkpoint", str(run), "--compile"])
    assert result.exit_code != 0
    assert "--compile supports VLM policies" in result.output and "state policy" in result.output
