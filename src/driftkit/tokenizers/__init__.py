"""Maps between continuous values and discrete action tokens."""

from driftkit.tokenizers.bins import UniformBins

__all__ = ["UniformBins"]
