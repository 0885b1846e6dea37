"""Training losses that more than one decoder uses."""

from driftkit.losses.drifting import GROUPINGS, DriftField, drift_field, drifting_loss, group_chunks

__all__ = ["GROUPINGS", "DriftField", "drift_field", "drifting_loss", "group_chunks"]
