"""The layer-wise expert (driftkit.nets.layerwise) and cond="cache" of the VLM policy.

Oracles: (1) the policy's LayerCache holds exactly the keys/values the VLM cached at each layer read, and
packing round-trips; (2) the net equals its attention written out per sample on the cache repeated S times;
(3) every net-based decoder gives the same loss, gradients and samples as a twin that repeats cond per
sample; (4) on a tiny VLA every decoder trains and samples, gradients reach the VLM in full mode (only the
layers read and below) and never leave the decoder side in frozen mode; save -> load gives the same actions;
(5) a VLM truncated to its first layers (num_layers) caches exactly the whole model's first layers.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_shared_prefix import close, decoder, prefix_mask, repeating_twin, run
from vlm_helpers import CAMERA, FAMILIES, images, vlm_obs

import driftkit.decoders.lm_tokens  # noqa: F401  (registers "lm_tokens")
from driftkit import list_decoders
from driftkit.nets import LayerCache, NetSpec, make_net
from driftkit.nets.layerwise import unpack_layers
from driftkit.nets.mlp import sinusoidal_embedding
from driftkit.normalize import NormStats
from driftkit.ops import repeat_samples
from driftkit.policy import Policy, make_policy
from driftkit.policy.vlm import VLMPolicyConfig

T, D, B, L = 3, 2, 3, 8
LAYERS, KV = 2, 6  # packed layers and kv width of the net-level tests: cond_dim = 2 * 2 * 6 = 24
C = 2 * LAYERS * KV
NET_DECODERS = sorted(set(list_decoders()) - {"lm_tokens"})  # lm_tokens reads cond through the LM head, no net


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def spec(in_dim=D, use_time=True) -> NetSpec:
    return NetSpec(cond_dim=C, horizon=T, in_dim=in_dim, out_dim=D, use_time=use_time, hidden_dim=32, depth=LAYERS)


def vla(decoder="flow", mode="full", state_dim=5, **options) -> Policy:
    torch.manual_seed(0)
    cfg = VLMPolicyConfig(backbone=options.pop("backbone", "smolvlm-tiny"), decoder=decoder, horizon=T, action_dim=D,
                          state_dim=state_dim, cameras=(CAMERA,), cond="cache", mode=mode, **options)
    policy = make_policy(cfg)
    stats = lambda d: NormStats(torch.zeros(d), torch.ones(d), q01=-2 * torch.ones(d), q99=2 * torch.ones(d))  # noqa: E731
    policy.set_stats({"action": stats(D), "observation.state": stats(max(state_dim, 1))})
    return policy


def batch(b=2, state_dim=5) -> dict:
    obs = vlm_obs(["pick the cube", "push the red block to the left"][:b], state_dim=state_dim)
    obs["action"] = torch.randn(b, T, D, generator=torch.Generator().manual_seed(2))
    return obs


# ---- 1. the cache the policy hands over is the VLM's -------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layers", ["all", "first_half"])
def test_layer_cache_holds_each_read_layers_cached_keys_and_values(family, layers):
    """Mutations caught: layer i + 1 (or the last layer) read for block i; first_half reading the upper layers;
    keys and values swapped, or flattened over heads in another order, by packed(); the query tokens' columns
    (or a StaticCache's empty slots) left in; the differentiable full-mode pass giving other keys than the
    cached prefix pass."""
    policy = vla(backbone=f"{family}-tiny", cache_layers=layers).eval()
    n = policy.backbone.model.config.get_text_config().num_hidden_layers
    assert policy.cache_layers == (list(range(n)) if layers == "all" else list(range((n + 1) // 2)))
    ims, prompts = images(2), ["pick the cube", "push the red block to the left"]
    with torch.no_grad():
        got = policy.layer_cache(ims, prompts)
        pre = policy.backbone.encode_prefix(ims, prompts)
    l = pre.inputs.prefix_len
    torch.testing.assert_close(got.mask, pre.inputs.attention_mask[:, :l].bool())
    packed = unpack_layers(got.packed(), len(policy.cache_layers))
    for j, i in enumerate(policy.cache_layers):
        k, v = pre.cache.layers[i].keys, pre.cache.layers[i].values  # [B, kv_heads, L, head_dim]
        torch.testing.assert_close(got.keys[j], k)
        torch.testing.assert_close(packed[:, :, j, 0], k.transpose(1, 2).flatten(2))
        torch.testing.assert_close(packed[:, :, j, 1], v.transpose(1, 2).flatten(2))
    policy.train()
    trained = policy.layer_cache(ims, prompts)  # full mode with autograd: one pass over prefix + queries
    assert trained.keys[0].requires_grad
    close(trained.packed().detach(), got.packed(), f"{family}: differentiable pass")


# ---- 2. the net against its maths, written per sample ------------------------------------------------------
def reference(net, cond, x, t, mask):
    """One sample per row of cond; cross-attention as softmax(q k^T / sqrt(d)) v per head, keys masked."""
    h = net.steps[None] + net.x_in(x) + net.t_in(sinusoidal_embedding(t, net.time_dim))[:, None]
    kv = cond.view(*cond.shape[:2], LAYERS, 2, KV)
    for i, block in enumerate(net.blocks):
        if i % 2 == 0:
            y = block.norm_self(h)
            h = h + block.self_attn(y, y, y, need_weights=False)[0]
        y = block.norm_cross(h)
        split = lambda z: z.unflatten(-1, (block.heads, -1)).transpose(1, 2)  # noqa: E731
        q, k, v = split(block.q_proj(y)), split(block.k_proj(kv[:, :, i, 0])), split(block.v_proj(kv[:, :, i, 1]))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
        h = h + block.o_proj((scores.softmax(-1) @ v).transpose(1, 2).flatten(2))
        h = h + block.ff(block.norm_ff(h))
    return net.out(h)


@pytest.mark.parametrize("samples", [1, 4])
@pytest.mark.parametrize("masked", [False, True])
def test_net_equals_per_sample_attention_on_the_repeated_cache(samples, masked):
    """Mutations caught: block i reading another layer's slice; keys and values swapped; the re-projection
    skipped or shared between blocks; self-attention in the odd blocks; the S samples folded sample-major; the
    key mask dropped, inverted or broadcast to the wrong observation."""
    torch.manual_seed(0)
    net = make_net("layerwise_expert", spec()).eval()
    cond, n = torch.randn(B, L, C), B * samples
    x, t = torch.randn(n, T, D), torch.rand(n)
    mask = prefix_mask() if masked else None
    want = reference(net, repeat_samples(cond, samples), x, t, repeat_samples(mask, samples))
    close(net(cond, x, t, cond_mask=mask, samples=samples), want, "layerwise_expert")
    close(net(net.prefix(cond, mask), x, t, samples=samples), want, "layerwise_expert from a Prefix")


def test_masked_positions_are_padding_whatever_they_hold():
    torch.manual_seed(0)
    net = make_net("layerwise_expert", spec()).eval()
    cond, x, t = torch.randn(2, 5, C), torch.randn(2, T, D), torch.rand(2)
    padded = torch.cat([100 * torch.randn(2, 3, C), cond], dim=1)
    keep = torch.cat([torch.zeros(2, 3, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool)], dim=1)
    close(net(padded, x, t, cond_mask=keep), net(cond, x, t), "left padding")
    assert (net(padded, x, t) - net(cond, x, t)).abs().max() > 1e-4


# ---- 3. every decoder shares the cache as it shares any prefix ---------------------------------------------
@pytest.mark.parametrize("name", NET_DECODERS + ["discrete_flow (velocity head)"])
def test_samples_share_the_cache_exactly_as_repeating_it(name):
    """Mutations caught: anything in the net that treats the S samples of one observation differently from S
    copies of its cache (the fold, the mask, the gradient into the shared projection), for every decoder."""
    dec = decoder(name, "layerwise_expert")  # test_shared_prefix's settings: cond_dim 12 = 2 * depth 2 * 3
    g = torch.Generator().manual_seed(1)
    cond, target = torch.randn(B, L, 12, generator=g), torch.randn(B, T, D, generator=g)
    twin = repeating_twin(dec)  # before dec trains: residual_drift keeps a running source std
    got, want = run(dec, cond, prefix_mask(), target), run(twin, cond, prefix_mask(), target)
    for key in ("loss", "cond_grad", "samples", "inpaint"):
        if key in want:
            close(got[key], want[key], f"{name}: {key}")
    for i, (a, b) in enumerate(zip(got["grads"], want["grads"])):
        close(a, b, f"{name}: gradient of parameter {i}")


# ---- 4. on a tiny VLA ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NET_DECODERS)
def test_every_decoder_trains_and_samples_on_the_layer_cache(name):
    policy = vla(name)
    out = policy(batch())
    out.loss.backward()
    assert torch.isfinite(out.loss), name
    expert = [p for n, p in policy.decoder.named_parameters() if "k_proj" in n]
    assert expert and any(p.grad is not None and p.grad.abs().sum() > 0 for p in expert), f"{name}: cache unread"
    policy.eval()
    y = policy.sample(batch(), 3, generator=torch.Generator().manual_seed(0))
    assert y.shape == (2, 3, T, D) and torch.isfinite(y).all()


def grads(policy, names: str) -> list[float]:
    return [0.0 if p.grad is None else p.grad.abs().sum().item() for n, p in policy.backbone.model.named_parameters()
            if names in n]


def test_full_mode_gradients_reach_the_layers_read_and_nothing_above():
    """Mutations caught: the full-mode cache built without autograd (no gradient reaches the VLM); the expert
    reading the top layer under first_half (the top layer's projections then get gradients)."""
    policy = vla("drift", cache_layers="first_half")  # 2 layers: block 0 reads layer 0 only
    assert policy.cache_layers == [0]
    policy(batch()).loss.backward()
    lm = "text_model.layers"  # smolvlm's language model (its vision encoder has layers.<i> too)
    assert sum(grads(policy, f"{lm}.0.self_attn.k_proj")) > 0 and sum(grads(policy, f"{lm}.0.self_attn.v_proj")) > 0
    assert sum(grads(policy, "vision")) > 0, "no gradient reaches the vision tower"
    assert sum(grads(policy, f"{lm}.1.")) == 0, "the unread top layer got gradients"
    assert policy.state_proj.weight.grad.abs().sum() > 0, "the state row is not read"


def test_frozen_mode_runs_the_prefix_without_autograd():
    """Mutation caught: the frozen prefix pass run with autograd (its cache then requires grad through the
    query embeddings' hook, at the memory cost of a full backward graph)."""
    policy = vla("flow", mode="frozen").train()
    layers = policy.layer_cache(images(2), ["pick the cube", "push the red block to the left"])
    assert not any(x.requires_grad for x in (*layers.keys, *layers.values)), "the frozen prefix ran with autograd"
    policy(batch()).loss.backward()
    assert all(p.grad is None for p in policy.backbone.model.parameters())
    assert all(p.grad is not None for p in policy.decoder.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["flow", "drift"])
def test_save_load_gives_the_same_actions(tmp_path, name):
    """Mutations caught: cache_layers or the expert's proportions not rebuilt alike from the saved config;
    the state row's projection (sized by the packed width) not restored."""
    policy = vla(name, cache_layers="first_half")
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))  # so that zero-initialised weights matter too
    policy.eval()
    policy.save_pretrained(tmp_path / "p")
    loaded = Policy.from_pretrained(tmp_path / "p")
    a = policy.sample(batch(), 4, generator=torch.Generator().manual_seed(7))
    b = loaded.sample(batch(), 4, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)


