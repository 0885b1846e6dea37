"""PolicyConfig: what every policy is made of (an observation side + any registered decoder), one subclass
per policy kind. Configs validate themselves when built, decoder options included."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from driftkit.errors import check_positive
from driftkit.policy.keys import ACTION_KEY, STATE_KEY, camera_key


@dataclass
class PolicyConfig:
    """Fields every policy kind shares."""

    kind: ClassVar[str] = ""

    state_dim: int = 39
    """S, width of `observation.state` (39 for Meta-World's observation vector); 0 = no state input."""
    action_dim: int = 4
    """D, width of one action (4 for Meta-World)."""
    horizon: int = 16
    """T, actions per predicted chunk."""
    decoder: str = "flow"
    """Registered decoder name (driftkit.list_decoders())."""
    decoder_options: dict = field(default_factory=dict)
    """Options of the decoder's config dataclass, e.g. {"steps": 10} or {"base": "lm_tokens"}."""
    cameras: tuple[str, ...] = ()
    """Camera features the policy reads (`observation.images.<name>`); () = every camera of the training
    dataset, filled in when training starts."""
    normalize_state: bool = True
    """Standardise the state with dataset statistics (identity until set_stats is called)."""

    def __post_init__(self):
        for name in ("state_dim", "action_dim", "horizon"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"got {name}={value!r}, must be an int")
            check_positive(name, value, allow_zero=name == "state_dim")
        if not isinstance(self.decoder_options, dict):
            raise TypeError(f"got decoder_options={self.decoder_options!r}, must be a dict")
        if isinstance(self.cameras, str):
            raise TypeError(f"got cameras={self.cameras!r}, must be a list of camera names")
        self.cameras = tuple(camera_key(c) for c in self.cameras)
        self._check_decoder()

    def _check_decoder(self) -> None:
        """Build the decoder's own config now, so a wrong option fails before any data loads."""
        import driftkit.backbones  # noqa: F401  (registers lm_tokens and the expert net)
        from driftkit.decoders.registry import decoder_config

        options = {**self.default_decoder_options(), **self.decoder_options}
        try:
            decoder_config(self.decoder, 1, self.target_shape, **options)
        except ValueError as err:
            raise ValueError(f"got decoder={self.decoder!r}: {err}") from None

    def default_decoder_options(self) -> dict:
        """Options this policy kind gives its decoder unless decoder_options says otherwise."""
        return {}

    @property
    def has_unused_parameters(self) -> bool:
        """Whether some parameters get no gradient in a training step (DDP must then look for them): staged
        residual decoders train their base or refiner alone in each phase."""
        return self.decoder_options.get("schedule") == "staged"

    @property
    def uses_images(self) -> bool:
        """Whether the policy reads camera images (the data loader decodes none otherwise)."""
        return True

    def item_spec(self) -> dict[str, tuple[tuple[int, ...] | None, str]]:
        """LeRobot key -> (shape of one item, or None for a string; the config fields it follows), for
        checking a dataset against the config before training."""
        spec = {ACTION_KEY: (self.target_shape, "model.horizon, model.action_dim")}
        if self.state_dim:
            spec[STATE_KEY] = ((self.state_dim,), "model.state_dim")
        return spec

    def with_data(self, dataset) -> "PolicyConfig":
        """This config with what the training data decides filled in (default: its cameras, when none are
        named); every camera named must exist in the dataset."""
        available = list(getattr(dataset, "cameras", []))
        missing = [c for c in self.cameras if c not in available]
        if missing:
            raise KeyError(f"model.cameras names {missing[0]!r}, which the dataset does not have; its cameras: "
                           f"{available}")
        if self.cameras or not available:
            return self
        return dataclasses.replace(self, cameras=tuple(available))

    def stat_keys(self) -> tuple[str, ...]:
        """The dataset statistics the policy normalises with."""
        return (ACTION_KEY, STATE_KEY) if self.state_dim else (ACTION_KEY,)

    @property
    def target_shape(self) -> tuple[int, int]:
        return (self.horizon, self.action_dim)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PolicyConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)
