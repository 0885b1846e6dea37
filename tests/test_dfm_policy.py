"""DFMPolicy: discrete flow refinement of an action-bin block inside the VLM's token interface, its caches
(prefix once; adaptive block keys/values), the block's attention pattern, save/load and training."""

from __future__ import annotations

import pytest
import torch
from accelerate.state import AcceleratorState
from vlm_helpers import CAMERA, vlm_obs

from driftkit.backbones.action_block import (BlockCache, block_positions, cached_block_states, full_mask,
                                             uncached_states)
from driftkit.normalize import NormStats
from driftkit.policy import DFMPolicy, DFMPolicyConfig, load_policy
from driftkit.rtc import Inpaint

torch.set_num_threads(1)
PROMPTS = ["pick", "put the red block on the far plate"]  # different lengths: the prefix is left-padded
FAMILIES = ["qwen2_5_vl", "smolvlm", "paligemma"]  # mrope, Llama-style causal, prefix-LM


def make(family="smolvlm", state_dim=3, path="metric", **kw) -> DFMPolicy:
    cfg = DFMPolicyConfig(backbone=f"{family}-tiny", horizon=3, action_dim=2, state_dim=state_dim,
                          cameras=(CAMERA,), image_shape=(3, 64, 64),
                          decoder_options={"num_bins": 16, "steps": 6, "validation_steps": 2, "path": path}, **kw)
    torch.manual_seed(0)  # the time MLP and state projection draw their initial weights from the global RNG
    policy = DFMPolicy(cfg)
    g = torch.Generator().manual_seed(1)
    stats = {"action": NormStats.from_data(torch.randn(64, 3, 2, generator=g))}
    if state_dim:
        stats["observation.state"] = NormStats.from_data(torch.randn(64, state_dim, generator=g))
    policy.set_stats(stats)
    with torch.no_grad():  # a time MLP and state projection that matter (they start at zero)
        policy.time_mlp[-1].weight.normal_(0, 0.5, generator=g)
        if policy.state_proj is not None:
            policy.state_proj.weight.normal_(0, 0.5, generator=g)
    return policy.eval()


def refine(policy, obs, **kw):
    return policy.refine(obs, num_samples=2, generator=torch.Generator().manual_seed(0), record=True, **kw)


# ---- caches ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("path", ["metric", "mask"])
def test_prefix_cached_refinement_equals_the_uncached_pass_at_every_step(family, path):
    """cache="prefix" (prefix keys/values once, rows repeated for K samples) against cache="none" (one pass over
    prefix + block per step). Mutations caught: the block mask ignoring the prefix's left padding, PaliGemma's
    prefix made causal in the full pass (or Qwen's bidirectional), the cache's rows repeated tile-wise instead of
    row-wise, the t slot or state shift left out of one path."""
    policy, obs = make(family, path=path), vlm_obs(PROMPTS, state_dim=3)
    exact, cached = refine(policy, obs, cache="none"), refine(policy, obs, cache="prefix")
    assert len(exact.stats.trace) == len(cached.stats.trace) == policy.nfe() == 8
    for step, (a, b) in enumerate(zip(exact.stats.trace, cached.stats.trace)):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=0, msg=f"step {step}")
    assert torch.equal(exact.tokens, cached.tokens)
    assert cached.stats.full_passes == cached.stats.passes == 8


def test_adaptive_cache_refreshed_every_step_is_exact():
    """refresh_every=1 runs the whole block on every call. Mutation caught: the refresh test off by one
    (calls % r == 1), which makes the first call read a posterior that was never computed."""
    policy, obs = make(), vlm_obs(PROMPTS, state_dim=3)
    exact, adaptive = refine(policy, obs, cache="prefix"), refine(policy, obs, cache="adaptive", refresh_every=1)
    for a, b in zip(exact.stats.trace, adaptive.stats.trace):
        torch.testing.assert_close(b, a, atol=0, rtol=0)
    assert adaptive.stats.full_passes == 8


def test_adaptive_cache_with_sparse_refresh_stays_close_and_does_less_work():
    """refresh_every=4, one row: measured on the tiny smolvlm (seed 0) 100 % identical tokens and a largest
    per-step posterior gap of about 9e-3 against exact refinement; the bounds leave room. Mutations caught:
    the changed slots' keys/values written at the wrong cache columns (no prefix offset: the prefix is
    overwritten), the new logits scattered to the wrong positions, every call counted as a full pass."""
    policy, obs = make(), vlm_obs(PROMPTS[:1], state_dim=3)
    run = lambda **kw: policy.refine(obs, generator=torch.Generator().manual_seed(0), record=True, **kw)  # noqa
    exact, adaptive = run(cache="prefix"), run(cache="adaptive", refresh_every=4)
    same = (exact.tokens == adaptive.tokens).float().mean().item()
    gap = max((a - b).abs().max().item() for a, b in zip(exact.stats.trace, adaptive.stats.trace))
    assert same >= 0.8 and gap < 0.05, (same, gap)
    s = adaptive.stats
    assert s.calls == 8 and s.full_passes == 2  # calls 0 and 4
    assert s.slots_run < s.calls * policy.slots