# ---- 5. a truncated VLM (SmolVLA runs only the layers its expert reads) ---------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_num_layers_runs_the_first_layers_exactly(family):
    """A backbone built with num_layers=1 caches the same layer-0 keys/values as the whole model (the first
    layers never see the later ones), holds one layer in its cache and config, and the policy's expert reads it.
    Mutations caught: the last layers kept instead of the first; the config's depth left at the original, so
    caches keep empty layers and a rebuilt model has the dropped ones back."""
    whole, cut = vla(backbone=f"{family}-tiny").eval(), vla(backbone=f"{family}-tiny", backbone_options={
        "num_layers": 1}).eval()
    assert len(whole.cache_layers) > 1 and cut.cache_layers == [0]
    assert cut.backbone.model.config.get_text_config().num_hidden_layers == 1
    ims, prompts = images(2), ["pick the cube", "push the red block to the left"]
    with torch.no_grad():
        a, b = whole.backbone.encode_prefix(ims, prompts), cut.backbone.encode_prefix(ims, prompts)
    assert len(b.cache.layers) == 1
    torch.testing.assert_close(b.cache.layers[0].keys, a.cache.layers[0].keys)
    torch.testing.assert_close(b.cache.layers[0].values, a.cache.layers[0].values)
    assert cut.sample(batch(), 2).shape == (2, 2, T, D)


