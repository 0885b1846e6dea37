"""Backbone assets: save_assets writes everything but the weights, from_assets rebuilds the same
architecture from those files alone, and the original's state_dict then gives bitwise-identical outputs."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from driftkit.backbones import Backbone
from driftkit.backbones.backbone import ASSETS_FILE
from driftkit.backbones.families import FAMILIES as FAMILY_TABLE
from vlm_helpers import FAMILIES, images

PROMPTS = ["pick up the red cube", "go – ünïcode"]


def tiny(family: str, **options) -> Backbone:
    return Backbone.from_preset(f"{family}-tiny", num_query_tokens=3, **options)


def perturb(bb: Backbone) -> None:
    """Move every weight off its seeded initialisation (and LoRA's B off zero), so a rebuild matches only
    if the state_dict carries everything."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in bb.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen).to(p.dtype))


def forbid_sources(monkeypatch) -> None:
    """from_assets must not rebuild from a preset or a checkpoint, nor make the preset tokenizer."""
    def refuse(*args, **kwargs):
        raise AssertionError("from_assets used the backbone's source")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(Backbone, "from_preset", refuse)
    monkeypatch.setattr(Backbone, "from_pretrained", refuse)
    monkeypatch.setattr("driftkit.backbones.backbone.byte_level_tokenizer", refuse)
    for family in FAMILY_TABLE.values():
        for size in family.presets:
            monkeypatch.setitem(family.presets, size, refuse)


def rebuild(bb: Backbone, path, monkeypatch) -> Backbone:
    bb.save_assets(str(path))
    forbid_sources(monkeypatch)
    return Backbone.from_assets(str(path))


def tied(bb: Backbone) -> bool:
    m = bb.model
    return m.get_output_embeddings().weight.data_ptr() == m.get_input_embeddings().weight.data_ptr()


def assert_same_backbone(original: Backbone, rebuilt: Backbone) -> None:
    """Same ids, sizes, mode and inputs; the original's state_dict loads strictly and gives identical outputs."""
    assert rebuilt.config == original.config and rebuilt.family == original.family
    assert rebuilt.query_ids == original.query_ids and rebuilt.special_ids == original.special_ids
    assert rebuilt.base_vocab == original.base_vocab and rebuilt.image_size == original.image_size
    tok, ref = rebuilt.tokenizer, original.tokenizer
    assert tok.get_vocab() == ref.get_vocab() and len(tok) == len(ref)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (ref.pad_token_id, ref.bos_token_id,
                                                                     ref.eos_token_id)
    assert tok(PROMPTS[1]).input_ids == ref(PROMPTS[1]).input_ids
    with torch.no_grad():
        before = rebuilt.encode(images(2), PROMPTS).query
        want = original.encode(images(2), PROMPTS)
    assert not torch.equal(before, want.query), "the rebuild must differ until the weights are loaded"
    rebuilt.load_state_dict(original.state_dict())  # strict: same modules, LoRA adapters included
    assert tied(rebuilt) == tied(original)
    a, b = original.prepare(images(2), PROMPTS), rebuilt.prepare(images(2), PROMPTS)
    for key in ("input_ids", "attention_mask", "position_ids"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert all(torch.equal(b.vision[k], v) for k, v in a.vision.items()) and b.vision.keys() == a.vision.keys()
    with torch.no_grad():
        got = rebuilt.encode(images(2), PROMPTS)
    assert torch.equal(got.query, want.query) and torch.equal(got.prefix, want.prefix)
    for x, y in zip(original.lm_head_rows(16), rebuilt.lm_head_rows(16)):
        assert (x is None and y is None) or torch.equal(x, y)
    trainable = lambda m: [n for n, p in m.named_parameters() if p.requires_grad]  # noqa: E731
    assert trainable(rebuilt) == trainable(original)
    for (n, x), (m, y) in zip(original.model.named_buffers(), rebuilt.model.named_buffers()):
        assert n == m and x.dtype == y.dtype and torch.equal(x, y), n


@pytest.mark.parametrize("family", FAMILIES)
def test_assets_rebuild_every_family_in_frozen_mode(family, tmp_path, monkeypatch):
    bb = tiny(family)
    perturb(bb)
    rebuilt = rebuild(bb, tmp_path, monkeypatch)
    assert_same_backbone(bb, rebuilt)
    if family == "paligemma":
        assert tied(rebuilt), "PaliGemma's LM head must stay tied to its input embedding"
        torch.testing.assert_close(rebuilt.lm_head_rows(8)[0], rebuilt.model.get_input_embeddings().weight[
            rebuilt.base_vocab - 8:rebuilt.base_vocab], rtol=0, atol=0)


def test_assets_hold_no_weights_and_record_the_vocabulary(tmp_path):
    bb = tiny("qwen2_5_vl")
    bb.save_assets(str(tmp_path))
    names = sorted(os.listdir(tmp_path))
    assert {"config.json", ASSETS_FILE, "tokenizer.json"} <= set(names)
    assert not [n for n in names if n.endswith((".safetensors", ".bin", ".pt"))], names
    meta = json.loads((tmp_path / ASSETS_FILE).read_text())
    assert meta["config"] == json.loads(json.dumps(bb.config.to_dict()))  # every field, as JSON keeps it
    assert (meta["base_vocab"], meta["image_size"], meta["query_ids"]) == (bb.base_vocab, 64, bb.query_ids)
    # the tiny vocabulary grew by the query tokens; base_vocab is the size before
    assert bb.model.get_output_embeddings().weight.shape[0] == bb.base_vocab + 3


def test_assets_rebuild_lora_mode_with_the_same_adapters(tmp_path, monkeypatch):
    bb = tiny("smolvlm", mode="lora", lora_rank=2, lora_targets=("q_proj", "v_proj"))
    perturb(bb)  # LoRA's B starts at zero: the adapters now change the outputs
    rebuilt = rebuild(bb, tmp_path, monkeypatch)
    assert any("lora_B" in n for n in rebuilt.state_dict())
    assert_same_backbone(bb, rebuilt)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "paligemma"])
