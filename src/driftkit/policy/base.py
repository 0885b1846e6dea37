"""Policy: the one contract every policy keeps, whatever sits in front of its decoder (a state encoder, a VLM).

    out = policy(batch)                                   -> DecoderLoss (training; through forward so DDP syncs)
    y = policy.sample(obs, num_samples=K)                 -> [B, K, T, D] in action units
    a = policy.predict(obs, num_samples=K, select="keystone")  -> [B, T, D]
    a = policy.predict(obs, inpaint=Inpaint.from_previous(...))  real-time chunking (driftkit.rtc)
    policy.nfe(steps)                                     network evaluations per chunk
    policy.save_pretrained(dir); Policy.from_pretrained(dir)   one atomic directory format for every kind

Batches and observations use LeRobot's keys (driftkit.policy.keys). The directory format:
    config.json         {"format": "driftkit-policy", "kind", "policy": <config>, ...extra such as "train"}
    model.safetensors   every weight of the module (tied weights once)
    <assets>            what the kind needs to rebuild (a VLM's tokenizer, processor and model config; FAST's
                        tokenizer), written by save_assets
Training checkpoints (driftkit.train.checkpoint) are this directory plus the optimiser and RNG state.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from driftkit.atomic import atomic_dir
from driftkit.decoders.base import DecoderLoss
from driftkit.errors import check_finite, check_positive
from driftkit.normalize import NormStats
from driftkit.policy.config import PolicyConfig
from driftkit.policy.keys import ACTION_KEY, ACTION_PAD_KEY
from driftkit.rtc import Inpaint
from driftkit.timing import StageTimer, stage_of

@dataclass
class Condition:
    """What a policy hands its decoder."""

    cond: Tensor
    """[B, C] features, or [B, L, C] states for nets that attend to them."""
    mask: Tensor | None = None
    """[B, L] bool, True at real rows of a [B, L, C] cond (None: every row is real)."""


CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "driftkit-policy"
FORMAT_VERSION = 2
SELECTORS = (None, "first", "keystone", "medoid")
POLICIES: dict[str, type["Policy"]] = {}


def register_policy(cls: type["Policy"]) -> type["Policy"]:
    POLICIES[cls.config_class.kind] = cls
    return cls


class Policy(nn.Module):
    """Base class. Subclasses set `config_class`, build `self.decoder` and implement `encode` (observation ->
    Condition) and `set_stats`; forward, sample and nfe then come from here (FAST, whose base prediction comes
    from the LM, overrides them). Kinds that need files besides the weights to rebuild implement save_assets /
    from_assets."""

    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig

    def __init__(self, config: PolicyConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got "
                            f"{type(config).__name__}")
        self.config = config

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- the contract ------------------------------------------------------------------------------------
    def encode(self, obs: dict, timer: StageTimer | None = None) -> Condition:
        """obs -> what `self.decoder` is conditioned on (differentiable when grad is enabled)."""
        raise NotImplementedError

    def forward(self, batch: dict) -> DecoderLoss:
        """The training loss of a batch (observation keys + action, action_is_pad)."""
        c = self.encode(batch)
        target, mask = action_target(batch, self.config, c.cond.shape[0])
        dev = c.cond.device
        return self.decoder.loss(c.cond, target.to(dev), None if mask is None else mask.to(dev), cond_mask=c.mask)

    @torch.no_grad()
    def sample(self, obs: dict, num_samples: int = 1, steps: int | None = None,
               generator: torch.Generator | None = None, timer: StageTimer | None = None,
               temperature: float | None = None, inpaint: Inpaint | None = None) -> Tensor:
        """obs -> [B, K, T, D] chunks in action units. timer, when given, receives the stage times
        (e.g. preprocess / prefix / decoder); temperature overrides the decoder's sampling temperature for
        this call (None = its config's); inpaint (driftkit.rtc.Inpaint, prefix [B, T, D] in action units)
        holds every sample to the previous chunk's prefix (real-time chunking; the decoder raises if it
        cannot)."""
        check_positive("num_samples", num_samples)
        c = self.encode(obs, timer)
        with stage_of(timer)("decoder"):
            return self.decoder.sample(c.cond, num_samples, steps, generator, temperature=temperature,
                                       cond_mask=c.mask, inpaint=inpaint)

    def nfe(self, steps: int | None = None) -> int:
        """Network evaluations of one chunk (K samples are batched into each)."""
        return self.decoder.nfe(steps)

    def set_stats(self, stats: dict[str, NormStats]) -> None:
        """Dataset statistics by LeRobot key (at least `action`; `observation.state` where used)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, obs: dict, num_samples: int = 1, steps: int | None = None, select: str | None = None,
                clusters: int = 2, generator: torch.Generator | None = None,
                timer: StageTimer | None = None, temperature: float | None = None,
                inpaint: Inpaint | None = None) -> Tensor:
        """obs -> [B, T, D]: one of K samples, the first (select None / "first"), or chosen by KeyStone or
        the medoid (driftkit.selection), which needs num_samples >= 2 to matter. The selectors measure
        distances in the decoder's normalised space, where every dimension has its own scale (as Drift-VLA
        selects on normalised model outputs); the chosen sample is returned in action units. inpaint:
        real-time chunking, as in sample() (one-step decoders return their samples closest to the prefix
        first)."""
        if select not in SELECTORS:
            raise ValueError(f"got select={select!r}, must be one of {list(SELECTORS)}")
        check_positive("num_samples", num_samples)
        samples = self.sample(obs, num_samples, steps, generator, timer, temperature, inpaint=inpaint)
        if select in (None, "first"):
            return samples[:, 0]
        from driftkit import selection

        return selection.select_normalized(samples, self.decoder.normalizer.normalize, select, clusters).chunk

    # ---- training set-up -----------------------------------------------------------------------------------
    @classmethod
    def for_training(cls, config: PolicyConfig, dataset) -> "Policy":
        """A fresh policy whose normalisers (and, for FAST, tokenizer) are fitted to the training data."""
        from driftkit.train.data import dataset_stats

        policy = cls(config)
        policy.set_stats(dataset_stats(dataset, config.stat_keys()))
        return policy

    # ---- persistence ---------------------------------------------------------------------------------------
    def config_dict(self, **extra) -> dict:
        """The config.json content; extra keys (e.g. the training config) ride along."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind,
                "decoder": self.config.decoder, "policy": self.config.to_dict(), **extra}

    def save_assets(self, path: Path) -> None:
        """Write the files besides config.json and the weights that from_assets needs (default: none)."""

    @classmethod
    def from_assets(cls, config: PolicyConfig, path: Path) -> "Policy":
        """An untrained policy of `config`, rebuilt with the assets saved in `path`."""
        return cls(config)

    def save_pretrained(self, path: str | os.PathLike, **extra) -> Path:
        """Write the policy directory atomically (an existing one is replaced only once the new one is done)."""
        with atomic_dir(path) as tmp:
            self.write_files(tmp, **extra)
        return Path(path)

    def write_files(self, path: Path, weights: bool = True, **extra) -> None:
        """config.json, the assets and (unless weights=False: a trainer saving them its own way) the weights."""
        (path / CONFIG_NAME).write_text(json.dumps(self.config_dict(**extra), indent=2))
        self.save_assets(path)
        if weights:
            save_model(self, str(path / WEIGHTS_NAME), metadata={"kind": self.kind, "decoder": self.config.decoder})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, kind: str | None = None, decoder: str | None = None,
                        device: str | torch.device = "cpu") -> "Policy":
        """Rebuild a saved policy or training checkpoint. kind / decoder: what the caller expects (called on a
        subclass, its own kind); a directory holding something else raises, naming both."""
        path = Path(path)
        saved_kind, config = read_policy_config(path)
        kind = kind or (cls.config_class.kind or None)
        if kind is not None and saved_kind != kind:
            raise ValueError(f"{path} holds a {saved_kind!r} policy with a {config.decoder!r} decoder, but a "
                             f"{kind!r} policy was asked for")
        if decoder is not None and config.decoder != decoder:
            raise ValueError(f"{path} holds a {saved_kind!r} policy with a {config.decoder!r} decoder, but a "
                             f"{decoder!r} decoder was asked for")
        policy = POLICIES[saved_kind].from_assets(config, path)
        policy.load_weights(path / WEIGHTS_NAME)
        return policy.to(device).eval()

    def load_weights(self, file: Path) -> None:
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: the policy directory has no weights")
        try:
            missing, unexpected = load_model(self, str(file), strict=False)
        except (ValueError, RuntimeError) as err:  # e.g. the decoder refusing another decoder's weights
            raise ValueError(f"{file}: {err}; config.json names a {self.kind!r} policy with a "
                             f"{self.config.decoder!r} decoder") from err
        if missing or unexpected:
            raise ValueError(f"weights in {file} do not fit a {self.kind!r} policy with a {self.config.decoder!r} "
                             f"decoder: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")


def read_policy_config(path: str | os.PathLike) -> tuple[str, PolicyConfig]:
    """(kind, config) from a policy or checkpoint directory; errors name the file."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {path} is not a driftkit policy or checkpoint directory")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "policy" not in data:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{file} is not a driftkit policy config (format={got!r})")
    import driftkit.policy  # noqa: F401  (registers every kind)

    kind = data.get("kind", "state")  # format_version 1 held state policies only
    if kind not in POLICIES:
        raise ValueError(f"{file} names policy kind {kind!r}; known kinds: {sorted(POLICIES)}")
    return kind, POLICIES[kind].config_class.from_dict(data["policy"])


