"""Test-time selection over K sampled chunks."""

from driftkit.selection.keystone import Selection, best_of_k, keystone, medoid

__all__ = ["Selection", "best_of_k", "keystone", "medoid"]
