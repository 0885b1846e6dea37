"""Policies: an observation encoder feeding any driftkit decoder, with save/load as a directory."""

from driftkit.policy.config import PolicyConfig
from driftkit.policy.io import load_policy, read_policy_config, save_policy
from driftkit.policy.policy import Policy

__all__ = ["Policy", "PolicyConfig", "load_policy", "read_policy_config", "save_policy"]
