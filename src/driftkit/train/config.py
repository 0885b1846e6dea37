"""Typed training configuration, named presets, and `key=value` overrides on top of them."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Callable

from driftkit.errors import check_choice, check_positive
from driftkit.policy import (
    CONFIGS, FASTPolicyConfig, PolicyConfig, StatePolicyConfig, TextPolicyConfig, VLMPolicyConfig,
)
from driftkit.train.overrides import apply_override, parse_assignment

DATA_SOURCES = ("toy", "lerobot", "given")
MIXED_PRECISION = ("no", "bf16", "fp16")
DECAYS = ("cosine", "constant")


@dataclass
class DataConfig:
    """Where training samples come from."""

    source: str = "toy"
    """toy (a synthetic in-memory dataset), lerobot (a local LeRobot v3 dataset at `root`), or given (a dataset
    the caller hands to train() directly, e.g. the grounding adapter or the demo's task draws)."""
    root: str = ""
    """Directory of the LeRobot dataset (source = lerobot)."""
    toy_size: int = 512
    """Number of synthetic samples (source = toy)."""
    toy_padding: bool = True
    """Pad the tails of some synthetic chunks, as at episode ends (source = toy)."""
    toy_image_size: int = 32
    """Side of the synthetic camera images (source = toy; a state policy's image_size wins)."""
    num_workers: int = 0
    """DataLoader worker processes per training process."""

    def __post_init__(self):
        check_choice("data.source", self.source, DATA_SOURCES)
        check_positive("data.toy_size", self.toy_size)
        check_positive("data.num_workers", self.num_workers, allow_zero=True)


@dataclass
class OptimConfig:
    """AdamW and gradient clipping."""

    lr: float = 3e-4
    """Peak learning rate."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    batch_size: int = 64
    """Global batch size, split evenly over the processes (the same run on 1 or N processes)."""

    def __post_init__(self):
        check_positive("optim.lr", self.lr)
        check_positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"got optim.betas={self.betas}, need two values in [0, 1)")
        check_positive("optim.grad_clip", self.grad_clip, allow_zero=True)
        check_positive("optim.batch_size", self.batch_size)


@dataclass
class ScheduleConfig:
    """Length of training and the learning-rate schedule."""

    steps: int = 10_000
    """Optimiser updates in the whole run."""
    warmup_steps: int = 500
    """Linear warm-up from 0 to optim.lr."""
    decay: str = "cosine"
    """After warm-up: cosine (down to min_lr_ratio * lr at the last step) or constant."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak (cosine decay)."""

    def __post_init__(self):
        check_positive("schedule.steps", self.steps)
        check_positive("schedule.warmup_steps", self.warmup_steps, allow_zero=True)
        check_choice("schedule.decay", self.decay, DECAYS)
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"got schedule.min_lr_ratio={self.min_lr_ratio}, must be in [0, 1]")


@dataclass
class TrainConfig:
    """One training run."""

    model: PolicyConfig = field(default_factory=StatePolicyConfig)
    """The policy to train: a config of any policy kind (StatePolicyConfig, VLMPolicyConfig, ...)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The training data."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser settings."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Steps and learning-rate schedule."""
    seed: int = 0
    """Seed of the weights and the data order; process i draws its noise from seed + i."""
    output_dir: str = "runs/default"
    """Run directory: checkpoints/, metrics.jsonl, tensorboard/."""
    checkpoint_every: int = 1000
    """Write a checkpoint every N steps (and always at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep; older ones are removed once a newer one is complete."""
    log_every: int = 10
    """Write metrics every N steps."""
    mixed_precision: str = "no"
    """no, bf16 (autocast where the device supports it) or fp16 (GPU only)."""
    resume: str = ""
    """'' starts fresh; 'latest' resumes from the newest checkpoint in output_dir; or a checkpoint path."""
    cpu: bool = False
    """Train on the CPU even when a GPU is present."""
    tensorboard: bool = True
    """Also log to TensorBoard under output_dir/tensorboard when it is installed."""
    progress: bool = True
    """Show a progress bar (main process only)."""

    def __post_init__(self):
        check_positive("checkpoint_every", self.checkpoint_every)
        check_positive("keep_checkpoints", self.keep_checkpoints)
        check_positive("log_every", self.log_every)
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        if not self.output_dir:
            raise ValueError("got output_dir='', need a run directory")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["model"] = {"kind": self.model.kind, **out["model"]}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Inverse of to_dict (config.json of a checkpoint); unknown keys raise, naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; known: {sorted(known)}")
        kwargs = dict(data)
        model = dict(kwargs.get("model", {}))
        kind = model.pop("kind", "state")
        if kind not in CONFIGS:
            raise ValueError(f"unknown policy kind {kind!r} in TrainConfig.model; known: {sorted(CONFIGS)}")
        kwargs["model"] = model
        parts = {"model": CONFIGS[kind], "data": DataConfig, "optim": OptimConfig, "schedule": ScheduleConfig}
        for name, part in parts.items():
            if name in kwargs:
                sub = dict(kwargs[name])
                bad = sorted(set(sub) - {f.name for f in dataclasses.fields(part)})
                if bad:
                    raise ValueError(f"unknown key(s) {bad} in TrainConfig.{name}")
                kwargs[name] = part(**sub)
        return cls(**kwargs)


