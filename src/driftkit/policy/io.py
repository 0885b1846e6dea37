"""Save and load a Policy as a directory: config.json (PolicyConfig) + model.safetensors (weights).

Training checkpoints (driftkit.train.checkpoint) use the same two files plus training state, so
`load_policy` opens either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from driftkit.policy.config import PolicyConfig
from driftkit.policy.policy import Policy

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "driftkit-policy"


def policy_config_dict(config: PolicyConfig, **extra) -> dict:
    """The config.json content; extra keys (e.g. the training config) ride along."""
    return {"format": FORMAT, "format_version": 1, "policy": config.to_dict(), **extra}


def read_policy_config(path: str | os.PathLike) -> PolicyConfig:
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {path} is not a driftkit policy or checkpoint directory")
    data = json.loads(file.read_text())
    if data.get("format") != FORMAT or "policy" not in data:
        raise ValueError(f"{file} is not a driftkit policy config (format={data.get('format')!r})")
    return PolicyConfig.from_dict(data["policy"])


def save_policy(policy: Policy, path: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors into the directory `path` (created if missing)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_NAME).write_text(json.dumps(policy_config_dict(policy.config), indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in policy.state_dict().items()}
    save_file(state, str(path / WEIGHTS_NAME), metadata={"decoder": policy.config.decoder})
    return path


def load_policy(path: str | os.PathLike, config: PolicyConfig | None = None, device: str = "cpu") -> Policy:
    """Rebuild a Policy from a policy or checkpoint directory.

    config: the configuration the caller expects; a checkpoint of another decoder raises, naming both.
    """
    saved = read_policy_config(path)
    if config is not None and config.decoder != saved.decoder:
        raise ValueError(
            f"checkpoint {path} holds a {saved.decoder!r} decoder but the config asks for {config.decoder!r}"
        )
    policy = Policy(config if config is not None else saved)
    state = load_file(str(Path(path) / WEIGHTS_NAME), device=device)
    try:
        missing, unexpected = policy.load_state_dict(state, strict=False)
    except ValueError as err:  # weights of another decoder (the decoder checks its name on load)
        raise ValueError(f"{Path(path) / WEIGHTS_NAME}: {err}; config.json names {saved.decoder!r}") from err
    if missing or unexpected:
        raise ValueError(
            f"weights in {path} do not fit a {policy.config.decoder!r} policy: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]} (was it saved from another decoder or config?)"
        )
    return policy.to(device).eval()
