"""Uniform bins and target normalisation: round trips and their error bounds."""

import pytest
import torch

import driftkit
from driftkit.normalize import NormStats, Normalizer
from driftkit.tokenizers import UniformBins


def test_bins_round_trip_within_half_a_bin(gen):
    bins = UniformBins(256)
    x = torch.rand(10_000, generator=gen) * 2 - 1
    err = (bins.decode(bins.encode(x)) - x).abs()
    assert err.max() <= bins.width / 2 + 1e-6
    assert torch.equal(bins.encode(bins.centres()), torch.arange(256))


def test_bins_clip_out_of_range_values_and_reject_bad_ids():
    bins = UniformBins(8)
    assert bins.encode(torch.tensor([-5.0, 5.0])).tolist() == [0, 7]
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        bins.decode(torch.tensor([8]))


@pytest.mark.parametrize("kind", ["mean_std", "quantile"])
def test_normalizer_round_trips_inside_the_range(gen, kind):
    data = torch.randn(2000, 3, generator=gen) * torch.tensor([1.0, 10.0, 0.1]) + torch.tensor([0.0, 5.0, -2.0])
    norm = Normalizer(3, kind)
    norm.set_stats(NormStats.from_data(data))
    inside = data[(data > norm.q01).all(1) & (data < norm.q99).all(1)]
    assert torch.allclose(norm.unnormalize(norm.normalize(inside)), inside, atol=1e-4)
    if kind == "quantile":
        assert norm.normalize(data).abs().max() <= 1.0


def test_quantile_normalisation_requires_statistics():
    dec = driftkit.make_decoder("tokens", cond_dim=4, target_shape=(2, 1))
    with pytest.raises(RuntimeError, match="fit_normalizer"):
        dec.loss(torch.zeros(3, 4), torch.zeros(3, 2, 1))


def test_stats_ignore_padded_entries():
    data = torch.tensor([[[1.0], [3.0], [1e6]]])
    mask = torch.tensor([[[True], [True], [False]]])
    stats = NormStats.from_data(data, mask)
    assert stats.mean.item() == pytest.approx(2.0) and stats.std.item() == pytest.approx(1.0)


def test_tokens_decoder_round_trips_targets_within_half_a_bin_after_fitting(gen):
    """With a perfect classifier, decoding gives each target back within half a bin (in target units)."""
    dec = driftkit.make_decoder("tokens", cond_dim=2, target_shape=(3, 2), num_bins=64)
    target = torch.rand(50, 3, 2, generator=gen) * torch.tensor([4.0, 0.5]) - 1
    stats = dec.fit_normalizer(target)
    ids = dec.bins.encode(dec.normalizer.normalize(target))
    decoded = dec.normalizer.unnormalize(dec.bins.decode(ids))
    half_bin = (stats.q99 - stats.q01) / 64  # bins span q01..q99 over 2 units of width 2/64 each
    inside = (target >= stats.q01) & (target <= stats.q99)
    assert torch.all(((decoded - target).abs() <= half_bin / 2 * 1.0001)[inside])