def test_assets_rebuild_a_local_checkpoint_after_it_is_gone(family, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ckpt = tmp_path / "ckpt"
    tiny(family).save_pretrained(str(ckpt))
    bb = Backbone.from_pretrained(str(ckpt), num_query_tokens=3)
    perturb(bb)
    bb.save_assets(str(tmp_path / "assets"))
    shutil.rmtree(ckpt)  # the rebuild may not read the checkpoint
    rebuilt = rebuild(bb, tmp_path / "assets", monkeypatch)
    assert rebuilt.config.source == str(ckpt)
    assert_same_backbone(bb, rebuilt)


@pytest.mark.parametrize("source", ["preset", "checkpoint"])
def test_assets_rebuild_half_precision_buffers_like_the_original(source, tmp_path, monkeypatch):
    """A preset is cast after building (rotary frequencies become bfloat16), a checkpoint is built in
    bfloat16 (they stay float32): the rebuild must match either, or its outputs drift."""
    bb = tiny("qwen2_5_vl", dtype="bfloat16")
    if source == "checkpoint":
        bb.save_pretrained(str(tmp_path / "ckpt"))
        bb = Backbone.from_pretrained(str(tmp_path / "ckpt"), num_query_tokens=3, dtype="bfloat16")
    perturb(bb)
    assert_same_backbone(bb, rebuild(bb, tmp_path / "assets", monkeypatch))


def test_asset_errors_name_the_bad_value(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no {ASSETS_FILE} in"):
        Backbone.from_assets(str(tmp_path))
    bb = tiny("qwen2_vl")
    bb.save_assets(str(tmp_path))
    meta_file = tmp_path / ASSETS_FILE
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps(meta | {"query_ids": [i + 1 for i in meta["query_ids"]]}))
    with pytest.raises(ValueError, match="do not belong together"):
        Backbone.from_assets(str(tmp_path))
    meta_file.write_text(json.dumps(meta | {"format": 99}))
    with pytest.raises(ValueError, match="format=99"):
        Backbone.from_assets(str(tmp_path))
