"""Policy: an observation encoder feeding any driftkit decoder, trained on LeRobot-style batches.

Batch keys (a dict of tensors, LeRobot naming):
    observation.state [B, S] float      action        [B, T, D] float
    task_index        [B]    long       action_is_pad [B, T]    bool (True = padding past the episode end)
    observation.image [B, 3, H, H] float in [0, 1] (only when config.image_size > 0)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from driftkit.decoders.base import DecoderLoss
from driftkit.decoders.registry import make_decoder
from driftkit.errors import check_finite, check_positive
from driftkit.normalize import NormStats, Normalizer
from driftkit.policy.config import ACTION_KEY, ACTION_PAD_KEY, IMAGE_KEY, STATE_KEY, TASK_KEY, PolicyConfig
from driftkit.policy.encoder import ObservationEncoder

SELECTORS = (None, "keystone", "medoid")


class Policy(nn.Module):
    """encoder(observation) -> cond [B, C] -> decoder -> action chunk [B, T, D]."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        self.encoder = ObservationEncoder(config)
        self.state_normalizer = Normalizer(config.state_dim, "mean_std" if config.normalize_state else "none")
        self.decoder = make_decoder(config.decoder, config.cond_dim, config.target_shape, **config.decoder_options)

    # ---- statistics ------------------------------------------------------------------------------------
    def set_stats(self, action: NormStats, state: NormStats | None = None) -> None:
        """Dataset statistics: action stats normalise the decoder's targets, state stats the encoder input."""
        self.decoder.set_stats(action)
        if state is not None:
            self.state_normalizer.set_stats(state)

    # ---- training ----------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Tensor]) -> DecoderLoss:
        """The training loss. Going through forward (not .loss) lets DDP/FSDP wrappers sync gradients."""
        cond = self.encode(batch)
        target = batch.get(ACTION_KEY)
        if target is None:
            raise KeyError(f"batch has no {ACTION_KEY!r} key; keys are {sorted(batch)}")
        self._check_batch_shape(ACTION_KEY, target, (*self.config.target_shape,), cond.shape[0])
        return self.decoder.loss(cond, target.float(), self._action_mask(batch, target))

    def loss(self, batch: dict[str, Tensor]) -> DecoderLoss:
        return self(batch)

    # ---- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        obs: dict[str, Tensor],
        num_samples: int = 1,
        steps: int | None = None,
        select: str | None = None,
        clusters: int = 2,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """obs (the observation keys of a batch) -> [B, T, D] chunk in action units.

        select: None keeps the first of the K samples; "keystone" / "medoid" pick one of them
        (driftkit.selection), which needs num_samples >= 2 to matter.
        """
        if select not in SELECTORS:
            raise ValueError(f"got select={select!r}, must be None, 'keystone' or 'medoid'")
        check_positive("num_samples", num_samples)
        samples = self.decoder.sample(self.encode(obs), num_samples, steps, generator)  # [B, K, T, D]
        if select is None:
            return samples[:, 0]
        from driftkit import selection  # selection is optional at import time of the policy

        if select == "keystone":
            return selection.keystone(samples, clusters=clusters).chunk
        return selection.medoid(samples).chunk

    # ---- observation encoding ----------------------------------------------------------------------------
    def encode(self, obs: dict[str, Tensor]) -> Tensor:
        """obs -> cond [B, C]; checks every key against the config and names both shapes on a mismatch."""
        cfg = self.config
        state = obs.get(STATE_KEY)
        if state is None:
            raise KeyError(f"observation has no {STATE_KEY!r} key; keys are {sorted(obs)}")
        self._check_batch_shape(STATE_KEY, state, (cfg.state_dim,), None)
        state = state.float()
        check_finite(STATE_KEY, state)
        batch_size = state.shape[0]
        image = None
        if cfg.image_size:
            image = obs.get(IMAGE_KEY)
            if image is None:
                raise KeyError(f"config.image_size={cfg.image_size} but the observation has no {IMAGE_KEY!r} key")
            self._check_batch_shape(IMAGE_KEY, image, (3, cfg.image_size, cfg.image_size), batch_size)
            image = image.float()
        return self.encoder(self.state_normalizer.normalize(state), self._task(obs, batch_size, state.device), image)

    def _task(self, obs: dict[str, Tensor], batch_size: int, device) -> Tensor:
        task = obs.get(TASK_KEY)
        if task is None:
            if self.config.num_tasks > 1:
                raise KeyError(f"config.num_tasks={self.config.num_tasks} but the observation has no {TASK_KEY!r}")
            return torch.zeros(batch_size, dtype=torch.long, device=device)
        task = torch.as_tensor(task, device=device).reshape(-1).long()
        if task.shape[0] != batch_size:
            raise ValueError(f"{TASK_KEY} has {task.shape[0]} entries, expected one per batch item ({batch_size})")
        if task.numel() and (task.min() < 0 or task.max() >= self.config.num_tasks):
            bad = int(task[(task < 0) | (task >= self.config.num_tasks)][0])
            raise ValueError(f"got {TASK_KEY}={bad}, must be in [0, {self.config.num_tasks}) (config.num_tasks)")
        return task

    @staticmethod
    def _check_batch_shape(key: str, x: Tensor, item_shape: tuple, batch_size: int | None) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{key} must be a torch.Tensor, got {type(x).__name__}")
        ok = x.dim() == len(item_shape) + 1 and tuple(x.shape[1:]) == tuple(item_shape)
        if not ok or (batch_size is not None and x.shape[0] != batch_size):
            want = [batch_size if batch_size is not None else "B", *item_shape]
            raise ValueError(f"batch {key} has shape {list(x.shape)}, but the policy config expects {want}")

    def _action_mask(self, batch: dict[str, Tensor], target: Tensor) -> Tensor | None:
        pad = batch.get(ACTION_PAD_KEY)
        if pad is None:
            return None
        self._check_batch_shape(ACTION_PAD_KEY, pad, (self.config.horizon,), target.shape[0])
        return (~pad.bool()).unsqueeze(-1).expand_as(target)
