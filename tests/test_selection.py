"""KeyStone and the simpler selectors on hand-made sets with known answers."""

import pytest
import torch

from driftkit.selection import best_of_k, keystone, medoid


def _chunks(points):
    return torch.tensor(points, dtype=torch.float32).view(1, len(points), 1, -1)


def test_keystone_picks_the_medoid_of_the_dominant_cluster():
    # Five samples near +1 (medoid 1.0), three near -3: the global medoid would sit between the modes.
    pts = [[-3.0], [-3.1], [-2.9], [0.9], [1.0], [1.1], [1.05], [0.95]]
    sel = keystone(_chunks(pts), clusters=2)
    assert sel.index.item() == 4 and sel.chunk.item() == 1.0
    assert medoid(_chunks(pts)).index.item() == 3  # the global medoid leans toward the minority mode


def test_keystone_falls_back_to_the_global_medoid_when_unimodal():
    pts = [[0.0], [0.1], [-0.1], [0.05], [-0.05], [0.2], [-0.2], [0.01]]
    samples = _chunks(pts)
    assert keystone(samples, clusters=4).index.item() == medoid(samples).index.item()


def test_keystone_uses_only_executed_steps_and_real_dims():
    # Samples differ wildly in the padded dim / unexecuted steps; those must not affect the choice.
    samples = torch.zeros(1, 4, 3, 2)
    samples[0, :, 0, 0] = torch.tensor([0.0, 0.01, 5.0, 0.02])
    samples[0, :, :, 1] = torch.tensor([100.0, -100.0, 0.0, 50.0])[:, None]
    samples[0, :, 1:, 0] = torch.tensor([9.0, -9.0, 0.0, 4.0])[:, None]
    assert keystone(samples, clusters=2, exec_steps=1, dims=1).index.item() in (0, 1, 3)
    assert keystone(samples, clusters=2, exec_steps=1, dims=1).index.item() != 2


def test_selectors_work_per_batch_item_and_best_of_k_is_the_oracle(gen):
    samples = torch.randn(5, 8, 4, 2, generator=gen)
    target = samples[torch.arange(5), torch.tensor([3, 0, 7, 1, 1])] + 1e-3
    assert best_of_k(samples, target).index.tolist() == [3, 0, 7, 1, 1]
    sel = keystone(samples, clusters=4)
    assert sel.chunk.shape == (5, 4, 2)
    assert torch.equal(sel.chunk, samples[torch.arange(5), sel.index])


def test_keystone_rejects_bad_input():
    with pytest.raises(ValueError, match=r"samples has shape \[8, 4, 2\]"):
        keystone(torch.zeros(8, 4, 2))
    with pytest.raises(ValueError, match="clusters=0"):
        keystone(torch.zeros(1, 8, 4, 2), clusters=0)
