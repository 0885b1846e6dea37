"""Policies: one contract (driftkit.policy.base.Policy) whatever sits in front of the decoder.

    StatePolicy   state + task embedding (+ one camera through a tiny CNN)        kind "state"
    VLMPolicy     a VLM backbone over the cameras and the instruction             kind "vlm"
    FASTPolicy    a VLM's FAST tokens through its LM head, refined by a residual  kind "fast"
    ConditionPolicy  a decoder on a given condition vector (observation.state)    kind "cond"
    DFMPolicy     discrete flow refinement of action-bin tokens through the VLM   kind "dfm"
    TextPolicy    a VLM answering in text through its LM head (grounding)         kind "text"

    policy = make_policy(config)                     # any PolicyConfig subclass
    policy.save_pretrained(dir); load_policy(dir)    # one atomic directory format for every kind
"""

from driftkit.policy.base import POLICIES, Policy, read_policy_config, register_policy
from driftkit.policy.condition import ConditionPolicy, ConditionPolicyConfig
from driftkit.policy.config import PolicyConfig
from driftkit.policy.dfm import DFMPolicy, DFMPolicyConfig
from driftkit.policy.fast import FASTPolicy, FASTPolicyConfig
from driftkit.policy.state import StatePolicy, StatePolicyConfig
from driftkit.policy.text import TextPolicy, TextPolicyConfig
from driftkit.policy.vlm import VLMPolicy, VLMPolicyConfig

CONFIGS = {kind: cls.config_class for kind, cls in POLICIES.items()}


def make_policy(config: PolicyConfig) -> Policy:
    """An untrained policy of the kind its config names."""
    return POLICIES[config.kind](config)


def load_policy(path, kind: str | None = None, decoder: str | None = None, device: str = "cpu") -> Policy:
    """Rebuild any saved policy or training checkpoint (see Policy.from_pretrained)."""
    return Policy.from_pretrained(path, kind=kind, decoder=decoder, device=device)


def save_policy(policy: Policy, path, **extra):
    return policy.save_pretrained(path, **extra)


__all__ = [
    "CONFIGS",
    "ConditionPolicy",
    "ConditionPolicyConfig",
    "DFMPolicy",
    "DFMPolicyConfig",
    "FASTPolicy",
    "FASTPolicyConfig",
    "POLICIES",
    "Policy",
    "PolicyConfig",
    "StatePolicy",
    "StatePolicyConfig",
    "TextPolicy",
    "TextPolicyConfig",
    "VLMPolicy",
    "VLMPolicyConfig",
    "load_policy",
    "make_policy",
    "read_policy_config",
    "register_policy",
    "save_policy",
]