# Short names for the keys people change most.
ALIASES = {
    "decoder": "model.decoder",
    "horizon": "model.horizon",
    "steps": "schedule.steps",
    "warmup": "schedule.warmup_steps",
    "lr": "optim.lr",
    "batch_size": "optim.batch_size",
}


def _toy() -> TrainConfig:
    return TrainConfig(
        model=StatePolicyConfig(
            state_dim=8, action_dim=2, horizon=4, num_tasks=2, task_embed_dim=8, hidden_dim=64, cond_dim=64,
            decoder="flow", decoder_options={"hidden_dim": 64, "depth": 2},
        ),
        data=DataConfig(source="toy", toy_size=512),
        optim=OptimConfig(lr=1e-3, batch_size=32),
        schedule=ScheduleConfig(steps=200, warmup_steps=20),
        output_dir="runs/toy",
        checkpoint_every=100,
    )


def _metaworld_state() -> TrainConfig:
    return TrainConfig(
        model=StatePolicyConfig(state_dim=39, action_dim=4, horizon=16, num_tasks=50, decoder="flow"),
        data=DataConfig(source="lerobot", root="data/metaworld-mt50"),
        optim=OptimConfig(lr=3e-4, batch_size=256),
        schedule=ScheduleConfig(steps=30_000, warmup_steps=1000),
        output_dir="runs/metaworld-state",
        checkpoint_every=2000,
    )


def _metaworld_image() -> TrainConfig:
    cfg = _metaworld_state()
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, image_size=64),
        output_dir="runs/metaworld-image",
    )


def _toy_vla() -> TrainConfig:
    """The toy task through a tiny VLM: the synthetic camera image and instruction in, chunks out."""
    cfg = _toy()
    return dataclasses.replace(
        cfg,
        model=VLMPolicyConfig(state_dim=8, action_dim=2, horizon=4, backbone="smolvlm-tiny", mode="full",
                              num_query_tokens=4, cond="context", decoder="flow",
                              decoder_options={"hidden_dim": 64, "depth": 2}),
        data=dataclasses.replace(cfg.data, toy_size=128, toy_image_size=32),
        optim=OptimConfig(lr=1e-3, batch_size=16),
        schedule=ScheduleConfig(steps=100, warmup_steps=10),
        output_dir="runs/toy-vla",
        checkpoint_every=50,
    )


def _metaworld_vla() -> TrainConfig:
    """A tiny VLM (SmolVLM family, random init, trained in full) over the corner2 camera, the instruction
    and the state: a few thousand steps fit in tens of minutes on 2 CPU cores."""
    return TrainConfig(
        model=VLMPolicyConfig(state_dim=39, action_dim=4, horizon=16, backbone="smolvlm-tiny", mode="full",
                              num_query_tokens=4, cond="context", decoder="flow",
                              decoder_options={"hidden_dim": 128, "depth": 2}),
        data=DataConfig(source="lerobot", root="data/metaworld-vla"),
        optim=OptimConfig(lr=3e-4, batch_size=32),
        schedule=ScheduleConfig(steps=3000, warmup_steps=200),
        output_dir="runs/metaworld-vla",
        checkpoint_every=500,
    )


def _metaworld_fast() -> TrainConfig:
    """The VLA of metaworld-vla with FAST tokens through the VLM's LM head as the base, refined by residual flow
    (DRIFT's tokenizer base); the FAST tokenizer is fitted on the dataset's chunks when training starts."""
    cfg = _metaworld_vla()
    fields = {f.name: getattr(cfg.model, f.name) for f in dataclasses.fields(cfg.model)}
    fields.update(decoder="residual_flow", num_query_tokens=4)
    return dataclasses.replace(cfg, model=FASTPolicyConfig(**fields), output_dir="runs/metaworld-fast")


