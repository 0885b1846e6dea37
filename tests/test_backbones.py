"""Backbones: tiny random VLMs of every family read out at query tokens, cached prefixes, training modes,
VLMPolicy (driftkit.policy) end to end with every decoder, persistence, and the LM head as a base predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import driftkit.nets.expert  # noqa: F401  (registers the "expert" net)
from driftkit.backbones import Backbone, list_presets
from driftkit.decoders.registry import DECODERS
from driftkit.normalize import NormStats
from driftkit.policy import VLMPolicy, VLMPolicyConfig, load_policy
from vlm_helpers import CAMERA, FAMILIES, images, vlm_obs

PROMPTS = ["pick up the red cube", "go", "open the drawer", "push"]
T, D = 4, 2




def tiny(family: str, **options) -> Backbone:
    options.setdefault("num_query_tokens", 3)
    return Backbone.from_preset(f"{family}-tiny", **options)


@pytest.mark.parametrize("family", FAMILIES)
def test_features_shapes_and_image_dependence(family):
    bb = tiny(family)
    imgs = images(2)
    feats = bb.encode(imgs, PROMPTS[:2])
    h = bb.hidden_size
    assert feats.query.shape == (2, 3, h)
    assert feats.pooled.shape == (2, 3 * h)
    assert feats.prefix.shape[:2] == feats.prefix_mask.shape and feats.prefix.shape[0] == 2
    # the shorter prompt is left-padded, the longer one is not
    assert feats.prefix_mask[0].all() and not feats.prefix_mask[1].all()
    other = bb.encode(images(2, seed=1), PROMPTS[:2])
    assert (feats.query - other.query).abs().max() > 1e-4, "query states ignore the image"
    same = bb.encode([Image.fromarray(im) for im in imgs], PROMPTS[:2])  # PIL input = array input
    torch.testing.assert_close(same.query, feats.query)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_suffix_pass_matches_full_pass(family):
    bb = tiny(family)
    imgs = images(2)
    full = bb.encode(imgs, PROMPTS[:2])
    prefix = bb.encode_prefix(imgs, PROMPTS[:2])
    once = bb.encode_queries(prefix)
    torch.testing.assert_close(once.query, full.query, atol=1e-5, rtol=0)
    g = 3
    rep = bb.encode_queries(prefix, repeats=g)  # the cache is repeated with batch_repeat_interleave
    assert rep.query.shape[0] == 2 * g
    torch.testing.assert_close(rep.query, full.query.repeat_interleave(g, 0), atol=1e-5, rtol=0)
    torch.testing.assert_close(rep.prefix[::g], full.prefix, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="repeats=2"):
        bb.encode_queries(prefix, repeats=2)  # not a multiple of the 3 copies already made


def test_frozen_mode_trains_only_query_embeddings():
    bb = tiny("qwen2_5_vl", mode="frozen")
    before = {n: p.detach().clone() for n, p in bb.model.named_parameters()}
    q_before = bb.query_embed.detach().clone()
    params = [p for p in bb.parameters() if p.requires_grad]
    assert params == [bb.query_embed]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    bb.encode(images(2), PROMPTS[:2]).query.square().mean().backward()
    opt.step()
    for n, p in bb.model.named_parameters():
        assert torch.equal(p, before[n]), f"frozen weight {n} changed"
    assert not torch.equal(bb.query_embed, q_before)


def test_frozen_policy_gradients_through_the_cached_prefix_match_a_full_pass():
    torch.manual_seed(0)
    policy = policy_for("qwen3_vl", "regression", torch.randn(8, T, D))
    target = torch.randn(2, T, D)
    grads = []
    for feats in (policy.features(images(2), PROMPTS[:2]), policy.backbone.encode(images(2), PROMPTS[:2])):
        policy.zero_grad()
        policy.decoder.loss(policy.condition(feats, None).cond, target).loss.backward()
        grads.append(policy.backbone.query_embed.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_lora_and_full_modes_choose_trainable_weights():
    lora = tiny("smolvlm", mode="lora", lora_rank=2)
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert "query_embed" in names and any("lora_" in n for n in names)
    assert all(n == "query_embed" or "lora_" in n for n in names)
    x = lora.encode(images(1), PROMPTS[:1]).query
    x.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.named_parameters() if "lora_B" in n)
    full = tiny("smolvlm", mode="full")
    assert all(p.requires_grad for p in full.parameters())


def test_query_embedding_swap_uses_the_trainable_rows():
    bb = tiny("paligemma")
    base = bb.encode(images(1), PROMPTS[:1]).query
    with torch.no_grad():
        bb.query_embed.add_(1.0)
    assert (bb.encode(images(1), PROMPTS[:1]).query - base).abs().max() > 1e-3


def test_prompt_format_wraps_every_prompt():
    plain = tiny("qwen3_vl")
    wrapped = tiny("qwen3_vl", prompt_format="User: {prompt}\nAssistant:")
    a, b = plain.prepare(images(1), ["hi"]), wrapped.prepare(images(1), ["hi"])
    assert b.prefix_len == a.prefix_len + len("User: \nAssistant:")
    explicit = plain.prepare(images(1), ["User: hi\nAssistant:"])
    assert torch.equal(b.input_ids, explicit.input_ids)
    with pytest.raises(ValueError, match="prompt_format='no placeholder'"):
        tiny("qwen3_vl", prompt_format="no placeholder")


def test_input_errors_name_the_bad_value():
    bb = tiny("qwen2_5_vl", max_length=20)
    with pytest.raises(ValueError, match=r"prompts\[0\] needs .* > max_length=20"):
        bb.encode(images(1), ["a prompt far too long for twenty tokens"])
    with pytest.raises(TypeError, match=r"images\[1\] has type str"):
        bb.encode([images(1)[0], "cat.png"], PROMPTS[:2])
    with pytest.raises(ValueError, match=r"images\[0\] is 8x8 pixels"):
        bb.encode([np.zeros((8, 8, 3), np.uint8)], PROMPTS[:1])
    with pytest.raises(ValueError, match=r"images\[0\] has shape \[64, 64\]"):
        bb.encode([np.zeros((64, 64), np.uint8)], PROMPTS[:1])
    with pytest.raises(ValueError, match="2 image"):
        bb.encode(images(2), PROMPTS[:1])
    with pytest.raises(ValueError, match="query special tokens"):
        bb.encode(images(1), ["look at <|act_0|>"])
    with pytest.raises(ValueError, match="unknown backbone preset 'llava-tiny'"):
        Backbone.from_preset("llava-tiny")
    with pytest.raises(FileNotFoundError, match="/no/such/ckpt"):
        Backbone.from_pretrained("/no/such/ckpt")
    with pytest.raises(ValueError, match="known families"):
        Backbone.from_pretrained(".", family="llava")
    assert len(list_presets()) >= 2 * len(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_preset_image_size_sets_the_number_of_image_tokens(family):
    small, large = tiny(family), tiny(family, image_size=128)
    assert large.image_size == 128 and large.config.image_size == 128
    n_small = small.encode(images(1), PROMPTS[:1]).prefix.shape[1]
    n_large = large.encode(images(1), PROMPTS[:1]).prefix.shape[1]
    assert n_large > n_small, "a larger input side must give more image tokens"
    rebuilt = Backbone.from_config(large.config)  # the option travels with the saved config
    assert rebuilt.image_size == 128


def test_image_size_errors_name_the_bad_value(tmp_path):
    with pytest.raises(ValueError, match="image_size=100 for paligemma; it must be a multiple of 16"):
        tiny("paligemma", image_size=100)
    with pytest.raises(ValueError, match="image_size=20 for qwen2_5_vl; it must be at least 28"):
        tiny("qwen2_5_vl", image_size=20)
    with pytest.raises(ValueError, match="image_size"):
        tiny("qwen2_5_vl", image_size=0)
    tiny("qwen2_5_vl").save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="image_size=112 for the checkpoint"):
        Backbone.from_pretrained(str(tmp_path), image_size=112)


@pytest.mark.parametrize("family", FAMILIES)
def test_from_pretrained_loads_a_local_checkpoint(family, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bb = tiny(family)
    bb.save_pretrained(str(tmp_path))
    loaded = Backbone.from_pretrained(str(tmp_path), num_query_tokens=3)  # family from config.json
    assert loaded.family.name == family
    with torch.no_grad():
        loaded.query_embed.copy_(bb.query_embed)
    torch.testing.assert_close(loaded.encode(images(2), PROMPTS[:2]).query, bb.encode(images(2), PROMPTS[:2]).query)


def policy_config(family: str, name: str = "flow", mode: str = "frozen", cond: str = "query",
                  **kw) -> VLMPolicyConfig:
    """A VLM policy on the family's tiny preset, read out at T * D query tokens, no state."""
    options = {"net": "expert", "hidden_dim": 32, "depth": 1}
    if name.startswith("residual"):
        options["base"] = "lm_tokens"
    options.update(kw.pop("decoder_options", {}))
    return VLMPolicyConfig(backbone=f"{family}-tiny", mode=mode, num_query_tokens=T * D, cond=cond, decoder=name,
                           decoder_options=options, horizon=T, action_dim=D, state_dim=0, cameras=(CAMERA,), **kw)


