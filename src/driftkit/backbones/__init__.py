"""VLM backbones: real transformers VLMs read out at query tokens, as conditions for any driftkit decoder.

    bb = Backbone.from_preset("qwen2_5_vl-tiny", num_query_tokens=8)        # or Backbone.from_pretrained(dir)
    dec = make_decoder("residual_flow", cond_dim=bb.hidden_size, target_shape=(4, 2), net="expert",
                       base="lm_tokens")
    policy = VLMPolicy(bb, dec, cond="query")        # loss(batch), sample(images, prompts, num_samples=K)

Families: qwen2_vl, qwen2_5_vl, qwen3_vl, smolvlm (Idefics3), paligemma; presets "<family>-tiny" (tests)
and "<family>-mid" (~0.3B random parameters, for GPU latency).

Importing this package registers the "lm_tokens" decoder (the VLM's LM head as a base predictor) and the
"expert" net; transformers itself is imported only when a backbone is built.
"""

import driftkit.nets.expert  # noqa: F401  (registers the "expert" net VLMPolicy decoders usually use)

from driftkit.backbones.backbone import Backbone, PrefixState
from driftkit.backbones.config import BackboneConfig, VLMFeatures
from driftkit.backbones.families import FAMILIES, list_presets
from driftkit.backbones.fast_head import FASTHeadConfig, FASTLMHead
from driftkit.backbones.fast_policy import FASTResidualPolicy
from driftkit.decoders.lm_tokens import LMTokensDecoder
from driftkit.backbones.policy import VLMPolicy

__all__ = [
    "FAMILIES",
    "FASTHeadConfig",
    "FASTLMHead",
    "FASTResidualPolicy",
    "Backbone",
    "BackboneConfig",
    "LMTokensDecoder",
    "PrefixState",
    "VLMFeatures",
    "VLMPolicy",
    "list_presets",
]
