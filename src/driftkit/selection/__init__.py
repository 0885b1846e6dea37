"""Test-time selection over K sampled chunks."""

from driftkit.selection.keystone import Selection, best_of_k, keystone, medoid, select_normalized
from driftkit.selection.prefix import closest_to_prefix, prefix_distance, rank_by_prefix

__all__ = ["Selection", "best_of_k", "closest_to_prefix", "keystone", "medoid", "prefix_distance", "rank_by_prefix",
           "select_normalized"]