def test_changed_slots_over_the_cache_are_close_to_an_exact_pass():
    """One partial pass: after a full pass over block A, block B differs in two slots; running only the t slot
    and those two over the cache must land much closer to the exact states of B than reusing A's states does
    (the gap left is the other slots' stale deeper keys/values). Mutation caught: index ignored, so the three
    new keys/values overwrite slots 0..2 instead of 0, 2, 5."""
    policy = make()
    bb = policy.backbone
    with torch.no_grad():
        prefix = bb.encode_prefix([o for o in vlm_obs(PROMPTS)[CAMERA]], PROMPTS)
        inputs, s = prefix.inputs, policy.slots
        mask, pos = inputs.attention_mask[:, :inputs.prefix_len].bool(), block_positions(inputs, s)
        g = torch.Generator().manual_seed(3)
        a = torch.randn(2, s, bb.hidden_size, generator=g)
        b = a.clone()
        b[:, [2, 5]] += torch.randn(2, 2, bb.hidden_size, generator=g)
        cache = BlockCache(prefix, s)
        old = cached_block_states(bb, cache, a, pos, mask)
        exact = uncached_states(bb, inputs, b)[:, inputs.prefix_len:]
        slots = torch.tensor([[0, 2, 5]] * 2)
        part = cached_block_states(bb, cache, b[:, slots[0]], pos[..., slots[0]], mask, index=slots)
    stale = (old[:, slots[0]] - exact[:, slots[0]]).abs().max()
    assert (part - exact[:, slots[0]]).abs().max() < 0.05 * stale


# ---- the attention pattern --------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_the_block_is_bidirectional_and_the_prefix_does_not_see_it(family):
    """Changing the last block input changes the first block position's state (full attention in the block),
    and leaves the prefix states equal to the family's own prefix pass (encode_prefix) at every real token.
    Mutations caught: a causal block, block columns open to prefix rows."""
    bb = make(family).backbone
    images = [o for o in vlm_obs(PROMPTS)[CAMERA]]
    with torch.no_grad():
        inputs, prefix = bb.prepare(images, PROMPTS), bb.encode_prefix(images, PROMPTS)
        embeds = torch.randn(2, 5, bb.hidden_size, generator=torch.Generator().manual_seed(0))
        changed = embeds.clone()
        changed[:, -1] += 1.0
        one, two = uncached_states(bb, inputs, embeds), uncached_states(bb, inputs, changed)
    l, real = inputs.prefix_len, inputs.attention_mask[:, :inputs.prefix_len].bool()
    assert (one[:, l] - two[:, l]).abs().max() > 1e-4
    torch.testing.assert_close(one[:, :l][real], two[:, :l][real], atol=0, rtol=0)
    torch.testing.assert_close(one[:, :l][real], prefix.hidden[real], atol=2e-5, rtol=0)


def test_full_mask_layout():
    """An oracle on a 2-row prefix mask (row 0 left-padded by one): causal prefix, blind to the block."""
    prefix = torch.tensor([[False, True, True], [True, True, True]])
    allowed = full_mask(prefix, 2, prefix_lm=False, dtype=torch.float32)[:, 0] == 0
    assert allowed[0, 1].tolist() == [False, True, False, False, False]
    assert allowed[1, 2].tolist() == [True, True, True, False, False]
    assert allowed[0, 3].tolist() == [False, True, True, True, True]  # a block row: real prefix + whole block
    lm = full_mask(prefix, 2, prefix_lm=True, dtype=torch.float32)[:, 0] == 0
    assert lm[1, 0].tolist() == [True, True, True, False, False]


def test_bins_are_the_lm_head_rows_lm_tokens_reads():
    """The bin ids index the same LM-head rows as Backbone.lm_head_rows (the lm_tokens decoder's)."""
    policy = make()
    weight, _ = policy.backbone.lm_head_rows(16, layout="openvla")
    head = policy.backbone.model.get_output_embeddings().weight
    assert torch.equal(head[policy.bin_ids], weight)


