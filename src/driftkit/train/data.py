"""Training data: a synthetic chunk dataset, dataset statistics, batching of text, and a resumable batch order.

Every dataset yields dict items with LeRobot keys (driftkit.policy.keys). The batch order is a pure function
of (seed, epoch), so a run resumed at step k sees exactly the batches an uninterrupted run would, and a
global batch is split over the processes the same way for any count.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from driftkit.errors import check_positive
from driftkit.normalize import NormStats
from driftkit.policy.config import PolicyConfig
from driftkit.policy.keys import ACTION_KEY, ACTION_PAD_KEY, IMAGES_PREFIX, STATE_KEY, TASK_INDEX_KEY, TASK_KEY

TEXT_SUFFIX = ".utf8"
"""Text fields travel through the data loader as uint8 tensors under `<key>.utf8`: Accelerate splits a
global batch over the processes by slicing tensors, and would hand every process the whole list of strings."""

class SyntheticChunkDataset(Dataset):
    """Bimodal action chunks determined by state and task, with padded tails on some items.

    action[t] = s * tanh(W_task @ state) * (t + 1) / T + 0.05 * noise, where the mode s = +-1 is drawn
    per item: a regression decoder averages the two modes, a generative decoder can keep both. Items carry
    the task both as task_index and as an instruction string, and an image per camera of the model config
    whose colour follows the state (cheap to make on the fly).
    """

    def __init__(self, size: int, model: PolicyConfig, seed: int = 0, padding: bool = True, image_size: int = 32):
        check_positive("size", size)
        g = torch.Generator().manual_seed(seed)
        num_tasks = getattr(model, "num_tasks", 2)
        s, t, d = max(model.state_dim, 3), model.horizon, model.action_dim
        self.cameras = list(model.cameras) or ([IMAGES_PREFIX + "toy"] if model.uses_images else [])
        self.image_size = getattr(model, "image_size", 0) or image_size
        self.tasks = [f"move along mode pattern {k}" for k in range(num_tasks)]
        self.state = torch.randn(size, s, generator=g)  # [N, S]
        self.task = torch.arange(size) % num_tasks  # [N]
        weights = torch.randn(num_tasks, d, s, generator=g) / math.sqrt(s)  # [K, D, S]
        mode = torch.randint(0, 2, (size, 1, 1), generator=g) * 2.0 - 1.0
        ramp = torch.arange(1, t + 1).float().view(1, t, 1) / t
        base = torch.tanh(torch.einsum("nds,ns->nd", weights[self.task], self.state)).unsqueeze(1)  # [N, 1, D]
        self.action = mode * base * ramp + 0.05 * torch.randn(size, t, d, generator=g)  # [N, T, D]
        real = torch.randint(max(1, t // 2), t + 1, (size,), generator=g)  # steps before the episode ended
        real = real if padding else torch.full_like(real, t)
        self.pad = torch.arange(t).view(1, t) >= real.view(size, 1)  # [N, T]
        self.action[self.pad] = 0.0
        self.state_dim = model.state_dim
        self.state = self.state[:, : model.state_dim] if model.state_dim else self.state
        self.stats = {ACTION_KEY: NormStats.from_data(self.action, self.chunks()[1])}
        if model.state_dim:
            self.stats[STATE_KEY] = NormStats.from_data(self.state)

    def __len__(self) -> int:
        return self.state.shape[0]

    def chunks(self) -> tuple[Tensor, Tensor]:
        """Every action chunk [N, T, D] and its mask [N, T, D] (True = real)."""
        return self.action, (~self.pad).unsqueeze(-1).expand_as(self.action)

    def __getitem__(self, i: int) -> dict:
        item = {TASK_INDEX_KEY: self.task[i], TASK_KEY: self.tasks[int(self.task[i])], ACTION_KEY: self.action[i],
                ACTION_PAD_KEY: self.pad[i]}
        if self.state_dim:
            item[STATE_KEY] = self.state[i]
        h = self.image_size
        for c, key in enumerate(self.cameras):
            ramp = torch.linspace(0, 1, h).view(1, h, 1) * torch.linspace(0, 1, h).view(1, 1, h)
            colour = torch.sigmoid(self.state[i].roll(c).repeat(3)[:3]).view(3, 1, 1)
            item[key] = colour * (ramp if c % 2 == 0 else ramp.flip(-1)).expand(3, h, h)
        return item


def check_dataset(dataset: Dataset, model: PolicyConfig) -> None:
    """Compare the first item (and the task count, when the dataset lists its tasks) with the model config
    before any work, naming both sides of a mismatch."""
    item = dataset[0]
    for key, (shape, fields) in model.item_spec().items():
        if key not in item:
            raise KeyError(f"dataset items have no {key!r} key ({fields}); keys are {sorted(item)}")
        if shape is None:
            if not isinstance(item[key], str):
                raise TypeError(f"dataset item {key} is a {type(item[key]).__name__}, expected a string ({fields})")
            continue
        got = list(torch.as_tensor(item[key]).shape)
        if got != list(shape):
            raise ValueError(f"dataset item {key} has shape {got}, but the model config expects {list(shape)} "
                             f"({fields})")
    tasks = getattr(dataset, "tasks", None)
    num_tasks = getattr(model, "num_tasks", None)
    if tasks is not None and num_tasks is not None and len(tasks) > num_tasks:
        raise ValueError(f"the dataset has {len(tasks)} tasks but model.num_tasks={num_tasks}; "
                         f"set --set model.num_tasks={len(tasks)}")


def dataset_stats(dataset: Dataset, keys: tuple[str, ...] = (ACTION_KEY, STATE_KEY)) -> dict[str, NormStats]:
    """{key: NormStats} for `keys` from `dataset.stats` (NormStats, or LeRobot-style dicts of mean/std/q01/q99
    lists) when present, else computed over the dataset (action statistics skip padded steps)."""
    stats = getattr(dataset, "stats", None)
    out = {}
    for key in keys:
        entry = stats.get(key) if isinstance(stats, dict) else None
        out[key] = _as_norm_stats(entry) if entry is not None else None
    for key in [k for k, v in out.items() if v is None]:
        if key == ACTION_KEY:
            out[key] = NormStats.from_data(*action_chunks(dataset))
        else:
            out[key] = NormStats.from_data(torch.stack([torch.as_tensor(dataset[i][key]).float()
                                                        for i in range(len(dataset))]))
    return out


def action_chunks(dataset: Dataset) -> tuple[Tensor, Tensor]:
    """(chunks [N, T, D], mask [N, T, D] True = real) of a dataset: its own `chunks()` when it has one
    (no images decoded), else read item by item."""
    if hasattr(dataset, "chunks"):
        return dataset.chunks()
    items = [dataset[i] for i in range(len(dataset))]
    action = torch.stack([torch.as_tensor(it[ACTION_KEY]).float() for it in items])
    if ACTION_PAD_KEY not in items[0]:
        return action, torch.ones_like(action, dtype=torch.bool)
    pad = torch.stack([torch.as_tensor(it[ACTION_PAD_KEY]).bool() for it in items])
    return action, (~pad).unsqueeze(-1).expand_as(action)


def _as_norm_stats(entry) -> NormStats:
    if isinstance(entry, NormStats):
        return entry
    get = lambda name: torch.as_tensor(entry[name], dtype=torch.float32).reshape(-1)  # noqa: E731
    mean, std = get("mean"), get("std")
    # LeRobot datasets written before quantiles were added carry min/max instead of q01/q99.
    q01 = get("q01") if "q01" in entry else get("min")
    q99 = get("q99") if "q99" in entry else get("max")
    return NormStats(mean=mean, std=std, q01=q01, q99=q99)


# ---- text through the data loader ------------------------------------------------------------------------
def collate(items: list[dict]) -> dict:
    """default_collate, with every string field packed as uint8 [B, L] under `<key>.utf8` (zero padded)."""
    text = [k for k, v in items[0].items() if isinstance(v, str)]
    batch = default_collate([{k: v for k, v in it.items() if k not in text} for it in items])
    for key in text:
        batch[key + TEXT_SUFFIX] = pack_strings([it[key] for it in items])
    return batch


def pack_strings(strings: list[str]) -> Tensor:
    """B strings -> uint8 [B, L] of their UTF-8 bytes, zero padded (L >= 1)."""
    raw = [s.encode("utf-8") for s in strings]
    out = torch.zeros(len(raw), max(1, max(len(r) for r in raw)), dtype=torch.uint8)
    for i, r in enumerate(raw):
        if r:
            out[i, : len(r)] = torch.tensor(list(r), dtype=torch.uint8)
    return out


def unpack_text(batch: dict) -> dict:
    """Inverse of collate's packing: `<key>.utf8` uint8 [B, L] -> `<key>`: B strings."""
    out = {k: v for k, v in batch.items() if not k.endswith(TEXT_SUFFIX)}
    for key, codes in batch.items():
        if key.endswith(TEXT_SUFFIX):
            rows = codes.cpu().tolist()
            out[key[: -len(TEXT_SUFFIX)]] = [bytes(row).rstrip(b"\0").decode("utf-8") for row in rows]
    return out


