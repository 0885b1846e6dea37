"""StatePolicy: the state vector, a learned task embedding and (optionally) one camera through a tiny CNN,
fused into one condition [B, C] for any decoder. The small, fast policy of the state-based benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from driftkit.decoders.registry import make_decoder
from driftkit.errors import check_finite, check_positive
from driftkit.normalize import NormStats, Normalizer
from driftkit.policy.base import Condition, Policy, check_batch_shape, register_policy, require
from driftkit.policy.config import PolicyConfig
from driftkit.policy.keys import ACTION_KEY, STATE_KEY, TASK_INDEX_KEY
from driftkit.timing import StageTimer, stage_of


@dataclass
class StatePolicyConfig(PolicyConfig):
    """A state (and optionally one camera) conditioned policy that outputs action chunks [T, D]."""

    kind = "state"

    num_tasks: int = 1
    """Number of distinct `task_index` values; each gets a learned embedding."""
    task_embed_dim: int = 32
    """Width of the task embedding."""
    hidden_dim: int = 256
    """Hidden width of the observation encoder."""
    cond_dim: int = 256
    """C, width of the condition the encoder hands to the decoder."""
    image_size: int = 0
    """Side of the square RGB camera image [3, H, H] (64 for the Meta-World renders); 0 = state only."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("num_tasks", "task_embed_dim", "hidden_dim", "cond_dim"):
            check_positive(name, getattr(self, name))
        check_positive("state_dim", self.state_dim)
        if self.image_size and (self.image_size < 16 or self.image_size % 8):
            raise ValueError(f"got image_size={self.image_size}, must be 0 (no image) or a multiple of 8 >= 16")
        if len(self.cameras) > 1:
            raise ValueError(f"got cameras={list(self.cameras)}; the state policy reads one camera at most")

    def item_spec(self) -> dict:
        spec = super().item_spec()
        if self.image_size:
            spec[self.camera or "observation.images.<camera>"] = ((3, self.image_size, self.image_size),
                                                                  "model.image_size")
        return spec

    @property
    def uses_images(self) -> bool:
        return self.image_size > 0

    def with_data(self, dataset) -> "StatePolicyConfig":
        if not self.image_size:
            return self
        available = list(getattr(dataset, "cameras", []))
        if not self.cameras and len(available) > 1:
            raise ValueError(f"the dataset has cameras {available}; the state policy reads one: set "
                             "model.cameras=['<one of them>']")
        return super().with_data(dataset)

    @property
    def camera(self) -> str | None:
        """The camera key the CNN reads (None until the trainer fills cameras from the dataset)."""
        return self.cameras[0] if self.image_size and self.cameras else None


class TinyCNN(nn.Module):
    """Four stride-2 convolutions and global average pooling: [B, 3, H, H] in [0, 1] -> [B, out_dim]."""

    def __init__(self, out_dim: int, width: int = 32):
        super().__init__()
        layers, c_in = [], 3
        for c_out in (width, width, 2 * width, 2 * width):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, out_dim)

    def forward(self, image: Tensor) -> Tensor:
        h = self.convs(image * 2.0 - 1.0)  # centre pixels so the first layer sees zero-mean inputs
        return self.proj(h.mean(dim=(2, 3)))


class ObservationEncoder(nn.Module):
    """Concatenates a state MLP's features, a learned task embedding and (optionally) image features,
    then projects to the decoder's condition width."""

    def __init__(self, config: StatePolicyConfig):
        super().__init__()
        h = config.hidden_dim
        self.state_mlp = nn.Sequential(nn.Linear(config.state_dim, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU())
        self.task_embedding = nn.Embedding(config.num_tasks, config.task_embed_dim)
        self.image_net = TinyCNN(h) if config.image_size else None
        fused = h + config.task_embed_dim + (h if self.image_net is not None else 0)
        self.fuse = nn.Sequential(nn.Linear(fused, h), nn.SiLU(), nn.Linear(h, config.cond_dim))

    def forward(self, state: Tensor, task: Tensor, image: Tensor | None = None) -> Tensor:
        """state [B, S] (normalised), task [B] long, image [B, 3, H, H] or None -> [B, C]."""
        parts = [self.state_mlp(state), self.task_embedding(task)]
        if self.image_net is not None:
            parts.append(self.image_net(image))
        return self.fuse(torch.cat(parts, dim=-1))


@register_policy
class StatePolicy(Policy):
    """encoder(state, task_index, image) -> cond [B, C] -> decoder -> action chunk [B, T, D]."""

    config_class = StatePolicyConfig

    def __init__(self, config: StatePolicyConfig):
        super().__init__(config)
        self.encoder = ObservationEncoder(config)
        self.state_normalizer = Normalizer(config.state_dim, "mean_std" if config.normalize_state else "none")
        self.decoder = make_decoder(config.decoder, config.cond_dim, config.target_shape, **config.decoder_options)

    def set_stats(self, stats: dict[str, NormStats]) -> None:
        self.decoder.set_stats(stats[ACTION_KEY])
        if self.config.normalize_state:
            self.state_normalizer.set_stats(stats[STATE_KEY])

    def encode(self, obs: dict, timer: StageTimer | None = None) -> Condition:
        """obs -> cond [B, C]; checks every key against the config and names both shapes on a mismatch."""
        with stage_of(timer)("preprocess"):
            return Condition(self._encode(obs))

    def _encode(self, obs: dict) -> Tensor:
        cfg = self.config
        state = require(obs, STATE_KEY)
        check_batch_shape(STATE_KEY, state, (cfg.state_dim,), None)
        state = state.float()
        check_finite(STATE_KEY, state)
        batch_size, image = state.shape[0], None
        if cfg.image_size:
            key = cfg.camera or next((k for k in obs if k.startswith("observation.images.")), None)
            image = require(obs, key or "observation.images.<camera>", f" (config.image_size={cfg.image_size})")
            check_batch_shape(key, image, (3, cfg.image_size, cfg.image_size), batch_size)
            image = image.float()
        return self.encoder(self.state_normalizer.normalize(state), self._task(obs, batch_size, state.device), image)

    def _task(self, obs: dict, batch_size: int, device) -> Tensor:
        task = obs.get(TASK_INDEX_KEY)
        if task is None:
            if self.config.num_tasks > 1:
                raise KeyError(f"config.num_tasks={self.config.num_tasks} but the observation has no "
                               f"{TASK_INDEX_KEY!r}")
            return torch.zeros(batch_size, dtype=torch.long, device=device)
        task = torch.as_tensor(task, device=device).reshape(-1).long()
        if task.shape[0] != batch_size:
            raise ValueError(f"{TASK_INDEX_KEY} has {task.shape[0]} entries, expected one per batch item "
                             f"({batch_size})")
        if task.numel() and (task.min() < 0 or task.max() >= self.config.num_tasks):
            bad = int(task[(task < 0) | (task >= self.config.num_tasks)][0])
            raise ValueError(f"got {TASK_INDEX_KEY}={bad}, must be in [0, {self.config.num_tasks}) "
                             "(config.num_tasks)")
        return task

