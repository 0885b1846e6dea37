"""Grounding experiments: train a VLMPolicy on a synthetic grounding benchmark, score it on the test split.

    cfg = GroundingExperimentConfig(task="spatial", decoder="residual_flow[regression]", steps=1500, seed=0)
    results = run_experiment(cfg, "runs/spatial-rf")      # also written to runs/spatial-rf/results.json
    results["evaluations"][0]["metrics"]                  # {"Acc@0.5": .., "Acc@0.75": .., "Acc@0.9": .., "mIoU": ..}

Decoder specs name a registered decoder, and for residual decoders their base in brackets:
"residual_flow[lm_tokens]" is residual_flow with base="lm_tokens". Every decoder reads the same backbone
features (cond="context": prefix and query states, through the cross-attending "expert" net; lm_tokens reads
its values off the query states with the VLM's LM head rows).

Evaluation takes one sample per query. Predictions are clipped to [0, 1] and each (start, end) / (x1, x2) /
(y1, y2) pair is sorted before scoring, so an out-of-range or flipped prediction is repaired rather than
counted as a miss; how many needed it is reported (num_clipped, num_reordered). Decoders that sample at a
positive temperature by default (flow, residual_*) are also scored at temperature 0 from the same weights,
and residual decoders also by their base head alone ("base"), so refinement is compared with its own base on
identical features.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from driftkit.errors import check_choice, check_positive
from driftkit.grounding.metrics import score_boxes, score_moments

TASKS = ("spatial", "temporal")
TARGET_SHAPES = {"spatial": (1, 4), "temporal": (1, 2)}
DECODER_SPECS = ("regression", "lm_tokens", "flow", "residual_flow[regression]", "residual_flow[lm_tokens]",
                 "residual_drift")
"""The specs the benchmark sweeps; any registered decoder (and residual_*[base]) is accepted."""
RESIDUAL = ("residual_flow", "residual_drift")
POSTPROCESS = ("predictions clipped to [0, 1], then each (start, end) / (x1, x2) / (y1, y2) pair sorted "
               "ascending, before scoring")
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
    """Backbone preset (driftkit.backbones.list_presets(); random weights built from a config)."""
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
    """Temporal clips' frames, all tiled into one grid image."""
    frame_size: int = 32
    frame_gap: int = 2
    """Pixels between the frames of the grid image."""
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
    """Write the trained policy to <out>/policy (VLMPolicy.save_pretrained)."""

    def __post_init__(self):
        from driftkit.backbones import list_presets
        from driftkit.backbones.policy import COND_KINDS

        check_choice("task", self.task, TASKS)
        parse_decoder_spec(self.decoder)
        check_choice("backbone", self.backbone, list_presets())
        check_choice("cond", self.cond, COND_KINDS)
        check_choice("mode", self.mode, ("frozen", "lora", "full"))
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        for name in ("num_query_tokens", "hidden_dim", "depth", "steps", "batch_size", "lr", "train_size",
                     "test_size", "eval_batch_size", "log_every"):
            check_positive(name, getattr(self, name))
        for name in ("warmup_steps", "weight_decay", "grad_clip", "latency_repeats", "seed", "data_seed",
                     "frame_gap"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if self.kinds is not None:
            self.kinds = tuple(self.kinds)
        if self.batch_size > self.train_size:
            raise ValueError(f"got batch_size={self.batch_size} > train_size={self.train_size}")

    def to_dict(self) -> dict:
        return asdict(self)


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
        return tuple(syn.SpatialGroundingDataset.from_config(data, s) for s in ("train", "test"))
    data = syn.TemporalGroundingConfig(num_frames=cfg.num_frames, frame_size=cfg.frame_size,
                                       max_event_frames=min(6, cfg.num_frames // 3), **sizes)
    return tuple(syn.TemporalGroundingDataset.from_config(data, s, gap=cfg.frame_gap) for s in ("train", "test"))


def generated_side(cfg: GroundingExperimentConfig) -> int:
    """Side in pixels of the image the backbone is given: the spatial image, or the square grid of frames."""
    if cfg.task == "spatial":
        return cfg.image_size
    cols = math.ceil(math.sqrt(cfg.num_frames))
    return cols * cfg.frame_size + (cols - 1) * cfg.frame_gap


def backbone_input_size(cfg: GroundingExperimentConfig) -> int:
    """cfg.input_size, or the generated side rounded down to the preset family's patch multiple."""
    from driftkit.backbones.families import get_family

    if cfg.input_size is not None:
        return cfg.input_size
    multiple = get_family(cfg.backbone.rpartition("-")[0]).patch_multiple
    return max(multiple, generated_side(cfg) // multiple * multiple)


def build_policy(cfg: GroundingExperimentConfig, train_targets: Tensor):
    """A VLMPolicy with the spec's decoder, its normaliser fitted on the training targets [N, T, D]."""
    from driftkit.backbones import Backbone, VLMPolicy
    from driftkit.decoders import make_decoder

    spec = parse_decoder_spec(cfg.decoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        backbone = Backbone.from_preset(cfg.backbone, num_query_tokens=cfg.num_query_tokens, mode=cfg.mode,
                                        seed=cfg.seed, image_size=backbone_input_size(cfg))
        options = {"net": "expert", "hidden_dim": cfg.hidden_dim, "depth": cfg.depth, **spec.options,
                   **cfg.decoder_options}
        decoder = make_decoder(spec.name, backbone.hidden_size, TARGET_SHAPES[cfg.task], **options)
        policy = VLMPolicy(backbone, decoder, cond=cfg.cond)
    policy.fit_normalizer(train_targets)
    return policy


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("got device='cuda', but no CUDA device is available")
    return torch.device(name)


# ---- training -----------------------------------------------------------------------------------------------
def train_policy(policy, train, cfg: GroundingExperimentConfig, out_dir: Path) -> dict:
    """AdamW with warm-up + cosine (driftkit.train's schedule), seeded batch order; metrics.jsonl in out_dir."""
    from torch.utils.data import DataLoader

    from driftkit.grounding.synthetic import collate_grounding
    from driftkit.train.config import ScheduleConfig
    from driftkit.train.data import ResumableBatchSampler
    from driftkit.train.metrics import MetricsLogger
    from driftkit.train.trainer import lr_factor

    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    schedule = ScheduleConfig(steps=cfg.steps, warmup_steps=min(cfg.warmup_steps, cfg.steps - 1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(schedule))
    sampler = ResumableBatchSampler(len(train), cfg.batch_size, cfg.seed, 0, cfg.steps)
    loader = DataLoader(train, batch_sampler=sampler, collate_fn=collate_grounding)
    logger = MetricsLogger(out_dir, tensorboard=False)
    torch.manual_seed(cfg.seed)  # the decoders' noise
    policy.train()
    start, loss = time.perf_counter(), float("nan")
    try:
        for step, batch in enumerate(loader, start=1):
            out = policy.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            loss = out.loss.item()
            if step % cfg.log_every == 0 or step == cfg.steps:
                logger.log(step, {**out.metrics, "loss": loss, "lr": scheduler.get_last_lr()[0]})
    finally:
        logger.close()
    policy.eval()
    seconds = time.perf_counter() - start
    return {"steps": cfg.steps, "seconds": seconds, "final_loss": loss,
            "samples_per_s": cfg.steps * cfg.batch_size / max(seconds, 1e-9)}


# ---- evaluation ---------------------------------------------------------------------------------------------
@dataclass
class EvalVariant:
    """How predictions are drawn from one trained policy."""

    label: str
    temperature: float | None = None
    """Sampling temperature override (None = the decoder's own)."""
    base_only: bool = False
    """Residual decoders: the base head's prediction without refinement."""


def eval_variants(policy, spec: str) -> list[EvalVariant]:
    dec = policy.decoder
    variants = [EvalVariant(spec)]
    if getattr(dec.config, "temperature", 0.0) > 0:
        variants.append(EvalVariant(f"{spec} T=0", temperature=0.0))
    if hasattr(dec, "base_prediction"):
        variants.append(EvalVariant(f"{spec} base", base_only=True))
    return variants


@contextmanager
def _temperature(decoder, value: float | None):
    old = getattr(decoder.config, "temperature", None)
    if value is not None:
        decoder.config.temperature = value
    try:
        yield
    finally:
        if value is not None:
            decoder.config.temperature = old


@torch.no_grad()
def predict(policy, images, prompts, variant: EvalVariant, generator=None) -> Tensor:
    """One prediction per query, [B, D] in target units (before clipping)."""
    with _temperature(policy.decoder, variant.temperature):
        if not variant.base_only:
            return policy.sample(images, prompts, num_samples=1, generator=generator)[:, 0, 0]
        dec = policy.decoder
        cond = policy.condition(policy.backbone.encode_queries(policy.backbone.encode_prefix(images, prompts)))
        return dec.normalizer.unnormalize(dec.base_prediction(cond))[:, 0]


def postprocess(pred: Tensor) -> tuple[Tensor, int, int]:
    """pred [N, 2k] laid out [lo_1..lo_k, hi_1..hi_k] -> (clipped and sorted [N, 2k], rows clipped, rows
    reordered)."""
    clipped = pred.clamp(0.0, 1.0)
    k = pred.shape[-1] // 2
    lo, hi = clipped[:, :k], clipped[:, k:]
    fixed = torch.cat([torch.minimum(lo, hi), torch.maximum(lo, hi)], dim=-1)
    return fixed, int((clipped != pred).any(-1).sum()), int((lo > hi).any(-1).sum())


def constant_baseline(train, test, task: str) -> dict:
    """Metrics of predicting the training targets' mean for every query: what ignoring image and text scores."""
    score = score_boxes if task == "spatial" else score_moments
    gt = test.targets()  # [N, 1, D]
    scores = score(train.targets().mean(0, keepdim=True).expand_as(gt), gt)
    return dict(zip(scores.columns(), scores.percentages()))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(policy, test, cfg: GroundingExperimentConfig, variant: EvalVariant) -> dict:
    """Scores, NFE and timings of one variant on the test split."""
    from driftkit.grounding.synthetic import collate_grounding

    device = policy.backbone.device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    preds, gts = [], []
    _sync(device)
    start = time.perf_counter()
    for i in range(0, len(test), cfg.eval_batch_size):
        batch = collate_grounding([test[j] for j in range(i, min(i + cfg.eval_batch_size, len(test)))])
        preds.append(predict(policy, batch["images"], batch["prompts"], variant, generator).float().cpu())
        gts.append(batch["target"][:, 0])
    _sync(device)
    ms = 1000 * (time.perf_counter() - start) / len(test)
    pred, num_clipped, num_reordered = postprocess(torch.cat(preds))
    score = score_boxes if cfg.task == "spatial" else score_moments
    scores = score(pred, torch.cat(gts))
    dec = policy.decoder
    return {
        "label": variant.label, "temperature": variant.temperature, "base_only": variant.base_only,
        "metrics": dict(zip(scores.columns(), scores.percentages())), "scores": scores.to_dict(),
        "nfe": dec.base.nfe() if variant.base_only else dec.nfe(), "ms_per_prediction": ms,
        "eval_batch_size": cfg.eval_batch_size, "latency_ms": _latency(policy, test, cfg, variant),
        "num_clipped": num_clipped, "num_reordered": num_reordered,
    }


def _latency(policy, test, cfg, variant) -> float | None:
    """Median ms of one batch-1 prediction (image + prompt to box), after two warm-up calls."""
    if not cfg.latency_repeats:
        return None
    item, device = test[0], policy.backbone.device
    times = []
    for i in range(cfg.latency_repeats + 2):
        _sync(device)
        start = time.perf_counter()
        predict(policy, [item["images"]], [item["prompts"]], variant)
        _sync(device)
        times.append(time.perf_counter() - start)
    times = sorted(times[2:])
    return 1000 * times[len(times) // 2]


# ---- the whole run -------------------------------------------------------------------------------------------
def run_experiment(cfg: GroundingExperimentConfig, out_dir: str | os.PathLike, datasets=None) -> dict:
    """Train, evaluate every variant, write <out_dir>/results.json (atomically) and return its content.

    datasets: (train, test) from build_datasets(cfg), to share one copy between runs of a sweep (the examples
    depend on the task, sizes and data_seed only)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train, test = datasets if datasets is not None else build_datasets(cfg)
    data_seconds = time.perf_counter() - start
    policy = build_policy(cfg, train.targets()).to(resolve_device(cfg.device))
    training = train_policy(policy, train, cfg, out)
    training["data_seconds"] = data_seconds
    evaluations = [evaluate(policy, test, cfg, v) for v in eval_variants(policy, cfg.decoder)]
    if cfg.save_policy:
        policy.save_pretrained(str(out / "policy"), include_frozen=False)
    dec = policy.decoder
    results = {
        "task": cfg.task, "decoder": cfg.decoder, "seed": cfg.seed, "config": cfg.to_dict(),
        "decoder_config": {"name": type(dec).name, **dec.config.to_dict()},
        "trainable_parameters": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        "train": training, "evaluations": evaluations, "postprocess": POSTPROCESS,
        "device": str(policy.backbone.device), "torch_threads": torch.get_num_threads(),
        "total_seconds": time.perf_counter() - start,
    }
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=_jsonable))
    tmp.replace(out / "results.json")
    return results


def _jsonable(x):
    if isinstance(x, tuple):
        return list(x)
    if isinstance(x, Tensor):
        return x.tolist()
    raise TypeError(f"cannot write {type(x).__name__} to JSON")
