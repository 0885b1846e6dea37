"""The one policy contract (driftkit.policy.base.Policy) kept by every kind: save -> load reproduces predict
exactly, loading the wrong kind or decoder is refused naming both, bad observations are refused naming the
value, and the VLM policy's projected state reaches the decoder.

Each test names, in a comment, a mutation of src/ it catches."""

from __future__ import annotations

import pytest
import torch

from driftkit.normalize import NormStats
from driftkit.policy import (
    FASTPolicy,
    FASTPolicyConfig,
    Policy,
    StatePolicy,
    StatePolicyConfig,
    VLMPolicy,
    VLMPolicyConfig,
    load_policy,
    make_policy,
)
from driftkit.train.data import SyntheticChunkDataset
from vlm_helpers import CAMERA, camera

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' past_key_values rename

S, T, D, Q = 3, 2, 2, 4  # lm_tokens reads one query state per value: Q >= T * D
PROMPTS = ["pick up the red cube", "go"]
TWO_CAMERAS = ("observation.images.wrist", "observation.images.front")  # not in sorted order on purpose
SMALL = {"hidden_dim": 32, "depth": 1}


def stats(dim: int, seed: int) -> NormStats:
    """Statistics far from the identity, so a policy that forgot them on load predicts differently."""
    g = torch.Generator().manual_seed(seed)
    mean, std = torch.randn(dim, generator=g), torch.rand(dim, generator=g) + 0.5
    return NormStats(mean=mean, std=std, q01=mean - 2 * std, q99=mean + 2 * std)


