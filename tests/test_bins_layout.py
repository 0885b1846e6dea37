"""Both bin layouts against their definitions; OpenVLA's against its formulas written out with numpy
(edges = linspace(-1, 1, N), class = digitize - 1, centre of interval min(class, N - 2))."""

import numpy as np
import pytest
import torch

from driftkit.tokenizers import UniformBins


def test_openvla_layout_matches_its_definition():
    n = 256
    bins = UniformBins(n, layout="openvla")
    edges = np.linspace(-1, 1, n)
    centres = (edges[:-1] + edges[1:]) / 2
    x = np.concatenate([np.random.default_rng(0).uniform(-1.2, 1.2, 5000), edges, [-1.0, 1.0, 0.0]])
    digitized = np.digitize(np.clip(x, -1, 1), edges)  # 1..N
    want_ids = np.clip(digitized - 1, 0, n - 1)
    got_ids = bins.encode(torch.tensor(x, dtype=torch.float64)).numpy()
    interior = np.abs(np.clip(x, -1, 1)[:, None] - edges[None]).min(1) > 1e-9  # float ties at an edge aside
    np.testing.assert_array_equal(got_ids[interior], want_ids[interior])
    want_values = centres[np.clip(want_ids, 0, n - 2)]
    np.testing.assert_allclose(bins.decode(torch.tensor(want_ids)).numpy(), want_values, atol=1e-6)
    assert bins.encode(torch.tensor([1.0])).item() == n - 1  # only x >= 1 reaches the last class
    assert bins.decode(torch.tensor([n - 1])).item() == pytest.approx(centres[-1])


def test_centres_layout_has_num_bins_intervals():
    bins = UniformBins(8)
    assert bins.width == pytest.approx(0.25)
    torch.testing.assert_close(bins.centres(), torch.linspace(-0.875, 0.875, 8))
    assert UniformBins(8, layout="openvla").width == pytest.approx(2 / 7)


def test_unknown_layout_is_named():
    with pytest.raises(ValueError, match="layout='llama'"):
        UniformBins(8, layout="llama")