def policy_for(family: str, name: str, target: torch.Tensor, **kw) -> VLMPolicy:
    policy = VLMPolicy(policy_config(family, name, **kw))
    policy.set_stats({"action": NormStats.from_data(target)})
    return policy


def seeded_loss(policy: VLMPolicy, batch: dict) -> float:
    """Mean loss on the batch repeated 4 times, over 3 fixed seeds: many draws of noise and flow time, the
    same ones before and after training."""
    big = {CAMERA: batch[CAMERA].repeat(4, 1, 1, 1), "task": batch["task"] * 4,
           "action": batch["action"].repeat(4, 1, 1)}
    total = 0.0
    for seed in range(3):
        torch.manual_seed(seed)
        total += policy(big).loss.item()
    return total / 3


def sample_mean_error(policy: VLMPolicy, batch: dict) -> float:
    """Squared distance from the mean of 16 samples to the demonstration."""
    y = policy.sample(batch, num_samples=16, generator=torch.Generator().manual_seed(0))
    return (y.mean(1) - batch["action"]).square().mean().item()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_decoder_trains_end_to_end(family):
    torch.manual_seed(0)
    target = torch.randn(4, T, D)
    batch = {**vlm_obs(PROMPTS), "action": target}
    for name in sorted(DECODERS):
        torch.manual_seed(1)  # independent of which tests ran before
        policy = policy_for(family, name, target)
        opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
        # The drifting loss is the squared norm of a drift field that moves with the samples, so its value is
        # not monotone early on (sibling repulsion can widen the spread); for drift the samples' mean must
        # approach the demonstration instead.
        measure = sample_mean_error if name == "drift" else seeded_loss
        before = measure(policy, batch)
        for _ in range(20):
            out = policy(batch)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        after = measure(policy, batch)
        assert after < before, f"{family}/{name}: {measure.__name__} {before:.4f} -> {after:.4f}"
        y = policy.sample(vlm_obs(PROMPTS[:2]), num_samples=3)
        assert y.shape == (2, 3, T, D) and torch.isfinite(y).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_gives_identical_samples(family, tmp_path):
    target = torch.randn(8, T, D)
    policy = policy_for(family, "flow", target)
    obs = vlm_obs(PROMPTS[:2])
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    y = policy.sample(obs, num_samples=3, generator=gen())
    policy.save_pretrained(tmp_path)
    loaded = load_policy(tmp_path, kind="vlm")
    assert isinstance(loaded, VLMPolicy) and loaded.config == policy.config
    torch.testing.assert_close(loaded.sample(obs, num_samples=3, generator=gen()), y)
    # Repeating the cache per sample gives the same samples as batching K in the decoder. (The removed
    # VLMPolicy.sample(repeat_cache=True) did this; the same check now runs through the backbone and decoder.)
    images_, prompts, state = policy.inputs(obs)
    prefix = policy.backbone.encode_prefix(images_, prompts)
    c = policy.condition(policy.backbone.encode_queries(prefix, repeats=3), None if state is None else state.repeat_interleave(3, 0))
    rep = policy.decoder.sample(c.cond, 1, generator=gen(), cond_mask=c.mask).view(2, 3, T, D)  # [B * K, ...]
    torch.testing.assert_close(rep, y, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["frozen", "lora"])
