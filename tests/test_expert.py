"""The "expert" net: every decoder runs on it with prefix states [B, L, C] or pooled cond [B, C]."""

from __future__ import annotations

import pytest
import torch

import driftkit.decoders.lm_tokens  # noqa: F401  (registers "lm_tokens", so it is checked here too)
import driftkit.nets.expert  # noqa: F401  (registers "expert")
from driftkit import list_decoders, make_decoder
from driftkit.nets import NetSpec, make_net

T, D, C, L = 3, 2, 12, 8


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def small(name: str):
    dec = make_decoder(name, cond_dim=C, target_shape=(T, D), net="expert", hidden_dim=32, depth=1)
    dec.fit_normalizer(torch.randn(32, T, D))
    return dec


@pytest.mark.parametrize("name", sorted(list_decoders()))
def test_every_decoder_runs_on_the_expert_with_prefix_states(name):
    torch.manual_seed(0)
    dec = small(name)
    cond = torch.randn(4, L, C, requires_grad=True)  # L >= T * D, so lm_tokens (if registered) reads it too
    out = dec.loss(cond, torch.randn(4, T, D))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert cond.grad is not None and cond.grad.abs().sum() > 0, f"{name}: no gradient reaches cond"
    y = dec.sample(cond.detach(), num_samples=5)
    assert y.shape == (4, 5, T, D) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", sorted(list_decoders()))
def test_every_decoder_runs_on_the_expert_with_pooled_cond(name):
    dec = small(name)
    assert dec.sample(torch.randn(2, C), num_samples=3).shape == (2, 3, T, D)


def spec(in_dim=D, use_time=True) -> NetSpec:
    return NetSpec(cond_dim=C, horizon=T, in_dim=in_dim, out_dim=D, use_time=use_time, hidden_dim=32, depth=2)


def test_masked_rows_of_cond_are_padding():
    """Ported from test_zero_rows_of_cond_are_padding: padding is now marked by cond_mask, not by zero rows.
    Left padding under the mask gives the unpadded output; the same zero rows without a mask are attended."""
    torch.manual_seed(0)
    net = make_net("expert", spec()).eval()
    cond, x, t = torch.randn(2, 5, C), torch.randn(2, T, D), torch.rand(2)
    padded = torch.cat([torch.zeros(2, 3, C), cond], dim=1)  # left padding, as a VLM prefix has it
    cond_mask = torch.cat([torch.zeros(2, 3, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(net(padded, x, t, cond_mask=cond_mask), net(cond, x, t), atol=1e-6, rtol=0)
    assert (net(padded, x, t) - net(cond, x, t)).abs().max() > 1e-4, "zero rows are inferred as padding"


def test_pooled_cond_is_one_prefix_token_and_outputs_depend_on_inputs():
    torch.manual_seed(0)
    net = make_net("expert", spec()).eval()
    cond, x, t = torch.randn(2, C), torch.randn(2, T, D), torch.rand(2)
    y = net(cond, x, t)
    assert y.shape == (2, T, D)
    torch.testing.assert_close(net(cond[:, None], x, t), y)
    assert (net(cond, x, 1 - t) - y).abs().max() > 1e-5, "time is ignored"
    assert (net(cond, x + 1, t) - y).abs().max() > 1e-5, "x is ignored"
    assert (net(-cond, x, t) - y).abs().max() > 1e-5, "cond is ignored"


def test_without_inputs_the_steps_are_learned_queries():
    net = make_net("expert", spec(in_dim=0, use_time=False))
    y = net(torch.randn(3, L, C))
    assert y.shape == (3, T, D)
    assert (y[:, 0] - y[:, 1]).abs().max() > 0, "steps must differ through their learned embeddings"


def test_bad_cond_shape_names_it():
    net = make_net("expert", spec())
    with pytest.raises(ValueError, match=r"got shape \[2, 4, 7\]"):
        net(torch.randn(2, 4, 7), torch.randn(2, T, D), torch.rand(2))
