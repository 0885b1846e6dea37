"""PolicyConfig: what a Policy is made of (observation encoder + any registered decoder)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from driftkit.errors import check_positive

STATE_KEY = "observation.state"
IMAGE_KEY = "observation.image"
ACTION_KEY = "action"
ACTION_PAD_KEY = "action_is_pad"
TASK_KEY = "task_index"


@dataclass
class PolicyConfig:
    """A state (and optionally image) conditioned policy that outputs action chunks [T, D]."""

    state_dim: int = 39
    """S, width of `observation.state` (39 for Meta-World's observation vector)."""
    action_dim: int = 4
    """D, width of one action (4 for Meta-World)."""
    horizon: int = 16
    """T, actions per predicted chunk."""
    decoder: str = "flow"
    """Registered decoder name (driftkit.list_decoders())."""
    decoder_options: dict = field(default_factory=dict)
    """Options of the decoder's config dataclass, e.g. {"steps": 10} or {"num_bins": 64}."""
    num_tasks: int = 1
    """Number of distinct `task_index` values; each gets a learned embedding."""
    task_embed_dim: int = 32
    """Width of the task embedding."""
    hidden_dim: int = 256
    """Hidden width of the observation encoder."""
    cond_dim: int = 256
    """C, width of the condition the encoder hands to the decoder."""
    image_size: int = 0
    """Side of a square RGB `observation.image` [3, H, H] (64 for the Meta-World renders); 0 = state only."""
    normalize_state: bool = True
    """Standardise the state with dataset statistics (identity until set_stats is called)."""

    def __post_init__(self):
        for name in ("state_dim", "action_dim", "horizon", "num_tasks", "task_embed_dim", "hidden_dim", "cond_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"got {name}={value!r}, must be an int")
            check_positive(name, value)
        if not isinstance(self.decoder_options, dict):
            raise TypeError(f"got decoder_options={self.decoder_options!r}, must be a dict")
        if self.image_size and (self.image_size < 16 or self.image_size % 8):
            raise ValueError(f"got image_size={self.image_size}, must be 0 (no image) or a multiple of 8 >= 16")
        from driftkit.decoders.registry import DECODERS

        if self.decoder not in DECODERS:
            raise ValueError(f"got decoder={self.decoder!r}, must be one of {sorted(DECODERS)}")

    @property
    def target_shape(self) -> tuple[int, int]:
        return (self.horizon, self.action_dim)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PolicyConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PolicyConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)
