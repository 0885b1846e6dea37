"""Device names -> torch devices, written once for every command and runner that takes `--device`."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """auto -> cuda, then mps, then cpu; any other name as torch reads it ("cpu", "cuda", "cuda:1"). A CUDA
    name on a machine without CUDA raises, naming it."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"got device={name!r}, but no CUDA device is available")
    return device
