"""The requests of `driftkit serve`: the checks that turn one message (msgpack-numpy, serving.wire) into a
batch-of-one observation for `policy.predict`.

    packb(obj) -> bytes;  unpackb(data) -> obj      arrays and numpy scalars travel as tagged maps, no pickle
    spec = ServeSpec.from_policy(policy)           what the policy reads (keys, shapes, options it accepts)
    request = parse_request(message, spec)         -> Request, or RequestError naming the bad key / value

Arrays: ndarray -> {b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": shape}; numpy
scalars -> {b"__npgeneric__": True, b"data": item, b"dtype": dtype.str}. Object, void and complex dtypes are
refused in both directions (an object array could only travel as pickle).

Request keys (LeRobot's, or openpi's aliases):
    observation.state            | observation/state          [S] float (or [1, S])
    observation.images.<camera>  | observation/image (first camera), observation/wrist_image (second)
                                   uint8 [H, W, 3] or [3, H, W], or float [3, H, W] in [0, 1] (a leading 1 is ok)
    task                         | prompt                     the instruction (str)
    task_index                                              state policies trained on several tasks (int)
Options: num_samples, select, steps, seed, temperature. Real-time chunking: prev_actions [R, D] (the previous
chunk's actions not yet executed when the observation was taken), delay, execution_horizon, rtc_beta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from driftkit.policy.keys import IMAGES_PREFIX, STATE_KEY, TASK_INDEX_KEY, TASK_KEY
from driftkit.serving.wire import unpackb

OPENPI_STATE, OPENPI_PROMPT = "observation/state", "prompt"
OPENPI_CAMERAS = ("observation/image", "observation/wrist_image")  # -> the policy's first and second camera
OPTION_KEYS = ("num_samples", "select", "steps", "seed", "temperature")
RTC_KEYS = ("prev_actions", "delay", "execution_horizon", "rtc_beta")
SELECTS = (None, "first", "keystone", "medoid")
MAX_NUM_SAMPLES = 1024
MAX_STEPS = 10_000
PLACEHOLDER_CAMERA = IMAGES_PREFIX + "image"  # the camera key of a state policy whose config names none


class RequestError(ValueError):
    """A request the server refuses; the message names the key and what is wrong with it."""


# ---- what a policy reads -------------------------------------------------------------------------------------
@dataclass
class ServeSpec:
    """What a served policy reads and accepts, taken from its config."""

    kind: str
    decoder: str
    horizon: int
    action_dim: int
    state_dim: int
    cameras: tuple[str, ...]
    image_shape: tuple[int, int, int] | None
    """(3, H, W) every camera must have; None = any size (all cameras of one request alike)."""
    needs_task: bool
    num_tasks: int | None
    """State policies: the number of task embeddings (task_index in [0, num_tasks)); None = no task_index."""
    task_map: dict[str, int] | None = None
    """instruction -> task_index of the training data (state policies trained on several tasks)."""
    has_temperature: bool = True
    supports_rtc: bool = False
    """Whether policy.predict takes `inpaint` (real-time chunking)."""
    image_keys_on_cpu: bool = False
    """Images stay on the CPU (a VLM's processor reads them there); other tensors go to the policy's device."""

    @classmethod
    def from_policy(cls, policy, task_map: dict[str, int] | None = None) -> "ServeSpec":
        import inspect

        from driftkit.policy.vlm import VLMPolicyConfig

        cfg = policy.config
        is_vlm = isinstance(cfg, VLMPolicyConfig)
        cameras: tuple[str, ...] = ()
        image_shape = None
        if is_vlm:
            cameras = tuple(cfg.cameras)
            image_shape = tuple(cfg.image_shape) or None
        elif getattr(cfg, "image_size", 0):
            cameras = tuple(cfg.cameras[:1]) or (PLACEHOLDER_CAMERA,)
            image_shape = (3, cfg.image_size, cfg.image_size)
        decoder = getattr(policy, "decoder", None)
        has_temp = getattr(decoder, "has_temperature", True) if decoder is not None else True
        try:
            params = inspect.signature(policy.predict).parameters
        except (TypeError, ValueError):
            params = {}
        return cls(kind=cfg.kind, decoder=cfg.decoder, horizon=cfg.horizon, action_dim=cfg.action_dim,
                   state_dim=cfg.state_dim, cameras=cameras, image_shape=image_shape, needs_task=is_vlm,
                   num_tasks=getattr(cfg, "num_tasks", None) if not is_vlm else None, task_map=task_map,
                   has_temperature=bool(has_temp), image_keys_on_cpu=is_vlm,
                   supports_rtc="inpaint" in params and bool(getattr(decoder, "supports_inpaint", True)))

    def aliases(self) -> dict[str, str]:
        """Every accepted observation key -> the LeRobot key it fills."""
        out = {}
        if self.state_dim:
            out[STATE_KEY] = out[OPENPI_STATE] = STATE_KEY
        for i, cam in enumerate(self.cameras):
            out[cam] = cam
            if i < len(OPENPI_CAMERAS):
                out[OPENPI_CAMERAS[i]] = cam
        out[TASK_KEY] = out[OPENPI_PROMPT] = TASK_KEY
        if self.num_tasks is not None:
            out[TASK_INDEX_KEY] = TASK_INDEX_KEY
        return out

    def accepted_keys(self) -> list[str]:
        return [*self.aliases(), *OPTION_KEYS, *(RTC_KEYS if self.supports_rtc else ())]


# ---- one request --------------------------------------------------------------------------------------------
@dataclass
class Request:
    """One validated request: a batch-of-one observation in LeRobot keys plus its predict options."""

    obs: dict
    num_samples: int = 1
    select: str | None = None
    steps: int | None = None
    seed: int | None = None
    temperature: float | None = None
    inpaint: Any = None
    """driftkit.rtc.Inpaint for this one row, or None."""

    def batch_key(self) -> tuple | None:
        """Requests with equal keys can run as one batched predict; None = this one runs alone (a seed asks for
        the exact rows an in-process predict with that generator gives, which a shared batch cannot)."""
        if self.seed is not None:
            return None
        shapes = tuple((k, tuple(v.shape)) for k, v in sorted(self.obs.items()) if isinstance(v, torch.Tensor))
        rtc = None
        if self.inpaint is not None:  # every field but the prefix must agree; prefixes are [1, T, D]
            import dataclasses

            rtc = tuple((f.name, getattr(self.inpaint, f.name)) for f in dataclasses.fields(self.inpaint)
                        if f.name != "prefix")
        return (self.num_samples, self.select, self.steps, self.temperature, rtc, shapes)


def parse_request(message: bytes | str, spec: ServeSpec) -> Request:
    """One websocket message -> Request; RequestError names what is wrong."""
    if isinstance(message, str):
        raise RequestError("got a text frame; send the observation as one binary msgpack frame")
    try:
        data = unpackb(message)
    except Exception as err:  # msgpack raises several unrelated types for corrupt bytes
        raise RequestError(f"malformed msgpack ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise RequestError(f"the request is a msgpack {type(data).__name__}; expected a map of observation keys")
    return validate_request(data, spec)


def validate_request(data: dict, spec: ServeSpec) -> Request:
    """A decoded request map -> Request (see the module docstring for the keys)."""
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise RequestError(f"request keys must be strings; got {bad_keys[:3]!r}")
    aliases = spec.aliases()
    known = set(aliases) | set(OPTION_KEYS) | set(RTC_KEYS)
    unknown = sorted(set(data) - known)
    if unknown:
        raise RequestError(f"unknown key(s) {unknown}; this {spec.kind} policy accepts {spec.accepted_keys()}")
    fields: dict[str, tuple[str, Any]] = {}
    for wire, value in data.items():
        if wire in aliases:
            target = aliases[wire]
            if target in fields:
                raise RequestError(f"keys {fields[target][0]!r} and {wire!r} both give {target!r}; send one")
            fields[target] = (wire, value)
    obs: dict[str, Any] = {}
    if spec.state_dim:
        wire, value = _required(fields, STATE_KEY, spec)
        obs[STATE_KEY] = _state(wire, value, spec.state_dim)
    shapes = {}
    for cam in spec.cameras:
        wire, value = _required(fields, cam, spec)
        obs[cam] = _image(wire, value, spec.image_shape)
        shapes[wire] = tuple(obs[cam].shape[1:])
    if len(set(shapes.values())) > 1:
        raise RequestError(f"the camera images have different sizes {shapes}; send every camera at one size")
    task = None
    if TASK_KEY in fields:
        task = _task(*fields[TASK_KEY])
    elif spec.needs_task:
        _required(fields, TASK_KEY, spec)
    if spec.needs_task:
        obs[TASK_KEY] = [task]
    if spec.num_tasks is not None:
        obs[TASK_INDEX_KEY] = torch.tensor([_task_index(fields, task, spec)], dtype=torch.long)
    request = Request(obs=obs, **_options(data, spec))
    request.inpaint = _inpaint(data, spec)
    return request


def _required(fields: dict, key: str, spec: ServeSpec) -> tuple[str, Any]:
    if key not in fields:
        names = [w for w, t in spec.aliases().items() if t == key]
        raise RequestError(f"missing key {key!r} (send one of {names}); the request has "
                           f"{sorted(w for w, _ in fields.values())}")
    return fields[key]


def _array(wire: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)):
        try:
            arr = np.asarray(value)
        except ValueError as err:
            raise RequestError(f"{wire!r} is a ragged list ({err})") from None
        if arr.dtype.kind not in "iuf":
            raise RequestError(f"{wire!r} is a list of {arr.dtype} values; expected numbers")
        return arr
    raise RequestError(f"{wire!r} has type {type(value).__name__}; expected a numpy array")


def _finite(wire: str, arr: np.ndarray) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise RequestError(f"{wire!r} contains {int(bad.sum())} non-finite value(s) (NaN or inf), first at index "
                           f"{list(first)}: {arr[first]}")


def _state(wire: str, value: Any, dim: int) -> torch.Tensor:
    arr = _array(wire, value)
    if arr.dtype.kind != "f":
        raise RequestError(f"{wire!r} has dtype {arr.dtype}; expected a float array (float32 or float64)")
    if arr.shape not in ((dim,), (1, dim)):
        raise RequestError(f"{wire!r} has shape {list(arr.shape)}; this policy expects [{dim}] (config.state_dim)")
    _finite(wire, arr)
    return torch.from_numpy(arr.astype(np.float32).reshape(1, dim))


def _image(wire: str, value: Any, shape: tuple | None) -> torch.Tensor:
    """uint8 [H, W, 3] / [3, H, W] or float [3, H, W] in [0, 1] (optionally with a leading 1) -> float
    [1, 3, H, W] in [0, 1], checked against the policy's image shape."""
    arr = _array(wire, value)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise RequestError(f"{wire!r} has shape {list(value.shape) if hasattr(value, 'shape') else '?'}; expected "
                           "one image [H, W, 3] or [3, H, W]")
    h, w = (shape[1], shape[2]) if shape else (None, None)
    want = f"[{h}, {w}, 3] or [3, {h}, {w}]" if shape else "[H, W, 3] or [3, H, W]"
    if arr.dtype == np.uint8:
        if shape is not None:
            if arr.shape == (3, h, w):
                chw = arr
            elif arr.shape == (h, w, 3):
                chw = arr.transpose(2, 0, 1)
            else:
                raise RequestError(f"{wire!r} has shape {list(arr.shape)}; this policy expects {want} "
                                   "(its config's image size)")
        elif arr.shape[0] == 3:
            chw = arr
        elif arr.shape[-1] == 3:
            chw = arr.transpose(2, 0, 1)
        else:
            raise RequestError(f"{wire!r} has shape {list(arr.shape)}; expected {want} (3 colour channels)")
        return torch.from_numpy(np.array(chw, dtype=np.float32)).div_(255.0)[None]  # a copy: arrays are read-only
    if arr.dtype.kind == "f":
        want_chw = (3, h, w) if shape is not None else None
        if arr.shape[0] != 3 or (want_chw is not None and arr.shape != want_chw):
            raise RequestError(f"{wire!r} is a float image of shape {list(arr.shape)}; float images must be "
                               f"[3, {h or 'H'}, {w or 'W'}] in [0, 1] (send uint8 for [H, W, 3])")
        _finite(wire, arr)
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
        if lo < 0.0 or hi > 1.0:
            raise RequestError(f"{wire!r} is a float image with values in [{lo:g}, {hi:g}]; float images must lie "
                               "in [0, 1] (or send uint8)")
        return torch.from_numpy(np.array(arr, dtype=np.float32))[None]
    raise RequestError(f"{wire!r} has dtype {arr.dtype}; images must be uint8, or float in [0, 1]")


def _task(wire: str, value: Any) -> str:
    if isinstance(value, np.ndarray) and value.dtype.kind == "U" and value.size == 1:
        value = str(value.reshape(()))
    if not isinstance(value, str):
        raise RequestError(f"{wire!r} has type {type(value).__name__}; expected the instruction as a string")
    return value


def _int(key: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise RequestError(f"{key!r} has type {type(value).__name__}; expected an int")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise RequestError(f"got {key}={value}, must be {bound}")
    return value


def _float(key: str, value: Any, low: float, allow_low: bool) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise RequestError(f"{key!r} has type {type(value).__name__}; expected a number")
    value = float(value)
    if not math.isfinite(value) or value < low or (value == low and not allow_low):
        raise RequestError(f"got {key}={value}, must be finite and {'>=' if allow_low else '>'} {low}")
    return value


def _task_index(fields: dict, task: str | None, spec: ServeSpec) -> int:
    if TASK_INDEX_KEY in fields:
        return _int(TASK_INDEX_KEY, fields[TASK_INDEX_KEY][1], 0, spec.num_tasks - 1)
    if task is not None and spec.task_map is not None:
        if task not in spec.task_map:
            raise RequestError(f"got task={task!r}, which the policy's training data does not have; it knows "
                               f"{sorted(spec.task_map)}")
        return int(spec.task_map[task])
    if spec.num_tasks > 1:
        hint = " or a task of its training data" if spec.task_map is not None else ""
        raise RequestError(f"missing key 'task_index': the policy was trained on {spec.num_tasks} tasks; send "
                           f"task_index in [0, {spec.num_tasks}){hint}")
    return 0


def _options(data: dict, spec: ServeSpec) -> dict:
    out: dict[str, Any] = {}
    if data.get("num_samples") is not None:
        out["num_samples"] = _int("num_samples", data["num_samples"], 1, MAX_NUM_SAMPLES)
    if data.get("steps") is not None:
        out["steps"] = _int("steps", data["steps"], 1, MAX_STEPS)
    if data.get("seed") is not None:
        out["seed"] = _int("seed", data["seed"], 0, 2**63 - 1)
    if "select" in data:
        select = data["select"]
        if select not in SELECTS:
            raise RequestError(f"got select={select!r}, must be one of {list(SELECTS)}")
        out["select"] = select
    if data.get("temperature") is not None:
        if not spec.has_temperature:
            raise RequestError(f"got temperature={data['temperature']!r}, but the {spec.decoder!r} decoder has no "
                               "sampling temperature")
        out["temperature"] = _float("temperature", data["temperature"], 0.0, allow_low=True)
    return out


def _inpaint(data: dict, spec: ServeSpec):
    """The RTC fields -> driftkit.rtc.Inpaint for this row (None when the request has no prev_actions)."""
    given = [k for k in RTC_KEYS if data.get(k) is not None]
    if not given:
        return None
    if not spec.supports_rtc:
        raise RequestError(f"got RTC field(s) {given}, but this {spec.kind} policy with a {spec.decoder!r} decoder "
                           "cannot inpaint (real-time chunking needs a decoder with supports_inpaint, and a "
                           "policy.predict that takes inpaint)")
    if "prev_actions" not in given:
        raise RequestError(f"got {given} without 'prev_actions'; RTC needs the previous chunk's remaining actions")
    for key in ("delay", "execution_horizon"):
        if key not in given:
            raise RequestError(f"'prev_actions' given without {key!r}; RTC needs both delay and execution_horizon")
    prev = _array("prev_actions", data["prev_actions"])
    if prev.dtype.kind != "f":
        raise RequestError(f"'prev_actions' has dtype {prev.dtype}; expected a float array")
    if prev.ndim != 2 or prev.shape[0] < 1 or prev.shape[1] != spec.action_dim:
        raise RequestError(f"'prev_actions' has shape {list(prev.shape)}; expected [R, {spec.action_dim}] with "
                           f"R >= 1 (the previous chunk's actions not yet executed)")
    _finite("prev_actions", prev)
    delay = _int("delay", data["delay"], 0, spec.horizon)
    horizon = _int("execution_horizon", data["execution_horizon"], 0, spec.horizon)
    options = {}
    if data.get("rtc_beta") is not None:
        options["beta"] = _float("rtc_beta", data["rtc_beta"], 0.0, allow_low=False)
    from driftkit.rtc import Inpaint

    try:
        return Inpaint.from_previous(torch.from_numpy(prev.astype(np.float32)), horizon=spec.horizon, delay=delay,
                                     execution_horizon=horizon, **options)
    except ValueError as err:
        raise RequestError(f"RTC fields: {err}") from None