def test_truncated_policy_saves_and_loads_the_same_actions(tmp_path):
    """Mutations caught: the saved config.json keeping the original depth (the rebuild would have layers the
    state_dict lacks: strict loading fails); truncation refusing a model that is already n layers deep."""
    policy = vla("drift", backbone_options={"num_layers": 1}).eval()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    policy.save_pretrained(tmp_path / "p")
    loaded = Policy.from_pretrained(tmp_path / "p")
    assert len(loaded.backbone.model.model.text_model.layers) == 1
    a = policy.sample(batch(), 3, generator=torch.Generator().manual_seed(7))
    b = loaded.sample(batch(), 3, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)


# ---- 6. bad input and configs --------------------------------------------------------------------------
def test_bad_configs_and_shapes_are_named():
    with pytest.raises(ValueError, match=r"cond_dim=10 must be 2 \* depth \* kv_width with depth=2"):
        make_net("layerwise_expert", NetSpec(cond_dim=10, horizon=T, in_dim=D, out_dim=D, use_time=True, depth=2))
    net = make_net("layerwise_expert", spec())
    with pytest.raises(ValueError, match=r"packed layer cache cond \[N, L, C\] with C=24.*got shape \[3, 24\]"):
        net(torch.randn(3, C), torch.randn(3, T, D), torch.rand(3))
    with pytest.raises(ValueError, match=r"cond='context' with net='layerwise_expert'"):
        VLMPolicyConfig(cond="context", decoder_options={"net": "layerwise_expert"})
    with pytest.raises(ValueError, match=r"cond='cache' with net='expert'"):
        VLMPolicyConfig(cond="cache", decoder_options={"net": "expert"})
    with pytest.raises(ValueError, match=r"lm_tokens with cond='cache'"):
        VLMPolicyConfig(cond="cache", decoder="lm_tokens")
    with pytest.raises(ValueError, match=r"gradient_checkpointing=True with cond='cache'"):
        VLMPolicyConfig(cond="cache", gradient_checkpointing=True)
    with pytest.raises(ValueError, match=r"cache_layers.*'middle'"):
        VLMPolicyConfig(cond="cache", cache_layers="middle")
    with pytest.raises(ValueError, match=r"depth=3 with cond='cache'.*one block per VLM layer read \(1 of 2\)"):
        vla(cache_layers="first_half", decoder_options={"depth": 3})
    with pytest.raises(ValueError, match=r"num_layers=3 for a language model of 2 decoder layers"):
        vla(backbone_options={"num_layers": 3})
    with pytest.raises(ValueError, match=r"num_layers=0"):
        vla(backbone_options={"num_layers": 0})
    k = torch.randn(2, 1, 4, 8)
    with pytest.raises(ValueError, match=r"mask must be \[B, L\] = \[2, 4\] bool"):
        LayerCache((k,), (k,), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"one value tensor per key tensor"):
        LayerCache((k, k), (k,), torch.ones(2, 4, dtype=torch.bool))