def test_save_restores_trained_and_frozen_weights_without_the_preset(mode, tmp_path):
    """Replaces the removed save_pretrained(include_frozen=False): a policy directory now always holds every
    weight (frozen ones included) and rebuilds its backbone from its own assets, so both the trained parts
    and the frozen weights come back from the directory, not from a fresh build of the preset."""
    kw = {"backbone_options": {"lora_rank": 2}} if mode == "lora" else {}
    cfg = policy_config("smolvlm", "regression", mode=mode, **kw)
    policy = VLMPolicy(cfg)
    with torch.no_grad():  # make the trained parts differ from a fresh build
        for name, p in policy.backbone.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        frozen = next(p for p in policy.backbone.model.parameters() if not p.requires_grad and p.dim() == 2)
        frozen.add_(0.1 * torch.randn_like(frozen))  # and one frozen weight, which the preset would not restore
    obs = vlm_obs(PROMPTS[:2])
    y = policy.sample(obs)
    policy.save_pretrained(tmp_path)
    loaded = load_policy(tmp_path)
    fresh = VLMPolicy(cfg)
    fresh.decoder.load_state_dict(policy.decoder.state_dict())
    assert (fresh.sample(obs) - y).abs().max() > 1e-4, "the perturbation must matter"
    torch.testing.assert_close(loaded.sample(obs), y)
    assert [n for n, p in loaded.named_parameters() if p.requires_grad] == \
        [n for n, p in policy.named_parameters() if p.requires_grad], "the mode must survive the round trip"


