"""Networks a decoder evaluates: any net that keeps ChunkNet's signature can serve any decoder."""

from driftkit.nets.base import NET_REGISTRY, ChunkNet, NetSpec, Prefix, make_net, register_net
from driftkit.nets.expert import ExpertNet
from driftkit.nets.layerwise import LayerCache, LayerwiseExpertNet
from driftkit.nets.mlp import MLPNet

__all__ = ["NET_REGISTRY", "ChunkNet", "ExpertNet", "LayerCache", "LayerwiseExpertNet", "MLPNet", "NetSpec", "Prefix",
           "make_net", "register_net"]
