"""Datasets on disk: the LeRobotDataset v3.0 format (reader, writer) and action chunking."""

from driftkit.data.chunks import ActionChunks, make_action_chunks
from driftkit.data.format import CODEBASE_VERSION, DatasetFormatError, Feature
from driftkit.data.lerobot import LeRobotDataset, task_index_map
from driftkit.data.reader import EpisodeInfo, LeRobotReader
from driftkit.data.writer import LeRobotWriter

__all__ = [
    "CODEBASE_VERSION",
    "ActionChunks",
    "DatasetFormatError",
    "EpisodeInfo",
    "Feature",
    "LeRobotDataset",
    "LeRobotReader",
    "LeRobotWriter",
    "make_action_chunks",
    "task_index_map",
]