class ResumableBatchSampler:
    """Yields `num_batches` global batches of indices, starting at batch `start` of the run.

    Epoch e is torch.randperm(n) seeded with seed + e; the last incomplete batch of an epoch is dropped,
    so batch b of the run is batch b % per_epoch of epoch b // per_epoch, whatever came before.
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int, start: int, num_batches: int):
        check_positive("batch_size", batch_size)
        if dataset_size < batch_size:
            raise ValueError(f"dataset has {dataset_size} samples, fewer than optim.batch_size={batch_size}")
        self.batch_size, self.drop_last = batch_size, True
        self.dataset_size, self.seed, self.start, self.num_batches = dataset_size, seed, start, num_batches
        self.per_epoch = dataset_size // batch_size

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        epoch, pos = divmod(self.start, self.per_epoch)
        order = self.order(epoch)
        for _ in range(self.num_batches):
            if pos == self.per_epoch:
                epoch, pos = epoch + 1, 0
                order = self.order(epoch)
            yield order[pos * self.batch_size : (pos + 1) * self.batch_size].tolist()
            pos += 1

    def order(self, epoch: int) -> Tensor:
        """[N] the sample order of one epoch."""
        return torch.randperm(self.dataset_size, generator=torch.Generator().manual_seed(self.seed + epoch))


def build_dataset(data, model: PolicyConfig, seed: int) -> Dataset:
    """The dataset a DataConfig names; LeRobot support is imported only when asked for."""
    if data.source == "given":
        raise ValueError("got data.source='given' but no dataset: pass it to train(cfg, dataset=...)")
    if data.source == "toy":
        return SyntheticChunkDataset(data.toy_size, model, seed=seed, padding=data.toy_padding,
                                     image_size=data.toy_image_size)
    if not data.root:  # checked here, not in DataConfig, so overrides may set source and root in any order
        raise ValueError("got data.source='lerobot' with data.root='': set --set data.root=PATH")
    from driftkit.data.lerobot import LeRobotDataset

    cameras = list(model.cameras) or (None if model.uses_images else [])  # None = every camera
    return LeRobotDataset(data.root, horizon=model.horizon, cameras=cameras, require_state=model.state_dim > 0)
