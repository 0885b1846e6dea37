"""Residual decoders refining a base prediction the caller supplies (e.g. a VLM's decoded tokens)."""

import pytest
import torch

import driftkit


@pytest.mark.parametrize("name", ["residual_flow", "residual_drift"])
def test_external_base_is_required_and_checked(name):
    dec = driftkit.make_decoder(name, cond_dim=3, target_shape=(2, 2), base="external", hidden_dim=16, depth=1)
    cond, target = torch.randn(4, 3), torch.randn(4, 2, 2)
    with pytest.raises(ValueError, match="base='external'.*loss_with_base"):
        dec.loss(cond, target)
    with pytest.raises(ValueError, match="base='external'.*sample_with_base"):
        dec.sample(cond)
    with pytest.raises(ValueError, match=r"base has shape \[4, 2, 3\]"):
        dec.loss_with_base(cond, target, torch.zeros(4, 2, 3))
    bad = torch.zeros(4, 2, 2)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="base contains 1 non-finite"):
        dec.sample_with_base(cond, bad)
    assert dec.nfe() == (10 if name == "residual_flow" else 1)


@pytest.mark.parametrize("name", ["residual_flow", "residual_drift"])
def test_refiner_removes_a_systematic_error_of_an_external_base(name):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    dec = driftkit.make_decoder(name, cond_dim=2, target_shape=(1, 2), base="external", hidden_dim=64, depth=2,
                                temperature=0.0)
    truth = lambda c: torch.stack([c.sum(-1), c[:, 0] - c[:, 1]], dim=-1).unsqueeze(1)  # noqa: E731
    biased = lambda c: truth(c) + torch.tensor([0.4, -0.3])  # noqa: E731  a base that is consistently off
    dec.fit_normalizer(truth(torch.rand(1024, 2, generator=gen)))
    opt = torch.optim.Adam(dec.parameters(), 2e-3)
    for _ in range(400):
        c = torch.rand(128, 2, generator=gen)
        out = dec.loss_with_base(c, truth(c), biased(c))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    dec.eval()
    c = torch.rand(256, 2, generator=gen)
    refined = dec.sample_with_base(c, biased(c), num_samples=2)
    assert refined.shape == (256, 2, 1, 2)
    base_err = (biased(c) - truth(c)).abs().mean()
    assert (refined[:, 0] - truth(c)).abs().mean() < 0.4 * base_err
