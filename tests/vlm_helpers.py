"""Helpers shared by the tests that build tiny VLM backbones."""

import numpy as np

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm", "paligemma"]


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    """n random 64x64 RGB images."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(n)]
