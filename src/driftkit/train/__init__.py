"""Training: typed configs and presets, the Accelerate training loop, atomic resumable checkpoints."""

from driftkit.train.checkpoint import latest_checkpoint, list_checkpoints
from driftkit.train.config import (
    DataConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    apply_overrides,
    list_presets,
    make_config,
    resume_config,
)
from driftkit.train.data import ResumableBatchSampler, SyntheticChunkDataset, dataset_stats
from driftkit.train.metrics import read_metrics
from driftkit.train.trainer import NonFiniteLossError, TrainResult, train

__all__ = [
    "DataConfig",
    "NonFiniteLossError",
    "OptimConfig",
    "ResumableBatchSampler",
    "ScheduleConfig",
    "SyntheticChunkDataset",
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "dataset_stats",
    "latest_checkpoint",
    "list_checkpoints",
    "list_presets",
    "make_config",
    "read_metrics",
    "resume_config",
    "train",
]
