"""The decoder family. Importing this package registers every built-in decoder."""

from driftkit.decoders.base import Decoder, DecoderConfig, DecoderLoss
from driftkit.decoders.registry import DECODERS, decoder_class, list_decoders, make_decoder, register_decoder
from driftkit.decoders import regression, tokens, lm_tokens, flow, drift, residual, discrete_flow  # noqa: F401

__all__ = [
    "DECODERS",
    "Decoder",
    "DecoderConfig",
    "DecoderLoss",
    "decoder_class",
    "list_decoders",
    "make_decoder",
    "register_decoder",
]