def _metaworld_vla_large() -> TrainConfig:
    """For a GPU: a mid preset (about 0.5 B random parameters) or a local checkpoint (model.backbone=DIR),
    bf16 autocast, LoRA, more steps."""
    cfg = _metaworld_vla()
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, backbone="qwen2_5_vl-mid", mode="lora", num_query_tokens=8,
                                  image_size=224, decoder_options={"hidden_dim": 512, "depth": 3}),
        optim=OptimConfig(lr=1e-4, batch_size=64),
        schedule=ScheduleConfig(steps=30_000, warmup_steps=1000),
        mixed_precision="bf16",
        output_dir="runs/metaworld-vla-large",
        checkpoint_every=2000,
    )


def _grounding_pretrain() -> TrainConfig:
    """A Qwen2.5-VL-family VLM trained from scratch through its text interface on the procedural grounding mix
    (driftkit.grounding.pretrain: boxes, intervals, descriptions as text). The data is handed to train()
    (data.source=given); model.backbone=DIR takes a from-scratch checkpoint of another size
    (grounding.pretrain_model.init_checkpoint), as benchmarks/grounding_pretrain.py does."""
    return TrainConfig(
        model=TextPolicyConfig(backbone="qwen2_5_vl-tiny", image_size=112, mode="full"),
        data=DataConfig(source="given"),
        optim=OptimConfig(lr=1e-3, batch_size=32),
        schedule=ScheduleConfig(steps=2000, warmup_steps=100),
        output_dir="runs/grounding-pretrain",
        checkpoint_every=250,
    )


PRESETS: dict[str, tuple[Callable[[], TrainConfig], str]] = {
    "toy": (_toy, "synthetic 2-task chunks (S=8, T=4, D=2), tiny nets, 200 steps; seconds on a laptop CPU"),
    "toy-vla": (_toy_vla, "the toy chunks through smolvlm-tiny (synthetic camera + instruction), 100 steps"),
    "metaworld-state": (
        _metaworld_state,
        "Meta-World MT50, state + task, T=16; data: driftkit collect --tasks mt50 --out data/metaworld-mt50",
    ),
    "metaworld-image": (
        _metaworld_image,
        "as metaworld-state plus the 64x64 corner2 camera (collect with --image) through a tiny CNN",
    ),
    "metaworld-vla": (
        _metaworld_vla,
        "smolvlm-tiny over corner2 + instruction + state, full mode; data: driftkit collect --image "
        "--out data/metaworld-vla",
    ),
    "metaworld-fast": (
        _metaworld_fast,
        "as metaworld-vla, with FAST tokens through the LM head as the base of a residual_flow refiner",
    ),
    "metaworld-vla-large": (
        _metaworld_vla_large,
        "for a GPU: qwen2_5_vl-mid (or model.backbone=DIR) in LoRA, bf16, 224 px, 30k steps",
    ),
    "grounding-pretrain": (
        _grounding_pretrain,
        "text-interface pretraining (kind text) on the procedural grounding mix; data given by "
        "benchmarks/grounding_pretrain.py",
    ),
}


def list_presets() -> dict[str, str]:
    return {name: summary for name, (_, summary) in PRESETS.items()}


def make_config(preset: str | None = "toy", overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A preset (or the defaults when preset is None) with `key=value` overrides applied in order."""
    if preset is None:
        cfg = TrainConfig()
    elif preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; available: {sorted(PRESETS)}")
    else:
        cfg = PRESETS[preset][0]()
    return apply_overrides(cfg, overrides)


def resume_config(overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The config of the newest checkpoint in the output_dir that `overrides` name (or the default one),
    with the overrides applied on top and resume=latest: `driftkit train --resume --set steps=400`."""
    from driftkit.train.checkpoint import latest_checkpoint, read_train_config

    output_dir = apply_overrides(TrainConfig(), [o for o in overrides if o.startswith("output_dir=")]).output_dir
    found = latest_checkpoint(output_dir)
    if found is None:
        raise ValueError(f"--resume without --preset needs a checkpoint, and {output_dir} has none; "
                         "set output_dir=... or name the preset the run started from")
    cfg = TrainConfig.from_dict(read_train_config(found))
    return apply_overrides(cfg, [*overrides, "resume=latest"])


def apply_overrides(cfg: TrainConfig, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
    for item in overrides:
        key, text = parse_assignment(item)
        cfg = apply_override(cfg, key, text, ALIASES)
    return cfg