def test_lm_tokens_starts_as_the_lm_head_on_the_last_vocab_ids():
    policy = VLMPolicy(policy_config("qwen2_5_vl", "lm_tokens", decoder_options={"num_bins": 16,
                                                                                   "normalization": "none"}))
    bb, dec = policy.backbone, policy.decoder
    inputs = bb.prepare(images(2), PROMPTS[:2])
    with torch.no_grad():
        logits = bb.model(**inputs.full_kwargs()).logits[:, inputs.prefix_len:]  # [B, Q, V]
        feats = bb.encode(images(2), PROMPTS[:2])
        ours = dec.logits(policy.condition(feats, None).cond)  # [B, T, D, N]
    v = bb.base_vocab
    torch.testing.assert_close(ours.reshape(2, T * D, 16), logits[..., v - 16:v], atol=1e-5, rtol=0)
    # decoding the LM's own argmax over the bin ids reproduces the decoder's sample
    ids = logits[..., v - 16:v].argmax(-1).view(2, T, D)
    torch.testing.assert_close(policy.sample(vlm_obs(PROMPTS[:2]))[:, 0], dec.bins.decode(ids))
    assert int(dec.vocab_ids(ids, v).min()) >= v - 16


def test_lm_tokens_with_openvlas_layout_reads_the_descending_ids():
    """bin_layout="openvla": class i is id V - 1 - i with V the tokenizer's vocab_size (OpenVLA's mapping, so
    a head trained that way is not mirrored), and N edges give N - 1 intervals. Breaks if the rows are taken
    ascending, from the LM head's padded size, or the bins keep N intervals."""
    policy = VLMPolicy(policy_config("qwen2_5_vl", "lm_tokens", decoder_options={
        "num_bins": 16, "normalization": "none", "bin_layout": "openvla"}))
    bb, dec = policy.backbone, policy.decoder
    v = bb.tokenizer.vocab_size
    ids = torch.arange(v - 1, v - 17, -1)
    inputs = bb.prepare(images(2), PROMPTS[:2])
    with torch.no_grad():
        logits = bb.model(**inputs.full_kwargs()).logits[:, inputs.prefix_len:]  # [B, Q, V]
        ours = dec.logits(policy.condition(bb.encode(images(2), PROMPTS[:2]), None).cond)
    torch.testing.assert_close(ours.reshape(2, T * D, 16), logits[..., ids], atol=1e-5, rtol=0)
    assert dec.vocab_ids(torch.tensor([0, 15]), v).tolist() == [v - 1, v - 16]
    assert dec.bins.width == pytest.approx(2 / 15)