def perturb(policy: Policy) -> Policy:
    """Move every weight (frozen ones, the zero-initialised state projection and offsets included) off its
    seeded initialisation: a rebuilt policy then matches only if the directory restored them all."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype))
    return policy.eval()


def vlm_config(family="smolvlm", cond="query", decoder="flow", state_dim=S, cameras=(CAMERA,), **kw) -> VLMPolicyConfig:
    options = dict(SMALL)
    if decoder.startswith("residual"):
        options["base"] = "lm_tokens"
    options.update(kw.pop("decoder_options", {}))
    return VLMPolicyConfig(backbone=f"{family}-tiny", num_query_tokens=Q, cond=cond, decoder=decoder,
                           decoder_options=options, horizon=T, action_dim=D, state_dim=state_dim, cameras=cameras,
                           **kw)


def vlm_obs(config: VLMPolicyConfig, b: int = 2, seed: int = 0) -> dict:
    obs = {key: camera(b, seed + i) for i, key in enumerate(config.cameras)}
    obs["task"] = PROMPTS[:b]
    if config.state_dim:
        obs["observation.state"] = torch.randn(b, config.state_dim, generator=torch.Generator().manual_seed(seed))
    return obs


def state_config(image_size: int = 0, decoder: str = "flow") -> StatePolicyConfig:
    return StatePolicyConfig(state_dim=S, action_dim=D, horizon=T, num_tasks=2, task_embed_dim=8, hidden_dim=32,
                             cond_dim=32, decoder=decoder, decoder_options=dict(SMALL), image_size=image_size,
                             cameras=(CAMERA,) if image_size else ())


def state_obs(config: StatePolicyConfig, b: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    obs = {"observation.state": torch.randn(b, S, generator=g), "task_index": torch.arange(b) % 2}
    if config.image_size:
        obs[CAMERA] = torch.rand(b, 3, config.image_size, config.image_size, generator=g)
    return obs


def with_stats(policy: Policy) -> Policy:
    policy.set_stats({"action": stats(D, 1), "observation.state": stats(S, 2)})
    return policy


def assert_round_trip(policy: Policy, obs: dict, path) -> Policy:
    """save -> load gives the same kind, config and (same generator seed) bitwise-identical predict outputs."""
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    want = policy.predict(obs, num_samples=3, generator=gen())
    policy.save_pretrained(path)
    loaded = load_policy(path)
    assert type(loaded) is type(policy) and loaded.config == policy.config
    got = loaded.predict(obs, num_samples=3, generator=gen())
    assert torch.equal(got, want), f"max difference {(got - want).abs().max().item()}"
    return loaded


# ---- 1. save -> load reproduces predict --------------------------------------------------------------------
# Mutations caught: Policy.from_pretrained skipping load_weights (the rebuild keeps its seeded weights, which
# perturb() moved away from); the normaliser buffers left out of model.safetensors (the stats are not the
# identity); a config field dropped or reordered by to_dict/from_dict (e.g. cameras saved sorted: the two-camera
# cases list them unsorted); safetensors' save_file in place of save_model (it refuses PaliGemma's tied LM head);
# the backbone assets not saved or rebuilt with another tokenizer or image size.
@pytest.mark.parametrize("image_size", [0, 16], ids=["state", "state+image"])
def test_state_policy_round_trip(image_size, tmp_path):
    config = state_config(image_size)
    policy = perturb(with_stats(StatePolicy(config)))
    assert_round_trip(policy, state_obs(config), tmp_path / "p")


VLM_CASES = [
    # family,      cond,      decoder,         state_dim, cameras
    ("smolvlm", "pooled", "flow", S, (CAMERA,)),
    ("smolvlm", "query", "drift", 0, (CAMERA,)),
    ("smolvlm", "context", "regression", S, TWO_CAMERAS),
    ("smolvlm", "query", "lm_tokens", 0, (CAMERA,)),
    ("smolvlm", "context", "residual_flow", S, (CAMERA,)),
    ("qwen2_5_vl", "pooled", "regression", 0, TWO_CAMERAS),
    ("qwen2_5_vl", "query", "flow", S, (CAMERA,)),
    ("qwen2_5_vl", "context", "drift", 0, (CAMERA,)),
    ("qwen2_5_vl", "query", "lm_tokens", S, (CAMERA,)),
    ("qwen2_5_vl", "query", "residual_flow", 0, TWO_CAMERAS),
    ("paligemma", "query", "lm_tokens", S, (CAMERA,)),  # ties its LM head to the input embeddings
]


@pytest.mark.parametrize("family, cond, decoder, state_dim, cameras", VLM_CASES,
                         ids=[f"{f}-{c}-{d}-S{s}-{len(cams)}cam" for f, c, d, s, cams in VLM_CASES])
def test_vlm_policy_round_trip(family, cond, decoder, state_dim, cameras, tmp_path):
    config = vlm_config(family, cond, decoder, state_dim, cameras)
    policy = perturb(with_stats(make_policy(config)))
    assert isinstance(policy, VLMPolicy) and policy.kind == "vlm"
    loaded = assert_round_trip(policy, vlm_obs(config), tmp_path / "p")
    assert (loaded.state_proj is None) == (state_dim == 0)


def test_fast_policy_round_trip(tmp_path):
    config = FASTPolicyConfig(backbone="qwen2_5_vl-tiny", num_query_tokens=2, cond="query",
                              decoder_options={**SMALL, "steps": 3}, fast_vocab_size=64, fast_scale=5.0,
                              horizon=T, action_dim=D, state_dim=S, cameras=(CAMERA,))
    data = SyntheticChunkDataset(64, config, seed=0)
    policy = perturb(FASTPolicy.for_training(config.with_data(data), data))
    obs = vlm_obs(policy.config)
    obs[CAMERA] = torch.rand(2, *policy.config.image_shape, generator=torch.Generator().manual_seed(0))
    loaded = assert_round_trip(policy, obs, tmp_path / "p")
    assert loaded.head.tokenizer.vocab_size == policy.head.tokenizer.vocab_size
    torch.testing.assert_close(loaded.head.normalizer.q99, policy.head.normalizer.q99, rtol=0, atol=0)
    # the head uses the policy's backbone without registering it again: every weight has one name, so saving
    # has no shared tensors to drop (safetensors warned "Removed shared tensor" for each backbone weight)
    names = list(policy.state_dict())
    assert not [n for n in names if n.startswith("head.backbone.")] and "backbone.query_embed" in names
    assert loaded.head.backbone is loaded.backbone


@pytest.mark.parametrize("kind", ["vlm", "fast"])
def test_for_training_without_a_state(kind):
    """A stateless policy is set up for training on stateless data (no observation.state anywhere), then predicts.
    Mutation caught: for_training asking dataset_stats for its default keys (action and observation.state)
    instead of config.stat_keys(): KeyError on the missing state."""
    config = vlm_config(state_dim=0, decoder="regression")
    if kind == "fast":
        config = FASTPolicyConfig(backbone="qwen2_5_vl-tiny", num_query_tokens=2, fast_vocab_size=64, horizon=T,
                                  action_dim=D, state_dim=0, cameras=(CAMERA,), decoder_options=dict(SMALL))
    data = SyntheticChunkDataset(32, config)
    assert "observation.state" not in data[0]
    cls = VLMPolicy if kind == "vlm" else FASTPolicy
    policy = cls.for_training(config.with_data(data), data)
    obs = {k: v[None] if torch.is_tensor(v) else [v] for k, v in data[0].items()}
    assert policy.predict(obs).shape == (1, T, D)


# ---- 2. another kind or decoder is refused, naming both -------------------------------------------------------
# Mutations caught: the kind check in Policy.from_pretrained removed (the VLM directory would load silently
# under kind="state"), or the decoder check removed (the flow policy would load under decoder="drift"), or
# either message losing the saved or the requested name.
def test_loading_another_kind_or_decoder_names_both(tmp_path):
    VLMPolicy(vlm_config(decoder="flow")).save_pretrained(tmp_path / "vlm")
    StatePolicy(state_config(decoder="flow")).save_pretrained(tmp_path / "state")
    with pytest.raises(ValueError, match=r"holds a 'vlm' policy .* but a 'state' policy was asked for"):
        load_policy(tmp_path / "vlm", kind="state")
    with pytest.raises(ValueError, match=r"holds a 'vlm' policy .* but a 'state' policy was asked for"):
        StatePolicy.from_pretrained(tmp_path / "vlm")  # a subclass asks for its own kind
    with pytest.raises(ValueError, match=r"holds a 'state' policy .* but a 'fast' policy was asked for"):
        FASTPolicy.from_pretrained(tmp_path / "state")
    for where in ("vlm", "state"):
        with pytest.raises(ValueError, match=r"with a 'flow' decoder, but a 'drift' decoder was asked for"):
            load_policy(tmp_path / where, decoder="drift")
    assert load_policy(tmp_path / "vlm", kind="vlm", decoder="flow").kind == "vlm"  # what it holds still loads


# ---- 3. bad observations are refused, naming the value -----------------------------------------------------
def test_vlm_bad_observations_name_the_value():
    policy = VLMPolicy(vlm_config(cameras=TWO_CAMERAS, image_shape=(3, 64, 64))).eval()
    obs = vlm_obs(policy.config)
    policy.predict(obs)  # the well-formed observation passes
    # Mutation: require(obs, key) replaced by obs.get(key) in VLMPolicy.inputs (a None image reaches the check).
    for key in TWO_CAMERAS:
        with pytest.raises(KeyError, match=rf"no '{key}' key .*config.cameras"):
            policy.predict({k: v for k, v in obs.items() if k != key})
    # Mutation: check_batch_shape given the image's own shape instead of config.image_shape (the backbone would
    # resize the 32 px image and predict without complaint).
    small = dict(obs, **{TWO_CAMERAS[1]: torch.rand(2, 3, 32, 32)})
    with pytest.raises(ValueError, match=rf"{TWO_CAMERAS[1]} has shape \[2, 3, 32, 32\], but the policy config "
                                         r"expects \[2, 3, 64, 64\]"):
        policy.predict(small)
    # Mutation: the instruction defaulted to "" when `task` is missing.
    with pytest.raises(KeyError, match=r"no 'task' key \(the language instruction"):
        policy.predict({k: v for k, v in obs.items() if k != "task"})
    # Mutation: check_finite dropped from VLMPolicy.inputs (NaN * the zero projection is NaN: NaN chunks, no error).
    nan = obs["observation.state"].clone()
    nan[1, 2] = float("nan")
    for call in (policy.predict, lambda o: policy({**o, "action": torch.zeros(2, T, D)})):
        with pytest.raises(ValueError, match=r"observation.state contains 1 non-finite value\(s\).*index \(1, 2\)"):
            call(dict(obs, **{"observation.state": nan}))


def test_state_policy_bad_observations_name_the_value():
    policy = StatePolicy(state_config(image_size=16)).eval()
    obs = state_obs(policy.config)
    policy.predict(obs)
    # Mutation: StatePolicy.encode reading the first observation.images.* key even when config.cameras names one.
    with pytest.raises(KeyError, match=rf"no '{CAMERA}' key .*image_size=16"):
        policy.predict({**{k: v for k, v in obs.items() if k != CAMERA}, "observation.images.other": obs[CAMERA]})
    with pytest.raises(ValueError, match=rf"{CAMERA} has shape \[2, 3, 32, 32\], but the policy config expects "
                                         r"\[2, 3, 16, 16\]"):
        policy.predict(dict(obs, **{CAMERA: torch.rand(2, 3, 32, 32)}))
    # Mutation: check_finite dropped from StatePolicy.encode.
    nan = obs["observation.state"].clone()
    nan[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"observation.state contains 1 non-finite value\(s\).*index \(0, 1\)"):
        policy.predict(dict(obs, **{"observation.state": nan}))


def test_every_camera_reaches_the_prediction():
    """Mutation caught: VLMPolicy.inputs reading only config.cameras[0] (or the batch's first image key)."""
    policy = perturb(VLMPolicy(vlm_config(decoder="regression", cameras=TWO_CAMERAS, state_dim=0)))
    obs = vlm_obs(policy.config)
    base = policy.predict(obs)
    for i, key in enumerate(TWO_CAMERAS):
        other = policy.predict(dict(obs, **{key: camera(2, seed=10 + i)}))
        assert (other - base).abs().max() > 1e-5, f"{key} does not reach the prediction"


# ---- 4. the projected state reaches the decoder -------------------------------------------------------------
@pytest.mark.parametrize("cond", ["pooled", "query", "context"])
def test_projected_state_reaches_the_decoder(cond):
    """Before training the zero-initialised projection leaves the prediction blind to the state; after a few
    optimiser steps on chunks that depend on the state alone (one image, one prompt), it is not.

    Mutations caught: nn.init.zeros_ of state_proj removed (the untrained policy already depends on the state);
    the projected state not added in VLMPolicy.condition, or added only for some cond kinds (the trained
    policy still ignores it); state_proj left out of the parameters the optimiser sees."""
    torch.manual_seed(0)
    config = vlm_config(cond=cond, decoder="regression", mode="frozen", state_dim=S)
    policy = VLMPolicy(config)
    b = 8
    g = torch.Generator().manual_seed(0)
    state = torch.randn(b, S, generator=g)
    action = torch.tanh(state[:, :D] * 2.0)[:, None].expand(b, T, D).contiguous()  # a function of the state
    batch = {CAMERA: camera(1).expand(b, -1, -1, -1), "task": [PROMPTS[0]] * b, "observation.state": state,
             "action": action}
    policy.set_stats({"action": NormStats.from_data(action), "observation.state": NormStats.from_data(state)})
    obs = {k: v for k, v in batch.items() if k != "action"}
    a, other = obs, dict(obs, **{"observation.state": state.flip(0)})

    assert torch.equal(policy.predict(a), policy.predict(other)), "an untrained state projection must change nothing"
    with torch.no_grad():
        loss_before = policy(batch).loss.item()
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(15):
        loss = policy(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (policy.predict(a) - policy.predict(other)).abs().max() > 1e-3, "the trained policy ignores the state"
    assert policy.state_proj.weight.abs().max() > 0
    with torch.no_grad():
        assert policy(batch).loss.item() < loss_before  # it learnt something, not only moved


@pytest.mark.parametrize("family", ["smolvlm", "qwen2_5_vl"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(family):
    """Recomputing activations in the backward pass changes memory, not maths: the same loss and gradients as
    without it. Breaks when the option does not reach the model (the flag is then a no-op that this test cannot
    see, so it also checks the model reports checkpointing on) or when checkpointing drops a gradient path."""
    def loss_and_grads(checkpointing: bool):
        torch.manual_seed(0)
        policy = make_policy(vlm_config(family, cond="context", decoder="regression", mode="full",
                                        gradient_checkpointing=checkpointing))
        with_stats(policy).train()
        obs = vlm_obs(policy.config)
        batch = {**obs, "action": torch.randn(2, T, D, generator=torch.Generator().manual_seed(1))}
        loss = policy(batch).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        return policy, loss.item(), grads

    plain, loss_a, grads_a = loss_and_grads(False)
    ckpt, loss_b, grads_b = loss_and_grads(True)
    assert ckpt.backbone.model.is_gradient_checkpointing and not plain.backbone.model.is_gradient_checkpointing
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert grads_a.keys() == grads_b.keys() and any("backbone.model" in n for n in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("decoder", ["flow", "residual_flow"])
def test_prefix_padding_reaches_the_decoder_as_a_mask(decoder):
    """Prompts of different lengths are left-padded in a batch; with cond="context" the padding goes to the
    decoder as cond_mask, so each row predicts what it predicts alone (where nothing is padded). Breaks when
    the policy stops passing the mask: the expert then attends the padded positions' hidden states."""
    torch.manual_seed(0)
    policy = with_stats(perturb(make_policy(vlm_config(cond="context", decoder=decoder))))
    obs = vlm_obs(policy.config)
    assert obs["task"][0] != obs["task"][1] and len(obs["task"][0]) != len(obs["task"][1])
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    both = policy.predict(obs, generator=g(), temperature=0.0)
    for i in range(2):
        alone = {k: v[i:i + 1] for k, v in obs.items()}
        torch.testing.assert_close(policy.predict(alone, generator=g(), temperature=0.0), both[i:i + 1],
                                   atol=1e-4, rtol=0)
