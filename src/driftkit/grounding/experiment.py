"""Grounding experiments: a VLM policy trained through the one trainer (driftkit.train) on a synthetic
grounding benchmark, then scored on the test split (driftkit.grounding.evaluate).

    cfg = GroundingExperimentConfig(task="spatial", decoder="residual_flow[regression]", steps=1500, seed=0)
    results = run_experiment(cfg, "runs/spatial-rf")      # also written to runs/spatial-rf/results.json
    results["evaluations"][0]["metrics"]                  # {"Acc@0.5": .., "Acc@0.75": .., "Acc@0.9": .., "mIoU": ..}

Decoder specs name a registered decoder, and for residual decoders their base in brackets:
"residual_flow[lm_tokens]" is residual_flow with base="lm_tokens". Every decoder reads the same backbone
features (cond="context": prefix and query states, through the cross-attending "expert" net; lm_tokens reads
its values off the query states with the VLM's LM head rows). The training run is an ordinary trainer run
(train_config): checkpoints, exact resume and the NaN stop come with it, in <out>/checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from driftkit.atomic import write_text_atomic
from driftkit.devices import resolve_device
from driftkit.errors import check_choice, check_positive
from driftkit.grounding.actions import CAMERA, FRAME_LAYOUTS, GroundingActions, frame_cameras, frame_labels
from driftkit.grounding.evaluate import POSTPROCESS, eval_variants, evaluate

TASKS = ("spatial", "temporal")
TARGET_SHAPES = {"spatial": (1, 4), "temporal": (1, 2)}
DECODER_SPECS = ("regression", "lm_tokens", "flow", "residual_flow[regression]", "residual_flow[lm_tokens]",
                 "residual_drift")
"""The specs the benchmark sweeps; any registered decoder (and residual_*[base]) is accepted."""
RESIDUAL = ("residual_flow", "residual_drift")
_SPEC = re.compile(r"^([a-z_]+)(?:\[([a-z_]+)\])?$")


@dataclass
class DecoderSpec:
    spec: str
    """As written, e.g. "residual_flow[lm_tokens]"."""
    name: str
    """Registry name, e.g. "residual_flow"."""
    options: dict = field(default_factory=dict)
    """make_decoder options the spec implies, e.g. {"base": "lm_tokens"}."""


def parse_decoder_spec(spec: str) -> DecoderSpec:
    """"name" or "residual_*[base]" -> DecoderSpec; unknown names raise ValueError naming them."""
    import driftkit.backbones  # noqa: F401  (registers lm_tokens)
    from driftkit.decoders.registry import DECODERS

    match = _SPEC.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(f"got decoder spec {spec!r}; write 'name' or 'residual_flow[base]', e.g. one of "
                         f"{list(DECODER_SPECS)}")
    name, base = match.groups()
    if name not in DECODERS:
        raise ValueError(f"got decoder spec {spec!r}: unknown decoder {name!r}; registered: {sorted(DECODERS)}; "
                         f"benchmark specs: {list(DECODER_SPECS)}")
    if base is None:
        return DecoderSpec(spec, name)
    if name not in RESIDUAL:
        raise ValueError(f"got decoder spec {spec!r}: only {list(RESIDUAL)} take a [base]")
    if base not in DECODERS or base in RESIDUAL:
        raise ValueError(f"got decoder spec {spec!r}: unknown base {base!r}; choose a non-residual decoder from "
                         f"{sorted(set(DECODERS) - set(RESIDUAL))}")
    return DecoderSpec(spec, name, {"base": base})


@dataclass
class GroundingExperimentConfig:
    """One training run and its evaluation."""

    task: str = "spatial"
    """spatial (boxes, Acc@0.5/0.75/0.9) or temporal (intervals, R@1 IoU=0.3/0.5/0.7)."""
    decoder: str = "regression"
    """Decoder spec (see parse_decoder_spec)."""
    decoder_options: dict = field(default_factory=dict)
    """Extra make_decoder options, on top of the spec's and the net defaults below."""
    backbone: str = "qwen2_5_vl-tiny"
    """Backbone preset (driftkit.backbones.list_presets(); random weights built from a config), or a local
    checkpoint directory, e.g. a VLM pretrained through its text interface (benchmarks/grounding_pretrain.py)."""
    prompt_template: str | None = None
    """How each expression ("{expression}") or query ("{query}") is asked; None = the question template the
    checkpoint was pretrained with, when it records one (driftkit_text_answers.json), else the bare text."""
    mode: str = "full"
    """Backbone training mode: frozen, lora or full (presets are random weights, so full by default)."""
    num_query_tokens: int = 4
    """Query tokens; lm_tokens needs at least T * D of them (4 for boxes)."""
    cond: str = "context"
    """Which backbone features the decoder sees (VLMPolicy cond)."""
    hidden_dim: int = 128
    depth: int = 2
    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    seed: int = 0
    """Seed of the weights, the batch order and the decoders' noise (the data stay fixed by data_seed)."""
    data_seed: int = 0
    train_size: int = 2048
    test_size: int = 256
    image_size: int = 64
    """Spatial images' side in pixels."""
    kinds: tuple[str, ...] | None = None
    """Spatial expression kinds (synthetic.SPATIAL_KINDS); None = the generator's default referring mix."""
    max_objects: int | None = None
    """Most objects per image or clip; None = the generator's default (spatial 6, temporal 4)."""
    num_frames: int = 16
    """Temporal clips' frames."""
    frame_size: int = 32
    frame_gap: int = 2
    """Pixels between the frames of the grid image."""
    frame_layout: str = "grid"
    """How a clip reaches the VLM: "grid" (its frames tiled into one image) or "frames" (one image per frame,
    each after its timestamp, actions.frame_labels, as Qwen3-VL reads video)."""
    clip_seconds: float = 16.0
    """Seconds a clip spans: the timestamps' unit in the "frames" layout."""
    input_size: int | None = None
    """Backbone input side in pixels (Backbone image_size); None = the generated image's side (the spatial
    image, or the temporal frame grid) rounded down to the backbone family's patch multiple."""
    eval_batch_size: int = 64
    latency_repeats: int = 10
    """Batch-1 sample() calls timed for latency_ms (0 skips the latency measurement)."""
    device: str = "auto"
    """auto (cuda when available), cpu or cuda."""
    log_every: int = 50
    save_policy: bool = False
    """Also export the trained policy to <out>/policy (Policy.save_pretrained; the checkpoint has it too)."""

    def __post_init__(self):
        from driftkit.backbones import list_presets
        from driftkit.policy.vlm import COND_KINDS

        check_choice("task", self.task, TASKS)
        parse_decoder_spec(self.decoder)
        if self.backbone not in list_presets() and not os.path.isfile(os.path.join(self.backbone, "config.json")):
            raise ValueError(f"got backbone={self.backbone!r}: neither a preset ({list_presets()}) nor a checkpoint "
                             "directory with a config.json")
        check_choice("cond", self.cond, COND_KINDS)
        check_choice("mode", self.mode, ("frozen", "lora", "full"))
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        check_choice("frame_layout", self.frame_layout, FRAME_LAYOUTS)
        check_positive("clip_seconds", self.clip_seconds)
        for name in ("num_query_tokens", "hidden_dim", "depth", "steps", "batch_size", "lr", "train_size",
                     "test_size", "eval_batch_size", "log_every"):
            check_positive(name, getattr(self, name))
        for name in ("warmup_steps", "weight_decay", "grad_clip", "latency_repeats", "seed", "data_seed",
                     "frame_gap"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if self.kinds is not None:
            self.kinds = tuple(self.kinds)
        if self.input_size is not None and not self.is_preset:
            raise ValueError(f"got input_size={self.input_size} with the checkpoint {self.backbone!r}; a checkpoint "
                             "keeps its own image processor's size")
        if self.batch_size > self.train_size:
            raise ValueError(f"got batch_size={self.batch_size} > train_size={self.train_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def is_preset(self) -> bool:
        from driftkit.backbones import list_presets

        return self.backbone in list_presets()

    @property
    def frames_as_images(self) -> bool:
        return self.task == "temporal" and self.frame_layout == "frames"

    def cameras(self) -> tuple[str, ...]:
        """The policy's camera names: the one image, or one per frame."""
        return tuple(frame_cameras(self.num_frames)) if self.frames_as_images else (CAMERA,)

    def backbone_options(self) -> dict:
        """Backbone options the layout needs: the frames' timestamps in the "frames" layout."""
        return {"image_labels": frame_labels(self.num_frames, self.clip_seconds)} if self.frames_as_images else {}

    def prompt(self) -> str:
        """The prompt template of the task's dataset (see prompt_template)."""
        if self.prompt_template is not None:
            return self.prompt_template
        key, field_ = ("box", "{expression}") if self.task == "spatial" else ("interval", "{query}")
        if not self.is_preset:
            from driftkit.grounding.pretrain_model import pretrained_meta

            meta = pretrained_meta(self.backbone)
            if meta and key in meta["questions"]:
                return meta["questions"][key]
        return field_


# ---- data and model -------------------------------------------------------------------------------------
def build_datasets(cfg: GroundingExperimentConfig):
    """(train, test) datasets of the task; the examples depend on data_seed only."""
    from driftkit.grounding import synthetic as syn

    sizes = dict(train_size=cfg.train_size, val_size=0, test_size=cfg.test_size, seed=cfg.data_seed)
    if cfg.max_objects is not None:
        sizes["max_objects"] = cfg.max_objects
    if cfg.task == "spatial":
        kinds = {} if cfg.kinds is None else {"kinds": tuple(cfg.kinds)}
        data = syn.SpatialGroundingConfig(image_size=cfg.image_size, **kinds, **sizes)
        return tuple(syn.SpatialGroundingDataset.from_config(data, s, prompt_template=cfg.prompt())
                     for s in ("train", "test"))
    data = syn.TemporalGroundingConfig(num_frames=cfg.num_frames, frame_size=cfg.frame_size,
                                       max_event_frames=min(6, cfg.num_frames // 3), **sizes)
    return tuple(syn.TemporalGroundingDataset.from_config(data, s, gap=cfg.frame_gap, prompt_template=cfg.prompt())
                 for s in ("train", "test"))


def generated_side(cfg: GroundingExperimentConfig) -> int:
    """Side in pixels of the image the backbone is given: the spatial image, one frame, or the square grid of
    frames."""
    if cfg.task == "spatial":
        return cfg.image_size
    if cfg.frames_as_images:
        return cfg.frame_size
    cols = math.ceil(math.sqrt(cfg.num_frames))
    return cols * cfg.frame_size + (cols - 1) * cfg.frame_gap


def backbone_input_size(cfg: GroundingExperimentConfig) -> int | None:
    """cfg.input_size, or the generated side rounded down to the preset family's patch multiple; None for a
    checkpoint (it keeps its own processor's size)."""
    from driftkit.backbones.families import get_family

    if not cfg.is_preset:
        return None
    if cfg.input_size is not None:
        return cfg.input_size
    multiple = get_family(cfg.backbone.rpartition("-")[0]).patch_multiple
    return max(multiple, generated_side(cfg) // multiple * multiple)


def train_config(cfg: GroundingExperimentConfig, out_dir: str | os.PathLike):
    """The trainer run of an experiment: a VLM policy (no state; T = 1, D = 4 boxes or 2 intervals)."""
    from driftkit.policy import VLMPolicyConfig
    from driftkit.train.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig

    spec = parse_decoder_spec(cfg.decoder)
    horizon, dim = TARGET_SHAPES[cfg.task]
    model = VLMPolicyConfig(
        state_dim=0, horizon=horizon, action_dim=dim, backbone=cfg.backbone, mode=cfg.mode,
        num_query_tokens=cfg.num_query_tokens, cond=cfg.cond, image_size=backbone_input_size(cfg),
        decoder=spec.name, cameras=cfg.cameras(),
        backbone_options={**({"seed": cfg.seed} if cfg.is_preset else {}), **cfg.backbone_options()},
        decoder_options={"net": "expert", "hidden_dim": cfg.hidden_dim, "depth": cfg.depth, **spec.options,
                         **cfg.decoder_options},
    )
    return TrainConfig(
        model=model, data=DataConfig(source="given"),  # run_experiment hands the adapted split to train()
        optim=OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95), grad_clip=cfg.grad_clip,
                          batch_size=cfg.batch_size),
        schedule=ScheduleConfig(steps=cfg.steps, warmup_steps=min(cfg.warmup_steps, cfg.steps - 1)),
        seed=cfg.seed, output_dir=str(out_dir), checkpoint_every=min(cfg.steps, 500), keep_checkpoints=1,
        log_every=cfg.log_every, cpu=resolve_device(cfg.device).type == "cpu", tensorboard=False, progress=False,
    )


def run_experiment(cfg: GroundingExperimentConfig, out_dir: str | os.PathLike, datasets=None) -> dict:
    """Train, evaluate every variant, write <out_dir>/results.json (atomically) and return its content.

    datasets: (train, test) from build_datasets(cfg), to share one copy between runs of a sweep (the examples
    depend on the task, sizes and data_seed only)."""
    out = Path(out_dir)
    start = time.perf_counter()
    train_data, test = datasets if datasets is not None else build_datasets(cfg)
    data_seconds = time.perf_counter() - start
    run = _train_or_resume(train_config(cfg, out), GroundingActions(train_data, frames=cfg.frames_as_images))
    policy = run.policy.eval()
    seconds = time.perf_counter() - start - data_seconds
    training = {"steps": run.step, "seconds": seconds, "final_loss": run.last_loss, "data_seconds": data_seconds,
                "samples_per_s": cfg.steps * cfg.batch_size / max(seconds, 1e-9), "checkpoint": str(run.checkpoint)}
    evaluations = [evaluate(policy, test, cfg.task, v, cfg.seed, cfg.eval_batch_size, cfg.latency_repeats)
                   for v in eval_variants(policy, cfg.decoder)]
    if cfg.save_policy:
        policy.save_pretrained(out / "policy")
    dec = policy.decoder
    results = {
        "task": cfg.task, "decoder": cfg.decoder, "seed": cfg.seed, "config": cfg.to_dict(),
        "decoder_config": {"name": type(dec).name, **dec.config.to_dict()},
        "trainable_parameters": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        "train": training, "evaluations": evaluations, "postprocess": POSTPROCESS,
        "device": str(policy.device), "torch_threads": torch.get_num_threads(),
        "total_seconds": time.perf_counter() - start,
    }
    write_text_atomic(out / "results.json", json.dumps(results, indent=2, default=_jsonable))
    return results


TEXT_LABEL = "text answer (the VLM's own, parsed)"


def run_text_answers(cfg: GroundingExperimentConfig, out_dir: str | os.PathLike, datasets=None) -> dict | None:
    """DRIFT's "Qwen-VL" row: the checkpoint's own greedy text answers on the test split, parsed with its
    family's convention (unparsable ones score IoU 0); no training. None for a preset or a checkpoint that
    records no question templates. Written to <out_dir>/results.json like run_experiment's."""
    from driftkit.grounding.evaluate import EvalVariant
    from driftkit.grounding.pretrain_model import pretrained_meta
    from driftkit.policy import TextPolicy, TextPolicyConfig

    meta = None if cfg.is_preset else pretrained_meta(cfg.backbone)
    if meta is None:
        return None
    start = time.perf_counter()
    _, test = datasets if datasets is not None else build_datasets(cfg)
    device = resolve_device(cfg.device)
    policy = TextPolicy(TextPolicyConfig(backbone=cfg.backbone, mode="frozen", cameras=cfg.cameras(),
                                         answer="box" if cfg.task == "spatial" else "interval",
                                         backbone_options=cfg.backbone_options(),
                                         clip_seconds=meta.get("clip_seconds", 16.0))).to(device).eval()
    ev = evaluate(policy, test, cfg.task, EvalVariant(TEXT_LABEL), cfg.seed, cfg.eval_batch_size, cfg.latency_repeats)
    results = {"task": cfg.task, "decoder": "text", "seed": cfg.seed, "config": cfg.to_dict(), "train": None,
               "evaluations": [ev], "postprocess": POSTPROCESS, "device": str(device),
               "torch_threads": torch.get_num_threads(), "total_seconds": time.perf_counter() - start}
    write_text_atomic(Path(out_dir) / "results.json", json.dumps(results, indent=2, default=_jsonable))
    return results


def _train_or_resume(tcfg, data):
    """Train, continuing from the newest checkpoint of an interrupted run; a finished one is loaded as is."""
    import dataclasses

    from driftkit.policy import load_policy
    from driftkit.train.checkpoint import latest_checkpoint, read_trainer_state
    from driftkit.train.trainer import TrainResult, train

    found = latest_checkpoint(tcfg.output_dir)
    if found is None:
        return train(tcfg, dataset=data)
    state = read_trainer_state(found)
    if state.step < tcfg.schedule.steps:
        return train(dataclasses.replace(tcfg, resume="latest"), dataset=data)
    device = "cpu" if tcfg.cpu else resolve_device("auto")
    return TrainResult(load_policy(found, device=device), state.step, state.last_loss, found, Path(tcfg.output_dir))


def _jsonable(x):
    if isinstance(x, tuple):
        return list(x)
    if isinstance(x, Tensor):
        return x.tolist()
    raise TypeError(f"cannot write {type(x).__name__} to JSON")
