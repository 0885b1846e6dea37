"""TextPolicy (kind "text"): answer-only cross-entropy through the one trainer, greedy answers that parse,
save -> load -> same text, and the export that Backbone.from_pretrained loads like a downloaded model."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from driftkit.backbones import Backbone
from driftkit.grounding.actions import CAMERA
from driftkit.grounding.pretrain import TextGroundingData
from driftkit.grounding.pretrain_model import (
    ModelSize, checkpoint_size, export_checkpoint, init_checkpoint, pretrained_meta, processor_side, resized_checkpoint,
)
from driftkit.grounding.text_answers import text_answers
from driftkit.policy import TextPolicy, TextPolicyConfig, load_policy
from driftkit.policy.text import IGNORE
from driftkit.train import train
from driftkit.train.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig

SIDE = 56
BOXES = [(0.0, 0.25, 0.5, 0.75), (0.5, 0.5, 1.0, 1.0), (0.25, 0.0, 0.75, 0.5), (0.125, 0.125, 0.875, 0.625)]
QUESTIONS = ["Locate the red circle.", "Locate the blue square.", "Locate the small triangle.", "Locate it."]
SIZE = ModelSize(family="qwen2_5_vl", width=48, depth=2, heads=4, kv_heads=2, mlp=96, vision_width=32,
                 vision_heads=2)


def _data() -> TextGroundingData:
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, SIDE, SIDE), generator=g, dtype=torch.uint8) for _ in BOXES]
    answers = [text_answers("qwen2_5_vl").box(b, SIDE, SIDE) for b in BOXES]
    return TextGroundingData(images, QUESTIONS, answers, ["box"] * 4, BOXES)


def _obs(data: TextGroundingData) -> dict:
    items = [data[i] for i in range(len(data))]
    return {CAMERA: torch.stack([it[CAMERA] for it in items]), "task": [it["task"] for it in items]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A from-scratch checkpoint trained through driftkit.train on four answers until it repeats them."""
    root = tmp_path_factory.mktemp("text")
    init = init_checkpoint(root / "init", SIZE, image_size=SIDE)
    cfg = TrainConfig(model=TextPolicyConfig(backbone=str(init), mode="full"), data=DataConfig(source="given"),
                      optim=OptimConfig(lr=3e-3, batch_size=4), schedule=ScheduleConfig(steps=150, warmup_steps=5),
                      output_dir=str(root / "run"), checkpoint_every=150, log_every=1, progress=False,
                      tensorboard=False, cpu=True)
    data = _data()
    result = train(cfg, data)
    losses = [json.loads(line)["loss"] for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    return result.policy.eval(), data, losses, root


def test_loss_falls_and_greedy_answers_parse_to_the_boxes(trained):
    # catches: a loss that does not reach the LM head, or a generation loop that feeds the wrong positions
    policy, data, losses, _ = trained
    assert losses[-1] < 0.2 * losses[0]
    texts = policy.generate(_obs(data))
    assert texts == data.answers
    pred = policy.predict(_obs(data))  # [B, 1, 4] fractions
    assert pred.shape == (4, 1, 4)
    assert torch.allclose(pred, data.targets(), atol=1 / SIDE)


def test_prompt_tokens_carry_no_loss(trained):
    # catches: labels on the image / prompt columns, an off-by-one shift, or padding counted in the mean
    policy, data, _, _ = trained
    obs = _obs(data)
    answers = ["ab", data.answers[0]]  # different lengths: the short row is padded
    images, prompts = policy.inputs({k: v[:2] for k, v in obs.items()})
    seq = policy.sequences(images, prompts, answers)
    l, labelled = seq.prefix_len, seq.labels != IGNORE
    assert not labelled[:, : l - 1].any()
    counts = [len(policy.backbone.tokenizer(a, add_special_tokens=False).input_ids) + 1 for a in answers]
    assert labelled.sum(1).tolist() == counts
    with torch.no_grad():
        logits = policy.backbone.model(**seq.kwargs).logits  # [B, L + S, V]
        ids = seq.kwargs["input_ids"]
        rows, cols = torch.nonzero(labelled, as_tuple=True)
        expected = F.cross_entropy(logits[rows, cols].float(), ids[rows, cols + 1])
        batch = {CAMERA: obs[CAMERA][:2], "task": prompts, "answer": answers}
        assert math.isclose(policy(batch).loss.item(), expected.item(), rel_tol=1e-4)


def test_save_load_same_text(trained, tmp_path):
    policy, data, _, _ = trained
    policy.save_pretrained(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, TextPolicy)
    assert loaded.generate(_obs(data)) == policy.generate(_obs(data))


def test_export_loads_like_a_downloaded_checkpoint(trained, tmp_path):
    # catches: query tokens left in the exported vocabulary, weights not written, answers that change on reload;
    # the image side recorded as a nominal 224 instead of the one trained on (the grounding runner asks in it)
    policy, data, _, _ = trained
    export_checkpoint(policy, tmp_path / "fp32", dtype="float32")
    bb = Backbone.from_pretrained(str(tmp_path / "fp32"))
    assert bb.base_vocab == policy.backbone.base_vocab  # the query rows were dropped before saving
    assert bb.image_size == SIDE and pretrained_meta(tmp_path / "fp32")["image_size"] == SIDE
    reloaded = TextPolicy(TextPolicyConfig(backbone=str(tmp_path / "fp32"), cameras=(CAMERA,)))
    assert reloaded.generate(_obs(data)) == data.answers

    export_checkpoint(policy, tmp_path / "bf16")
    files = {p.name for p in (tmp_path / "bf16").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= files
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    half = TextPolicy(TextPolicyConfig(backbone=str(tmp_path / "bf16"), cameras=(CAMERA,)))
    parsed = half.parse(half.generate(_obs(data)), _obs(data))
    assert not torch.isnan(parsed).any()
    # a second pretraining stage (grounding_pretrain.py --init) reads the sizes back from the export
    assert checkpoint_size(tmp_path / "bf16") == SIZE


def test_a_resized_checkpoint_sees_images_at_the_new_side(tmp_path):
    """A Qwen processor resizes every image to its fixed pixel budget, so a stage at another side needs the
    budget changed (resized_checkpoint). Mutations caught: the budget left as it was (a 112-px image still
    becomes 56 px: 2 x 2 merged tokens), the weights altered, the source overwritten."""
    init = init_checkpoint(tmp_path / "init", SIZE, image_size=SIDE)
    assert processor_side(init) == SIDE
    image = [torch.rand(3, 2 * SIDE, 2 * SIDE)]
    before = Backbone.from_pretrained(str(init)).prepare(image, ["x"]).vision["image_grid_thw"].tolist()
    big = resized_checkpoint(init, tmp_path / "big", 2 * SIDE)
    assert processor_side(big) == 2 * SIDE and processor_side(init) == SIDE
    bb = Backbone.from_pretrained(str(big))
    assert bb.image_size == 2 * SIDE and bb.prepare(image, ["x"]).vision["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert before == [[1, 4, 4]]
    assert (big / "model.safetensors").read_bytes() == (init / "model.safetensors").read_bytes()
    (big / "preprocessor_config.json").write_text('{"size": {"shortest_edge": 100, "longest_edge": 900}}')
    with pytest.raises(ValueError, match=r"is not one fixed pixel budget"):
        processor_side(big)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_checkpoint_size_inverts_the_init(family, tmp_path):
    # catches: a width read from the wrong vision field (each family names it differently), or heads / kv heads
    # swapped
    size = ModelSize(family=family, width=48, depth=3, heads=6, kv_heads=3, mlp=80, vision_width=48,
                     vision_depth=1, vision_heads=3)
    assert checkpoint_size(init_checkpoint(tmp_path / family, size, image_size=SIDE)) == size
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        checkpoint_size(tmp_path / "missing")


def test_answers_go_through_the_visual_token_reduction(trained, monkeypatch):
    # catches: generate() not applying the backbone's reduction, or the answer positions not continuing the
    # regathered prefix (keep = 1 through the reduction path must give the same answers)
    from driftkit.backbones.reduce import TokenReduction

    policy, data, _, _ = trained
    want, bb = policy.generate(_obs(data)), policy.backbone
    calls, original = [], bb.reduce_visual
    monkeypatch.setattr(bb, "reduce_visual", lambda inputs: calls.append(1) or original(inputs))
    monkeypatch.setattr(bb, "reduction", TokenReduction(1.0))
    assert policy.generate(_obs(data)) == want and calls == [1]
    monkeypatch.setattr(bb, "reduction", TokenReduction(0.25, merged=0))
    fewer = policy.generate(_obs(data))
    assert len(fewer) == len(want) and fewer != want  # 1 of 4 image tokens: the answers change


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="decoder='flow'"):
        TextPolicyConfig(backbone="qwen2_5_vl-tiny", decoder="flow")
    with pytest.raises(ValueError, match="answer"):
        TextPolicyConfig(backbone="qwen2_5_vl-tiny", answer="mask")
    assert TextPolicyConfig(backbone="qwen2_5_vl-tiny", answer="interval").target_shape == (1, 2)


def test_pretrain_preset_is_a_text_policy_on_given_data():
    from driftkit.train.config import make_config

    cfg = make_config("grounding-pretrain", ["model.backbone=/some/dir", "model.image_size=null"])
    assert cfg.model.kind == "text" and cfg.data.source == "given" and cfg.model.backbone == "/some/dir"
