"""driftkit: continuous decoders for vision-language models behind one interface.

    dec = driftkit.make_decoder("drift", cond_dim=C, target_shape=(T, D))
    out = dec.loss(cond, target, mask)           # cond [B, C], target [B, T, D]
    y = dec.sample(cond, num_samples=K)          # [B, K, T, D]
"""

from driftkit.decoders import Decoder, DecoderConfig, DecoderLoss, list_decoders, make_decoder, register_decoder
from driftkit.decoders.io import load_decoder, save_decoder
from driftkit.normalize import NormStats
from driftkit.selection import Selection, best_of_k, keystone, medoid

__version__ = "0.1.0"

__all__ = [
    "Decoder",
    "DecoderConfig",
    "DecoderLoss",
    "NormStats",
    "Selection",
    "best_of_k",
    "keystone",
    "medoid",
    "list_decoders",
    "load_decoder",
    "save_decoder",
    "make_decoder",
    "register_decoder",
]
