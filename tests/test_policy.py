"""StatePolicy: encoder + any decoder; shape errors, masks, selection, save -> load round trips."""

from __future__ import annotations

import pytest
import torch

from driftkit import NormStats, list_decoders
from driftkit.policy import StatePolicy, StatePolicyConfig, load_policy, save_policy

torch.set_num_threads(1)
S, T, D, TASKS = 6, 4, 2, 3
CAMERA = "observation.images.cam"


def small_config(decoder: str = "flow", **kw) -> StatePolicyConfig:
    opts = {"hidden_dim": 32, "depth": 1}
    if decoder in ("drift", "residual_drift"):
        opts["train_samples"] = 4
    return StatePolicyConfig(state_dim=S, action_dim=D, horizon=T, decoder=decoder, decoder_options=opts,
                        num_tasks=TASKS, task_embed_dim=8, hidden_dim=32, cond_dim=32, **kw)


def make_batch(b: int = 5, seed: int = 0, image_size: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {
        "observation.state": torch.randn(b, S, generator=g),
        "task_index": torch.arange(b) % TASKS,
        "action": torch.randn(b, T, D, generator=g),
        "action_is_pad": torch.zeros(b, T, dtype=torch.bool),
    }
    if image_size:
        batch[CAMERA] = torch.rand(b, 3, image_size, image_size, generator=g)
    return batch


@pytest.mark.parametrize("decoder", sorted(list_decoders()))
def test_every_decoder_trains_through_the_encoder(decoder):
    torch.manual_seed(0)
    policy = StatePolicy(small_config(decoder))
    policy.set_stats({"action": NormStats(mean=torch.zeros(D), std=torch.ones(D), q01=-2 * torch.ones(D),
                                          q99=2 * torch.ones(D)),
                      "observation.state": NormStats(torch.zeros(S), torch.ones(S), -torch.ones(S), torch.ones(S))})
    out = policy(make_batch())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in policy.encoder.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached the encoder"
    chunk = policy.predict(make_batch(), num_samples=2)
    assert chunk.shape == (5, T, D) and torch.isfinite(chunk).all()


def test_state_shape_mismatch_names_both_shapes():
    policy = StatePolicy(small_config())
    batch = make_batch()
    batch["observation.state"] = torch.randn(5, S + 1)
    with pytest.raises(ValueError, match=rf"\[5, {S + 1}\].*\['B', {S}\]"):
        policy(batch)
    batch = make_batch()
    batch["action"] = torch.randn(5, T + 1, D)
    with pytest.raises(ValueError, match=rf"action has shape \[5, {T + 1}, {D}\].*\[5, {T}, {D}\]"):
        policy(batch)


def test_bad_task_index_and_missing_keys_are_named():
    policy = StatePolicy(small_config())
    batch = make_batch()
    batch["task_index"] = torch.tensor([0, 1, 2, 7, 0])
    with pytest.raises(ValueError, match=r"task_index=7.*\[0, 3\)"):
        policy(batch)
    with pytest.raises(KeyError, match="task_index"):
        policy({k: v for k, v in make_batch().items() if k != "task_index"})
    with pytest.raises(KeyError, match="observation.state"):
        policy({"action": torch.zeros(2, T, D)})


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"decoder": "nope"}, "unknown decoder 'nope'"),
        ({"state_dim": 0}, "state_dim=0"),
        ({"image_size": 30}, "image_size=30"),
        ({"decoder_options": [1]}, r"decoder_options=\[1\]"),
    ],
)
def test_config_errors_name_the_bad_value(kw, message):
    with pytest.raises((ValueError, TypeError), match=message):
        StatePolicyConfig(**kw)


def test_padded_actions_do_not_change_the_loss():
    torch.manual_seed(0)
    policy = StatePolicy(small_config("regression"))
    batch = make_batch()
    batch["action_is_pad"][:, -2:] = True
    loss = policy(batch).loss
    batch["action"][:, -2:] = 1e3  # garbage past the episode end
    assert torch.equal(policy(batch).loss, loss)
    batch["action"][:, 0] += 1.0
    assert not torch.equal(policy(batch).loss, loss)


def test_state_statistics_normalise_the_encoder_input():
    torch.manual_seed(0)
    policy = StatePolicy(small_config("regression"))
    obs = make_batch()
    before = policy.predict(obs)
    shift = torch.full((S,), 5.0)
    policy.set_stats({"action": NormStats(torch.zeros(D), torch.ones(D), -torch.ones(D), torch.ones(D)),
                      "observation.state": NormStats(shift, torch.ones(S), shift - 1, shift + 1)})
    obs_shifted = dict(obs, **{"observation.state": obs["observation.state"] + shift})
    torch.testing.assert_close(policy.predict(obs_shifted), before)


def test_selection_returns_one_of_the_samples():
    selection = pytest.importorskip("driftkit.selection")
    torch.manual_seed(0)
    policy = StatePolicy(small_config("flow"))
    obs = make_batch()
    samples = policy.decoder.sample(policy.encode(obs).cond, 6, generator=torch.Generator().manual_seed(1))
    for select in ("keystone", "medoid"):
        chunk = policy.predict(obs, num_samples=6, select=select, generator=torch.Generator().manual_seed(1))
        assert chunk.shape == (5, T, D)
        dist = (samples - chunk[:, None]).flatten(2).abs().amax(-1)  # [B, K]
        assert (dist.min(-1).values < 1e-6).all(), f"{select} returned a chunk that is not one of the samples"
    expected = selection.medoid(samples).chunk
    got = policy.predict(obs, num_samples=6, select="medoid", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="select='best'"):
        policy.predict(obs, select="best")


@pytest.mark.parametrize("cameras", [(), ("cam",)])
def test_image_observations_reach_the_cnn(cameras):
    """cameras=(): the policy reads the observation's first `observation.images.*` key; ("cam",): that one."""
    torch.manual_seed(0)
    policy = StatePolicy(small_config("regression", image_size=16, cameras=cameras))
    out = policy(make_batch(image_size=16))
    out.loss.backward()
    assert policy.encoder.image_net.convs[0].weight.grad.abs().sum() > 0
    with pytest.raises(KeyError, match="observation.images"):
        policy(make_batch())
    with pytest.raises(ValueError, match=r"observation.images.cam has shape \[5, 3, 32, 32\]"):
        policy(make_batch(image_size=32))


@pytest.mark.parametrize("decoder", ["flow", "residual_drift", "tokens"])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, decoder):
    torch.manual_seed(0)
    policy = StatePolicy(small_config(decoder))
    policy.set_stats({"action": NormStats(torch.randn(D), torch.rand(D) + 0.5, -torch.ones(D) * 2, torch.ones(D) * 2),
                      "observation.state": NormStats(torch.randn(S), torch.rand(S) + 0.5, -torch.ones(S),
                                                     torch.ones(S))})
    policy.eval()
    save_policy(policy, tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    obs = make_batch()
    a = policy.predict(obs, num_samples=3, generator=torch.Generator().manual_seed(3))
    b = loaded.predict(obs, num_samples=3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert loaded.config == policy.config


def test_loading_another_decoder_names_both(tmp_path):
    save_policy(StatePolicy(small_config("flow")), tmp_path / "p")
    with pytest.raises(ValueError, match="'flow' decoder, but a 'drift' decoder was asked for"):
        load_policy(tmp_path / "p", decoder="drift")
    with pytest.raises(FileNotFoundError, match="not a driftkit policy"):
        load_policy(tmp_path / "missing")
