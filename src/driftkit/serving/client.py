"""Clients of `driftkit serve`: one request at a time (PolicyClient), or a control loop that keeps a queue of
actions and asks for the next chunk in the background (ActionQueue).

    client = PolicyClient("127.0.0.1", 8000)
    client.metadata                       # what the server sent on connect (kind, horizon, cameras, ...)
    reply = client.infer({"observation.state": state, "task": "pick the cube", "seed": 0})
    reply["actions"]                      # [T, D] float32

    queue = ActionQueue(client, threshold=0.5, merge="weighted_average", rtc=True)
    action = queue.step(obs)              # once per control tick, with the newest observation

A dropped connection is reopened on the next call (bounded retries with exponential backoff; a request in
flight when it dropped is sent again). A text reply from the server raises BadRequestError (the connection
stays open) or ServerError (the server's traceback; it closed the connection, the next call reconnects).
"""

from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

import numpy as np

from driftkit.serving.wire import packb, unpackb

MERGES = ("latest_only", "weighted_average")
OLD_WEIGHT = 0.3  # weighted_average: 0.3 old + 0.7 new, as LeRobot's async client
BAD_REQUEST_PREFIX = "driftkit serve: bad request: "


def _direct_connect_option() -> dict:
    """websockets >= 17.1 wants `legacy=True` to return a connection from connect() without a warning."""
    import inspect

    from websockets.sync.client import connect

    return {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}


_LEGACY = _direct_connect_option()


class ServerError(RuntimeError):
    """The server answered with an error (a text frame) instead of actions."""


class BadRequestError(ServerError):
    """The server refused the request (it names the key or value); the connection stays usable."""


def to_wire(obs: dict) -> dict:
    """torch tensors -> numpy arrays (on the CPU); everything else as given."""
    out = {}
    for key, value in obs.items():
        if hasattr(value, "detach") and hasattr(value, "cpu"):
            value = value.detach().cpu().numpy()
        out[key] = value
    return out


class PolicyClient:
    """A websocket client of `driftkit serve` (or any server speaking openpi's protocol)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8000, *, timeout: float = 30.0, retries: int = 5,
                 backoff_s: float = 0.05, max_backoff_s: float = 2.0, api_key: str | None = None,
                 connect: bool = True):
        """timeout: seconds to wait for a connection or a reply; retries: extra connection attempts (and resends
        after a drop) per call, waiting backoff_s * 2**i (at most max_backoff_s) between them; api_key: sent as
        `Authorization: Api-Key <key>` as openpi's client does."""
        self.uri = host if host.startswith(("ws://", "wss://")) else f"ws://{host}:{port}"
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self.connects = 0
        """Successful connections so far (1 + the reconnects)."""
        self._ws = None
        self._metadata: dict | None = None
        if connect:
            self._connection()

    @property
    def metadata(self) -> dict:
        """The metadata the server sent on the latest connection (connects first if needed)."""
        if self._metadata is None:
            self._connection()
        return self._metadata

    def infer(self, obs: dict) -> dict:
        """One observation (numpy arrays or torch tensors, strings, numbers) -> the server's reply dict."""
        from websockets.exceptions import ConnectionClosed

        payload = packb(to_wire(obs))
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            ws = self._connection()
            try:
                ws.send(payload)
                reply = ws.recv(timeout=self.timeout)
            except TimeoutError:
                self._drop()  # a late reply would answer the next request
                raise TimeoutError(f"no reply from {self.uri} within {self.timeout} s") from None
            except (ConnectionClosed, OSError) as err:
                last = err
                self._drop()
                self._sleep(attempt)
                continue
            if isinstance(reply, str):
                if reply.startswith(BAD_REQUEST_PREFIX):
                    raise BadRequestError(f"{self.uri} refused the request: {reply[len(BAD_REQUEST_PREFIX):]}")
                self._drop()
                raise ServerError(f"{self.uri} failed on the request:\n{reply}")
            return unpackb(reply)
        raise ConnectionError(f"the connection to {self.uri} dropped {self.retries + 1} times during a request; "
                              f"last error: {last!r}")

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> "PolicyClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- connection --------------------------------------------------------------------------------------------
    def _connection(self):
        from websockets.exceptions import ConnectionClosed, InvalidHandshake
        from websockets.protocol import State
        from websockets.sync.client import connect

        if self._ws is not None and self._ws.state is State.OPEN:
            return self._ws
        self._drop()
        last: BaseException | None = None
        start = time.monotonic()
        for attempt in range(self.retries + 1):
            try:
                ws = connect(self.uri, compression=None, max_size=None, open_timeout=self.timeout, proxy=None,
                             additional_headers=self.headers, **_LEGACY)
            except (OSError, InvalidHandshake, TimeoutError) as err:
                last = err
                self._sleep(attempt)
                continue
            try:
                first = ws.recv(timeout=self.timeout)
                if isinstance(first, str):
                    raise ServerError(f"{self.uri} sent a text frame instead of its metadata: {first[:200]}")
                self._metadata = unpackb(first)
            except (ConnectionClosed, OSError, TimeoutError) as err:
                ws.close()
                last = err
                self._sleep(attempt)
                continue
            self._ws = ws
            self.connects += 1
            return ws
        raise ConnectionError(f"could not connect to {self.uri}: {self.retries + 1} attempts in "
                              f"{time.monotonic() - start:.1f} s; last error: {last!r}")

    def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:  # closing an already broken socket
                pass

    def _sleep(self, attempt: int) -> None:
        if attempt < self.retries:
            time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** attempt))


