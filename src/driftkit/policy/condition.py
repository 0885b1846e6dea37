"""ConditionPolicy: a decoder on a given condition vector, with nothing in front of it.

`observation.state` [B, C] is the decoder's cond as it is. This is the policy of benchmarks whose condition is
already a feature vector (the built-in demo suite, features precomputed by a frozen model), so that they train,
save and load through the same trainer and format as every other policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from driftkit.decoders.registry import make_decoder
from driftkit.errors import check_finite, check_positive
from driftkit.normalize import NormStats
from driftkit.policy.base import Condition, Policy, check_batch_shape, register_policy, require
from driftkit.policy.config import PolicyConfig
from driftkit.policy.keys import ACTION_KEY, STATE_KEY
from driftkit.timing import StageTimer


@dataclass
class ConditionPolicyConfig(PolicyConfig):
    """observation.state [B, state_dim] is the decoder's condition."""

    kind = "cond"

    normalize_state: bool = False
    """The condition reaches the decoder unchanged."""

    def __post_init__(self):
        super().__post_init__()
        check_positive("state_dim", self.state_dim)
        if self.normalize_state:
            raise ValueError("got normalize_state=True; a condition policy hands its condition over unchanged")

    @property
    def uses_images(self) -> bool:
        return False

    def stat_keys(self) -> tuple[str, ...]:
        return (ACTION_KEY,)


@register_policy
class ConditionPolicy(Policy):
    config_class = ConditionPolicyConfig

    def __init__(self, config: ConditionPolicyConfig):
        super().__init__(config)
        self.decoder = make_decoder(config.decoder, config.state_dim, config.target_shape, **config.decoder_options)

    def set_stats(self, stats: dict[str, NormStats]) -> None:
        self.decoder.set_stats(stats[ACTION_KEY])

    def encode(self, obs: dict, timer: StageTimer | None = None) -> Condition:
        cond = require(obs, STATE_KEY, " (the condition)")
        check_batch_shape(STATE_KEY, cond, (self.config.state_dim,), None)
        cond = cond.float()
        check_finite(STATE_KEY, cond)
        return Condition(cond)
