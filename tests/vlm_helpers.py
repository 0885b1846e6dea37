"""Helpers shared by the tests that build tiny VLM backbones and VLM policies."""

import numpy as np
import torch

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm", "paligemma"]
CAMERA = "observation.images.cam"


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    """n random 64x64 RGB images."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(n)]


def camera(n: int, seed: int = 0) -> torch.Tensor:
    """The same n images as `images(n, seed)`, as one LeRobot camera feature: [n, 3, 64, 64] float in [0, 1]."""
    return torch.from_numpy(np.stack(images(n, seed))).permute(0, 3, 1, 2).float() / 255.0


def vlm_obs(prompts: list[str], seed: int = 0, state_dim: int = 0, cameras=(CAMERA,)) -> dict:
    """A LeRobot-keyed observation for a VLM policy: one image tensor per camera, the prompts as `task`, and a
    state [B, S] when state_dim > 0."""
    b = len(prompts)
    obs = {key: camera(b, seed + i) for i, key in enumerate(cameras)}
    obs["task"] = list(prompts)
    if state_dim:
        obs["observation.state"] = torch.randn(b, state_dim, generator=torch.Generator().manual_seed(seed))
    return obs
