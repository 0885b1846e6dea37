"""steps=0 on a residual decoder returns its base prediction unrefined (how a benchmark measures a refiner's own
base from the same checkpoint); other decoders refuse it."""

import pytest
import torch

import driftkit


@pytest.mark.parametrize("name", ["residual_flow", "residual_drift"])
def test_zero_steps_returns_the_own_base(name):
    torch.manual_seed(0)
    dec = driftkit.make_decoder(name, cond_dim=3, target_shape=(2, 2), hidden_dim=16, depth=1)
    dec.fit_normalizer(torch.randn(64, 2, 2) * 3 + 1)
    dec.eval()
    cond = torch.randn(5, 3)
    base = dec.normalizer.unnormalize(dec.base_prediction(cond))  # [5, 2, 2] in target units
    out = dec.sample(cond, num_samples=3, steps=0, generator=torch.Generator().manual_seed(1))
    assert out.shape == (5, 3, 2, 2)
    torch.testing.assert_close(out, base[:, None].expand(-1, 3, -1, -1))
    refined = dec.sample(cond, num_samples=3, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(refined, out)  # the default still refines
    assert dec.nfe(0) == dec.base_nfe() and dec.nfe() > dec.nfe(0)


def test_zero_steps_with_an_external_base_returns_it():
    dec = driftkit.make_decoder("residual_flow", cond_dim=3, target_shape=(2, 2), base="external", hidden_dim=16,
                                depth=1)
    dec.fit_normalizer(torch.randn(64, 2, 2))
    base = torch.randn(4, 2, 2)
    out = dec.sample_with_base(torch.randn(4, 3), base, num_samples=2, steps=0)
    torch.testing.assert_close(out, base[:, None].expand(-1, 2, -1, -1))
    assert dec.nfe(0) == 0


@pytest.mark.parametrize("name", ["flow", "discrete_flow"])
def test_zero_steps_is_refused_elsewhere(name):
    dec = driftkit.make_decoder(name, cond_dim=3, target_shape=(2, 2), hidden_dim=16, depth=1)
    with pytest.raises(ValueError, match="steps=0"):
        dec.sample(torch.randn(2, 3), steps=0)
