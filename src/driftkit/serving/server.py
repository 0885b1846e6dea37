"""A websocket policy server that speaks openpi's protocol, with micro-batching across clients.

    server = PolicyServer(policy, host="127.0.0.1", port=8000, max_batch=16, batch_window_ms=2.0)
    server.run()                                # blocks (the `driftkit serve` command)
    with PolicyServer(policy, port=0).start() as server:   # a background thread; server.port is the bound port
        ...

Per connection the server first sends msgpack(metadata), then answers each binary msgpack observation with
    {"actions": [T, D] float32,
     "server_timing": {"infer_ms", "prev_total_ms", "queue_ms", "batch_size"},
     "policy_timing": {"preprocess_ms", "prefix_ms", "decoder_ms"}}
`GET /healthz` answers 200 on the same port.

Errors:
    a bad request (malformed msgpack, a missing / unknown key, wrong shape, dtype or image size, NaN, a bad
    option)   -> one text frame "driftkit serve: bad request: <what is wrong>"; the connection stays open, so the
                 client can send the next observation (openpi's client raises on the text frame and keeps its
                 connection, which it would otherwise never reopen)
    anything else (predict raised)
              -> the traceback as a text frame, then close code 1011 (as openpi does); other connections are
                 unaffected
Micro-batching: requests that arrive within `batch_window_ms` of the first waiting one (at most `max_batch`)
and agree on their options (num_samples, select, steps, temperature, RTC delay / execution horizon / beta) and
tensor shapes run as ONE policy.predict, split back per connection. A request with a `seed` runs alone, with
its own generator `torch.Generator(device).manual_seed(seed)`, so it gets exactly the actions of an in-process
`policy.predict(obs, generator=...)` with that seed (rows of one batch would share one generator). Inference
runs in one worker thread, never on the event loop: handshakes, /healthz and pings go on while a batch runs.
A request whose connection closes before its batch starts is dropped (counted in `stats.dropped`); if a
batched predict raises, its rows are retried one by one so only the request that fails gets the 1011 close.
"""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import Any, Callable

import torch

from driftkit.serving.protocol import OPENPI_CAMERAS, Request, RequestError, ServeSpec, parse_request
from driftkit.serving.wire import packb
from driftkit.timing import StageTimer

PROTOCOL_VERSION = 1
BAD_REQUEST = "driftkit serve: bad request: "
INTERNAL_ERROR = "driftkit serve: internal error while predicting:\n"
HEALTH_PATH = "/healthz"
POLICY_STAGES = ("preprocess", "prefix", "decoder")


@dataclass
class ServerStats:
    """Counters since the server started (read them from any thread)."""

    connections: int = 0
    disconnects: int = 0
    requests: int = 0
    """Valid requests queued for inference."""
    replies: int = 0
    bad_requests: int = 0
    failures: int = 0
    """Requests whose predict raised (answered with a traceback and close code 1011)."""
    dropped: int = 0
    """Queued requests whose connection closed before they ran."""
    predict_calls: int = 0
    batched_rows: int = 0
    largest_batch: int = 0
    batch_histogram: dict[int, int] = field(default_factory=dict)
    """rows per predict call -> number of calls."""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Pending:
    request: Request
    future: asyncio.Future
    queued_at: float


def policy_metadata(policy, spec: ServeSpec, **extra) -> dict:
    """What the server tells each client on connect."""
    try:
        nfe = int(policy.nfe())
    except Exception:  # a policy without a fixed count (nothing a client can act on)
        nfe = None
    shape = list(spec.image_shape) if spec.image_shape else None
    return {
        "server": "driftkit", "protocol": PROTOCOL_VERSION, "kind": spec.kind, "decoder": spec.decoder,
        "horizon": spec.horizon, "action_dim": spec.action_dim, "state_dim": spec.state_dim,
        "cameras": list(spec.cameras), "openpi_cameras": dict(zip(OPENPI_CAMERAS, spec.cameras)),
        "image_shape": shape, "image_size": shape[1:] if shape else None, "nfe": nfe,
        "needs_task": spec.needs_task, "num_tasks": spec.num_tasks, "rtc": spec.supports_rtc,
        "keys": spec.accepted_keys(), **extra,
    }


