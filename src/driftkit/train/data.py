"""Training data: a synthetic chunk dataset, dataset statistics, and a resumable batch order.

Every dataset yields dict items with LeRobot keys (driftkit.policy.policy documents them). The batch
order is a pure function of (seed, epoch), so a run resumed at step k sees exactly the batches an
uninterrupted run would, and a global batch is split over the processes the same way for any count.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import Dataset

from driftkit.errors import check_positive
from driftkit.normalize import NormStats
from driftkit.policy.config import ACTION_KEY, ACTION_PAD_KEY, IMAGE_KEY, STATE_KEY, TASK_KEY, PolicyConfig


class SyntheticChunkDataset(Dataset):
    """Bimodal action chunks determined by state and task, with padded tails on some items.

    action[t] = s * tanh(W_task @ state) * (t + 1) / T + 0.05 * noise, where the mode s = +-1 is drawn
    per item: a regression decoder averages the two modes, a generative decoder can keep both.
    """

    def __init__(self, size: int, model: PolicyConfig, seed: int = 0, padding: bool = True):
        check_positive("size", size)
        g = torch.Generator().manual_seed(seed)
        s, t, d = model.state_dim, model.horizon, model.action_dim
        self.image_size = model.image_size
        self.state = torch.randn(size, s, generator=g)  # [N, S]
        self.task = torch.arange(size) % model.num_tasks  # [N]
        weights = torch.randn(model.num_tasks, d, s, generator=g) / math.sqrt(s)  # [K, D, S]
        mode = torch.randint(0, 2, (size, 1, 1), generator=g) * 2.0 - 1.0
        ramp = torch.arange(1, t + 1).float().view(1, t, 1) / t
        base = torch.tanh(torch.einsum("nds,ns->nd", weights[self.task], self.state)).unsqueeze(1)  # [N, 1, D]
        self.action = mode * base * ramp + 0.05 * torch.randn(size, t, d, generator=g)  # [N, T, D]
        real = torch.randint(max(1, t // 2), t + 1, (size,), generator=g)  # steps before the episode ended
        real = real if padding else torch.full_like(real, t)
        self.pad = torch.arange(t).view(1, t) >= real.view(size, 1)  # [N, T]
        self.action[self.pad] = 0.0
        self.stats = {ACTION_KEY: NormStats.from_data(self.action, ~self.pad.unsqueeze(-1).expand_as(self.action)),
                      STATE_KEY: NormStats.from_data(self.state)}

    def __len__(self) -> int:
        return self.state.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {STATE_KEY: self.state[i], TASK_KEY: self.task[i], ACTION_KEY: self.action[i],
                ACTION_PAD_KEY: self.pad[i]}
        if self.image_size:
            # A smooth image whose colour follows the first state dims, cheap to make on the fly.
            h = self.image_size
            ramp = torch.linspace(0, 1, h).view(1, h, 1) * torch.linspace(0, 1, h).view(1, 1, h)
            colour = torch.sigmoid(self.state[i].repeat(3)[:3]).view(3, 1, 1)
            item[IMAGE_KEY] = colour * ramp.expand(3, h, h)
        return item


def check_dataset(dataset: Dataset, model: PolicyConfig) -> None:
    """Compare the first item (and the task count, when the dataset lists its tasks) with the model config
    before any work, naming both sides of a mismatch."""
    item = dataset[0]
    expected = {STATE_KEY: ([model.state_dim], "model.state_dim"), ACTION_KEY: (list(model.target_shape),
                "model.horizon, model.action_dim")}
    if model.image_size:
        expected[IMAGE_KEY] = ([3, model.image_size, model.image_size], "model.image_size")
    for key, (shape, fields) in expected.items():
        if key not in item:
            raise KeyError(f"dataset items have no {key!r} key; keys are {sorted(item)}")
        got = list(torch.as_tensor(item[key]).shape)
        if got != shape:
            raise ValueError(f"dataset item {key} has shape {got}, but the model config expects {shape} ({fields})")
    tasks = getattr(dataset, "tasks", None)
    if tasks is not None and len(tasks) > model.num_tasks:
        raise ValueError(f"the dataset has {len(tasks)} tasks but model.num_tasks={model.num_tasks}; "
                         f"set --set model.num_tasks={len(tasks)}")


def dataset_stats(dataset: Dataset) -> dict[str, NormStats]:
    """{action: NormStats, observation.state: NormStats} from `dataset.stats` (NormStats, or LeRobot-style
    dicts of mean/std/q01/q99 lists) when present, else computed over the dataset."""
    stats = getattr(dataset, "stats", None)
    out = {}
    for key in (ACTION_KEY, STATE_KEY):
        entry = stats.get(key) if isinstance(stats, dict) else None
        out[key] = _as_norm_stats(entry) if entry is not None else None
    missing = [k for k, v in out.items() if v is None]
    if missing:
        items = [dataset[i] for i in range(len(dataset))]
        for key in missing:
            data = torch.stack([torch.as_tensor(it[key]).float() for it in items])
            mask = None
            if key == ACTION_KEY and ACTION_PAD_KEY in items[0]:
                pad = torch.stack([torch.as_tensor(it[ACTION_PAD_KEY]).bool() for it in items])
                mask = (~pad).unsqueeze(-1).expand_as(data)
            out[key] = NormStats.from_data(data, mask)
    return out


def _as_norm_stats(entry) -> NormStats:
    if isinstance(entry, NormStats):
        return entry
    get = lambda name: torch.as_tensor(entry[name], dtype=torch.float32).reshape(-1)  # noqa: E731
    mean, std = get("mean"), get("std")
    # LeRobot datasets written before quantiles were added carry min/max instead of q01/q99.
    q01 = get("q01") if "q01" in entry else get("min")
    q99 = get("q99") if "q99" in entry else get("max")
    return NormStats(mean=mean, std=std, q01=q01, q99=q99)


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
    if data.source == "toy":
        return SyntheticChunkDataset(data.toy_size, model, seed=seed, padding=data.toy_padding)
    if not data.root:  # checked here, not in DataConfig, so overrides may set source and root in any order
        raise ValueError("got data.source='lerobot' with data.root='': set --set data.root=PATH")
    from driftkit.data.lerobot import LeRobotDataset

    return LeRobotDataset(data.root, horizon=model.horizon, image_key=data.image_key or None)