# ---- persistence and training ----------------------------------------------------------------------------------
def test_save_load_gives_the_same_actions(tmp_path):
    policy, obs = make(path="mask"), vlm_obs(PROMPTS, state_dim=3)
    with torch.no_grad():
        policy.mask_embed.add_(1.0)  # a trained [MASK] embedding must travel with the weights
    policy.save_pretrained(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, DFMPolicy) and loaded.config == policy.config
    a = policy.sample(obs, 2, generator=torch.Generator().manual_seed(5))
    b = loaded.sample(obs, 2, generator=torch.Generator().manual_seed(5))
    assert a.shape == (2, 2, 3, 2) and torch.equal(a, b)


def test_a_tiny_dfm_policy_trains_through_the_trainer(tmp_path):
    """The toy chunks through smolvlm-tiny, 80 steps. Measured: cross-entropy 1.85 -> 1.29 (mean of the first
    two logged vs the last two, 1.43x). Breaks when the loss stops reaching the LM (head rows, t slot, block states)."""
    from driftkit.train import make_config, read_metrics, train

    AcceleratorState._reset_state(reset_partial_state=True)
    cfg = make_config("toy-vla", [f"output_dir={tmp_path}", "steps=80", "warmup=2", "log_every=10", "progress=false",
                                  "tensorboard=false", "data.toy_size=64", "checkpoint_every=80"])
    model = DFMPolicyConfig(state_dim=8, action_dim=2, horizon=4, backbone="smolvlm-tiny", mode="full",
                            decoder_options={"num_bins": 16})
    import dataclasses

    result = train(dataclasses.replace(cfg, model=model))
    AcceleratorState._reset_state(reset_partial_state=True)
    losses = [row["loss"] for row in read_metrics(tmp_path)]
    assert result.policy.kind == "dfm" and len(losses) == 8
    assert sum(losses[:2]) / 2 > 1.2 * sum(losses[-2:]) / 2, losses


@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_gradients_reach_what_trains(mode):
    """Frozen: the prefix runs without autograd, and the t slot's MLP and state projection still get
    gradients; full: the LM head's bin rows do too. Mutation caught: the block embeddings detached."""
    policy = make(mode=mode).train()
    batch = {**vlm_obs(PROMPTS, state_dim=3), "action": torch.randn(2, 3, 2)}
    policy(batch).loss.backward()
    assert policy.time_mlp[0].weight.grad.abs().sum() > 0 and policy.state_proj.weight.grad.abs().sum() > 0
    head = policy.backbone.model.get_output_embeddings().weight
    assert (head.grad is not None and head.grad[policy.bin_ids].abs().sum() > 0) == (mode == "full")


# ---- bad input -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (dict(num_query_tokens=2), r"num_query_tokens=2"),
    (dict(decoder_options={"hidden_dim": 8}), r"\['hidden_dim'\] do not apply"),
    (dict(decoder_options={"steps": 0}), r"steps=0"),
    (dict(decoder="flow"), r"decoder='flow'"),
    (dict(block_cache="kv"), r"block_cache='kv'"),
    (dict(refresh_every=0), r"refresh_every=0"),
    (dict(bin_layout="middle"), r"bin_layout='middle'"),
    (dict(backbone_options={"layer": -2}), r"layer=-2"),
])
def test_bad_configs_name_the_value(change, message):
    with pytest.raises(ValueError, match=message):
        DFMPolicyConfig(**{"backbone": "smolvlm-tiny", **change})


def test_bad_calls_name_the_value():
    with pytest.raises(ValueError, match=r"bin_layout='centres' puts the bins on special/query token ids"):
        DFMPolicy(DFMPolicyConfig(backbone="smolvlm-tiny", bin_layout="centres", decoder_options={"num_bins": 16}))
    policy, obs = make(), vlm_obs(PROMPTS, state_dim=3)
    with pytest.raises(ValueError, match=r"temperature=0.5"):
        policy.sample(obs, temperature=0.5)
    with pytest.raises(ValueError, match=r"cannot inpaint"):
        policy.sample(obs, inpaint=Inpaint(torch.zeros(2, 3, 2), delay=1, execution_horizon=2))
    with pytest.raises(ValueError, match=r"cache='kv'"):
        policy.refine(obs, cache="kv")
    with pytest.raises(ValueError, match=r"action has shape \[2, 4, 2\].*\[2, 3, 2\]"):
        policy.train()({**obs, "action": torch.zeros(2, 4, 2)})
    with pytest.raises(KeyError, match=r"no 'task' key"):
        policy.sample({CAMERA: obs[CAMERA]})
