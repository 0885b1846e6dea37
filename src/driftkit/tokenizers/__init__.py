"""Maps between continuous values and discrete action tokens."""

from driftkit.tokenizers.bins import UniformBins
from driftkit.tokenizers.fast import FASTConfig, FASTDecoded, FASTTokenizer

__all__ = ["FASTConfig", "FASTDecoded", "FASTTokenizer", "UniformBins"]