class PolicyServer:
    """Serves one policy over websockets (see the module docstring for the wire behaviour)."""

    def __init__(self, policy, host: str = "127.0.0.1", port: int = 8000, *, max_batch: int = 16,
                 batch_window_ms: float = 2.0, task_map: dict[str, int] | None = None,
                 max_message_bytes: int | None = None):
        """port 0 binds a free port (self.port once started); task_map: instruction -> task_index for state
        policies trained on several tasks; max_message_bytes: largest incoming frame (None = no limit, as
        openpi)."""
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"got max_batch={max_batch!r}, must be an int >= 1")
        if not batch_window_ms >= 0:
            raise ValueError(f"got batch_window_ms={batch_window_ms!r}, must be >= 0")
        self.policy = policy
        self.host = host
        self._requested_port = port
        self.max_batch = max_batch
        self.batch_window = batch_window_ms / 1000.0
        self.max_message_bytes = max_message_bytes
        self.spec = ServeSpec.from_policy(policy, task_map)
        self.device = getattr(policy, "device", torch.device("cpu"))
        self.metadata = policy_metadata(policy, self.spec, max_batch=max_batch, batch_window_ms=batch_window_ms)
        self.stats = ServerStats()
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._queue: asyncio.Queue | None = None
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None

    # ---- running ---------------------------------------------------------------------------------------------
    async def serve(self, ready: Callable[["PolicyServer"], Any] | None = None) -> None:
        """Serve until stop() (or cancellation); ready(server) is called once the port is bound."""
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._queue = asyncio.Queue()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftkit-serve-infer")
        batcher = asyncio.create_task(self._batch_loop(executor))
        try:
            async with serve(self._handle, self.host, self._requested_port, compression=None,
                             max_size=self.max_message_bytes, process_request=self._process_request) as server:
                self.port = server.sockets[0].getsockname()[1]
                if ready is not None:
                    ready(self)
                await self._stop.wait()
        finally:
            batcher.cancel()
            await asyncio.gather(batcher, return_exceptions=True)
            executor.shutdown(wait=True, cancel_futures=True)

    def run(self, ready: Callable[["PolicyServer"], Any] | None = None) -> None:
        """Serve in this thread until Ctrl-C or SIGTERM."""
        import signal

        async def main():
            loop = asyncio.get_running_loop()
            task = asyncio.current_task()
            try:
                loop.add_signal_handler(signal.SIGTERM, task.cancel)
            except (NotImplementedError, RuntimeError):  # not the main thread, or no signal support
                pass
            await self.serve(ready)

        try:
            asyncio.run(main())
        except (KeyboardInterrupt, asyncio.CancelledError):
            pass

    def start(self, timeout: float = 30.0) -> "PolicyServer":
        """Serve from a background thread; returns once the port is bound (self.port)."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the server is already running")
        bound = threading.Event()
        self._thread_error = None

        def target():
            try:
                asyncio.run(self.serve(ready=lambda _: bound.set()))
            except BaseException as err:  # noqa: BLE001  (handed to the starting thread)
                self._thread_error = err
            finally:
                bound.set()

        self._thread = threading.Thread(target=target, name="driftkit-serve", daemon=True)
        self._thread.start()
        if not bound.wait(timeout):
            raise TimeoutError(f"the server did not bind {self.host}:{self._requested_port} within {timeout} s")
        if self._thread_error is not None:
            raise self._thread_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a server started with start() (or serving in another thread): closes every connection."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop closed meanwhile
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the server thread did not stop within {timeout} s")
            self._thread = None

    def __enter__(self) -> "PolicyServer":
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- websocket side ----------------------------------------------------------------------------------------
    def _process_request(self, connection, request):
        if request.path.split("?", 1)[0] == HEALTH_PATH:
            return connection.respond(HTTPStatus.OK, "OK\n")
        return None  # carry on with the websocket handshake

    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        self.stats.connections += 1
        closed = asyncio.ensure_future(ws.wait_closed())
        prev_total_ms = None
        try:
            await ws.send(packb(self.metadata))
            async for message in ws:
                start = time.perf_counter()
                try:
                    request = parse_request(message, self.spec)
                except RequestError as err:
                    self.stats.bad_requests += 1
                    await ws.send(BAD_REQUEST + str(err))
                    continue
                self.stats.requests += 1
                pending = _Pending(request, self._loop.create_future(), self._loop.time())
                self._queue.put_nowait(pending)
                await asyncio.wait({pending.future, closed}, return_when=asyncio.FIRST_COMPLETED)
                if not pending.future.done():  # the connection closed first: drop the work
                    pending.future.cancel()
                    return
                try:
                    reply = pending.future.result()
                except Exception:
                    self.stats.failures += 1
                    await ws.send(INTERNAL_ERROR + traceback.format_exc())
                    await ws.close(1011, "internal error while predicting")
                    return
                reply["server_timing"]["prev_total_ms"] = prev_total_ms
                await ws.send(packb(reply))
                self.stats.replies += 1
                prev_total_ms = 1000.0 * (time.perf_counter() - start)
        except ConnectionClosed:
            pass
        finally:
            closed.cancel()
            self.stats.disconnects += 1

    # ---- batching and inference -----------------------------------------------------------------------------
    async def _batch_loop(self, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = batch[0].queued_at + self.batch_window
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            try:
                for group in self._groups(batch):
                    group = self._live(group)  # a connection may have closed while an earlier group ran
                    if not group:
                        continue
                    outcomes = await loop.run_in_executor(executor, self._run_group, [p.request for p in group])
                    for pending, outcome in zip(group, outcomes):
                        if pending.future.done():
                            continue
                        if isinstance(outcome, BaseException):
                            pending.future.set_exception(outcome)
                        else:
                            started = outcome.pop("_started")
                            outcome["server_timing"]["queue_ms"] = 1000.0 * (started - pending.queued_at)
                            pending.future.set_result(outcome)
            except Exception as err:  # never let the batcher die: every waiting request would hang
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(err)

    def _live(self, group: list[_Pending]) -> list[_Pending]:
        live = [p for p in group if not p.future.done()]
        self.stats.dropped += len(group) - len(live)
        return live

    @staticmethod
    def _groups(batch: list[_Pending]) -> list[list[_Pending]]:
        """Compatible requests together, in arrival order of each group's first request."""
        groups: dict[Any, list[_Pending]] = {}
        for i, pending in enumerate(batch):
            key = pending.request.batch_key()
            groups.setdefault(("alone", i) if key is None else key, []).append(pending)
        return list(groups.values())

    def _run_group(self, requests: list[Request]) -> list[Any]:
        """Worker thread: one batched predict, or (if it raises) one predict per request."""
        try:
            return self._predict(requests)
        except Exception as err:
            if len(requests) == 1:
                return [err]
        outcomes: list[Any] = []
        for request in requests:
            try:
                outcomes.extend(self._predict([request]))
            except Exception as err:
                outcomes.append(err)
        return outcomes

    def _predict(self, requests: list[Request]) -> list[dict]:
        first = requests[0]
        started = self._loop.time()
        obs = self._merge([r.obs for r in requests])
        kwargs: dict[str, Any] = dict(num_samples=first.num_samples, steps=first.steps, select=first.select,
                                      temperature=first.temperature)
        if first.seed is not None:
            kwargs["generator"] = torch.Generator(device=self.device).manual_seed(first.seed)
        if first.inpaint is not None:
            import dataclasses

            prefix = torch.cat([r.inpaint.prefix for r in requests]).to(self.device)
            kwargs["inpaint"] = dataclasses.replace(first.inpaint, prefix=prefix)
        timer = StageTimer(self.device)
        self.stats.predict_calls += 1
        self.stats.batched_rows += len(requests)
        self.stats.largest_batch = max(self.stats.largest_batch, len(requests))
        self.stats.batch_histogram[len(requests)] = self.stats.batch_histogram.get(len(requests), 0) + 1
        # inference_mode: no autograd bookkeeping (about 7 % of a tiny VLA's predict); RTC's guided sampling
        # leaves it by itself for its vector-Jacobian products.
        with timer.stage("infer"), torch.inference_mode():
            actions = self.policy.predict(obs, timer=timer, **kwargs).detach().float().cpu().numpy()
        infer_ms = timer.ms.pop("infer")
        want = (len(requests), self.spec.horizon, self.spec.action_dim)
        if tuple(actions.shape) != want:
            raise RuntimeError(f"policy.predict returned shape {list(actions.shape)}, expected {list(want)}")
        stages = {f"{name}_ms": 0.0 for name in POLICY_STAGES}
        stages.update({f"{name}_ms": ms for name, ms in timer.ms.items()})
        return [{"actions": actions[i].copy(),
                 "server_timing": {"infer_ms": infer_ms, "prev_total_ms": None, "queue_ms": 0.0,
                                   "batch_size": len(requests)},
                 "policy_timing": dict(stages), "_started": started} for i in range(len(requests))]

    def _merge(self, rows: list[dict]) -> dict:
        """Batch-of-one observations -> one batch (tensors concatenated; `task` lists joined)."""
        out = {}
        for key, first in rows[0].items():
            if isinstance(first, torch.Tensor):
                value = torch.cat([r[key] for r in rows]) if len(rows) > 1 else first
                if not (self.spec.image_keys_on_cpu and key in self.spec.cameras):
                    value = value.to(self.device)
                out[key] = value
            else:
                out[key] = [item for r in rows for item in r[key]]
        return out