# ---- checks every kind shares ------------------------------------------------------------------------------
def check_batch_shape(key: str, x, item_shape: tuple, batch_size: int | None) -> None:
    """x must be a tensor [B, *item_shape]; the error names the key and both shapes."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{key} must be a torch.Tensor, got {type(x).__name__}")
    ok = x.dim() == len(item_shape) + 1 and tuple(x.shape[1:]) == tuple(item_shape)
    if not ok or (batch_size is not None and x.shape[0] != batch_size):
        want = [batch_size if batch_size is not None else "B", *item_shape]
        raise ValueError(f"{key} has shape {list(x.shape)}, but the policy config expects {want}")


def require(obs: dict, key: str, why: str = ""):
    if key not in obs:
        raise KeyError(f"observation has no {key!r} key{why}; keys are {sorted(obs)}")
    return obs[key]


def action_target(batch: dict, config: PolicyConfig, batch_size: int) -> tuple[Tensor, Tensor | None]:
    """(action [B, T, D] float, mask [B, T, D] bool or None) from a training batch."""
    target = require(batch, ACTION_KEY, " (a training batch needs the action chunk)")
    check_batch_shape(ACTION_KEY, target, config.target_shape, batch_size)
    target = target.float()
    check_finite(ACTION_KEY, target)
    pad = batch.get(ACTION_PAD_KEY)
    if pad is None:
        return target, None
    check_batch_shape(ACTION_PAD_KEY, pad, (config.horizon,), batch_size)
    return target, (~pad.bool()).unsqueeze(-1).expand_as(target)
