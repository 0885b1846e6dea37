"""VLM backbones: real transformers VLMs read out at query tokens, as conditions for any driftkit decoder.

    bb = Backbone.from_preset("qwen2_5_vl-tiny", num_query_tokens=8)        # or Backbone.from_pretrained(dir)
    feats = bb.encode(images, prompts)                                       # .query [B, Q, H], .prefix, ...

Policies built on a backbone (VLMPolicy, FASTPolicy) live in driftkit.policy.

Families: qwen2_vl, qwen2_5_vl, qwen3_vl, smolvlm (Idefics3), paligemma; presets "<family>-tiny" (tests)
and "<family>-mid" (~0.3B random parameters, for GPU latency).

Importing this package registers the "lm_tokens" decoder (the VLM's LM head as a base predictor) and the
"expert" net; transformers itself is imported only when a backbone is built.
"""

import driftkit.nets.expert  # noqa: F401  (registers the "expert" net VLM policies' decoders usually use)

from driftkit.backbones.backbone import Backbone, PrefixState
from driftkit.backbones.config import BackboneConfig, VLMFeatures
from driftkit.backbones.families import FAMILIES, list_presets
from driftkit.backbones.fast_head import FASTHeadConfig, FASTLMHead
from driftkit.decoders.lm_tokens import LMTokensDecoder

__all__ = [
    "FAMILIES",
    "FASTHeadConfig",
    "FASTLMHead",
    "Backbone",
    "BackboneConfig",
    "LMTokensDecoder",
    "PrefixState",
    "VLMFeatures",
    "list_presets",
]