@pytest.mark.parametrize("cond", ["pooled", "query", "context"])
def test_policy_sizes_the_decoder_to_the_cond_width(cond):
    """Replaces the removed check of a hand-built decoder's cond_dim (VLMPolicy(bb, decoder) no longer exists):
    the policy now builds its decoder, so its cond_dim must follow `cond` (Q * H pooled, else H), and the
    features it hands over must have that width; an unknown cond names the value."""
    policy = VLMPolicy(policy_config("qwen2_vl", "regression", cond=cond))
    h, q = policy.backbone.hidden_size, policy.backbone.num_query_tokens
    assert policy.decoder.config.cond_dim == (q * h if cond == "pooled" else h)
    images_, prompts, _ = policy.inputs(vlm_obs(PROMPTS[:2]))
    c = policy.condition(policy.backbone.encode(images_, prompts), None)
    assert (c.mask is not None) == (cond == "context")
    x = c.cond
    assert x.shape[-1] == policy.decoder.config.cond_dim and x.dim() == (2 if cond == "pooled" else 3)
    with pytest.raises(ValueError, match="cond='auto'"):
        policy_config("qwen2_vl", cond="auto")


def test_the_kv_cache_goes_under_the_name_the_model_takes():
    # catches: past_key_values= hard-coded again (FutureWarning here, removed in transformers 5.40), or `cache=`
    # passed to a model whose forward only knows past_key_values
    import inspect
    import warnings

    from driftkit.backbones.cache import cache_kwargs

    class OldModel(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=None):
            return input_ids

    assert cache_kwargs(OldModel(), "kv") == {"past_key_values": "kv"}
    bb = tiny("paligemma")
    takes_cache = "cache" in inspect.signature(type(bb.model).forward).parameters
    assert cache_kwargs(bb.model, "kv") == ({"cache": "kv"} if takes_cache else {"past_key_values": "kv"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        prefix = bb.encode_prefix(images(2), PROMPTS[:2])
        feats = bb.encode_queries(prefix, repeats=2)
        full = bb.encode(images(2), PROMPTS[:2], use_cache=True)
    assert prefix.cache.get_seq_length() == prefix.inputs.prefix_len  # the cache was filled under its new name
    assert full.cache is not None and feats.query.shape[0] == 4


def test_no_old_cache_name_is_read_from_outputs():
    # catches: returned_cache reading `past_key_values` through the output's BC translation, which logs
    # transformers' "`past_key_values`/`cache_params` are deprecated" once per process (it did on every
    # encode without a cache, e.g. each training step)
    import logging

    from driftkit.backbones.cache import returned_cache

    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers").warning_once.cache_clear()  # warn-once must be able to fire here
    logger = logging.getLogger("transformers")
    handler = Collect()
    logger.addHandler(handler)
    try:
        bb = tiny("smolvlm")
        assert bb.encode(images(1), PROMPTS[:1]).cache is None
        assert bb.encode(images(1), PROMPTS[:1], use_cache=True).cache is not None
        assert returned_cache({"past_key_values": "old"}) == "old"  # an older output class keeps its name
    finally:
        logger.removeHandler(handler)
    assert not [m for m in messages if "deprecated" in m], messages