class ActionQueue:
    """Executes action chunks at the control rate and fetches the next one in the background.

    Every tick `step(obs)` returns the action to execute now. When the queue holds at most
    `threshold * horizon` actions (and no request is in flight) it sends `obs` for the next chunk from a
    background thread; the chunk's action i is for the tick of that observation + i. When it arrives, its first
    d actions are stale (d = actions executed while it was in flight, so it never counts ticks at which nothing
    ran) and are dropped; where the rest overlaps the queue the two are merged: `latest_only` keeps the new
    action, `weighted_average` takes 0.3 old + 0.7 new (LeRobot's default). An empty queue (the cold start, or
    a chunk later than the queue is long) waits for the chunk in flight.

    rtc=True sends real-time chunking fields with each request made while actions remain: prev_actions (the
    queued, not yet executed actions), delay (the largest of the last `delay_window` measured delays, the cold
    start left out, capped at the actions queued and at horizon // 2) and execution_horizon (default: the
    actions a chunk runs before the next request, horizon - ceil(threshold * horizon), kept within
    [delay, horizon - delay]).
    """

    def __init__(self, client, *, horizon: int | None = None, threshold: float = 0.5,
                 merge: str = "weighted_average", rtc: bool = False, execution_horizon: int | None = None,
                 rtc_beta: float | None = None, delay_window: int = 5, options: dict | None = None,
                 timeout: float | None = None):
        """client: anything with `infer(obs) -> {"actions": [T, D], ...}` (a PolicyClient); horizon: T (default:
        client.metadata["horizon"]); options: request fields added to every observation (e.g. num_samples);
        timeout: seconds step() waits for a chunk when the queue is empty (None: as long as it takes)."""
        if merge not in MERGES:
            raise ValueError(f"got merge={merge!r}, must be one of {list(MERGES)}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"got threshold={threshold!r}, must be in [0, 1)")
        self.client = client
        self.horizon = int(horizon if horizon is not None else client.metadata["horizon"])
        self.threshold = threshold
        self.merge = merge
        self.rtc = rtc
        self.execution_horizon = execution_horizon
        self.rtc_beta = rtc_beta
        self.delay_window = delay_window
        self.options = dict(options or {})
        self.timeout = timeout
        self.delays: list[int] = []
        """Measured delay (actions executed while a request was in flight) of every chunk but the cold start."""
        self.requests: list[dict] = []
        """The RTC fields of every request sent (empty dicts without RTC), for inspection."""
        self.starved_ticks = 0
        """Ticks after the cold start at which the queue was empty and step() had to wait."""
        self.last_reply: dict | None = None
        self._queue: deque[np.ndarray] = deque()
        self._executed = 0
        self._inflight: Future | None = None
        self._launched_at = 0
        self._launch_cold = False
        self._received = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftkit-action-queue")

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def executed(self) -> int:
        return self._executed

    @property
    def pending(self) -> bool:
        """Whether a request is in flight."""
        return self._inflight is not None

    def wait_pending(self, timeout: float | None = None) -> bool:
        """Wait until the request in flight has its reply (merged at the next step); False on timeout."""
        if self._inflight is None:
            return True
        try:
            self._inflight.exception(timeout)
        except FutureTimeout:
            return False
        return True

    def step(self, obs: dict) -> np.ndarray:
        """The action for this tick; `obs` is the observation of this tick."""
        self._collect(block=False)
        if self._inflight is None and len(self._queue) <= self.threshold * self.horizon:
            self._launch(obs)
        for _ in range(2):  # at most: the chunk in flight, then one sent now
            if self._queue:
                break
            if self._received:
                self.starved_ticks += 1
            if self._inflight is None:
                self._launch(obs)
            self._collect(block=True)
        if not self._queue:
            raise RuntimeError("no action available: the chunks that arrived were already executed")
        self._executed += 1
        return self._queue.popleft()

    def run(self, observe: Callable[[], dict], act: Callable[[np.ndarray], Any], steps: int,
            hz: float | None = None) -> int:
        """A control loop: `steps` ticks of act(step(observe())), paced at `hz` (None: as fast as it goes)."""
        period = 1.0 / hz if hz else 0.0
        next_tick = time.perf_counter()
        for _ in range(steps):
            act(self.step(observe()))
            if period:
                next_tick += period
                time.sleep(max(0.0, next_tick - time.perf_counter()))
        return steps

    def reset(self) -> None:
        """A new episode: forget the queued actions and any chunk in flight (measured delays are kept)."""
        if self._inflight is not None:
            self._inflight.cancel()
            try:
                self._inflight.result(self.timeout)
            except Exception:  # the old episode's chunk is not wanted, whatever became of it
                pass
        self._inflight = None
        self._queue.clear()
        self._received = 0

    def close(self) -> None:
        self.reset()
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "ActionQueue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals ---------------------------------------------------------------------------------------------
    def estimated_delay(self) -> int:
        """The delay to announce: the largest of the recent measured delays (0 before any was measured)."""
        recent = self.delays[-self.delay_window:]
        return max(recent) if recent else 0

    def _launch(self, obs: dict) -> None:
        request = {**obs, **self.options}
        rtc_fields: dict = {}
        if self.rtc and self._queue:
            remaining = np.stack(list(self._queue)).astype(np.float32)
            d = min(self.estimated_delay(), len(remaining), self.horizon // 2)
            s = self.execution_horizon
            if s is None:
                s = self.horizon - math.ceil(self.threshold * self.horizon)
            s = max(d, min(s, self.horizon - d))
            rtc_fields = {"prev_actions": remaining, "delay": d, "execution_horizon": s}
            if self.rtc_beta is not None:
                rtc_fields["rtc_beta"] = self.rtc_beta
        request.update(rtc_fields)
        self.requests.append(rtc_fields)
        self._launched_at = self._executed
        self._launch_cold = self._received == 0 and not self._queue
        self._inflight = self._executor.submit(self.client.infer, request)

    def _collect(self, block: bool) -> None:
        if self._inflight is None or (not block and not self._inflight.done()):
            return
        future, self._inflight = self._inflight, None
        reply = future.result(self.timeout if block else 0)
        self.last_reply = reply
        chunk = np.asarray(reply["actions"], dtype=np.float32)
        if chunk.ndim != 2:
            raise ValueError(f"the server replied with actions of shape {list(chunk.shape)}, expected [T, D]")
        self._received += 1
        d = self._executed - self._launched_at  # actions executed while the request was in flight
        if not self._launch_cold:
            self.delays.append(d)
        fresh = list(chunk[d:])
        old = list(self._queue)
        overlap = min(len(old), len(fresh))
        if self.merge == "weighted_average":
            merged = [OLD_WEIGHT * old[i] + (1.0 - OLD_WEIGHT) * fresh[i] for i in range(overlap)]
        else:
            merged = fresh[:overlap]
        self._queue = deque(merged + fresh[overlap:] + old[len(fresh):])
