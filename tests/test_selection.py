"""KeyStone and the simpler selectors on hand-made sets with known answers."""

import pytest
import torch

from driftkit.selection import best_of_k, keystone, medoid
from driftkit.selection.keystone import _kmeans_labels


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


def test_unimodal_guard_returns_the_global_medoid_where_k_means_would_not():
    # One symmetric blob: k-means with C = 2 halves it, and the larger half's medoid (index 5) is not the
    # global medoid (index 3). Only the guard (spread 0.03 <= 0.3) makes KeyStone return index 3.
    samples = _chunks([[-0.3], [-0.2], [-0.1], [0.0], [0.05], [0.1], [0.2], [0.3]])
    assert medoid(samples).index.item() == 3
    assert keystone(samples, clusters=2).index.item() == 3
    assert keystone(samples, clusters=2, guard=0.0).index.item() == 5  # the guard off: the half's medoid


def test_kmeans_labels_come_from_the_centroids_after_the_last_update():
    # x = [0, 1, 2, 3.5, 4, 20], C = 2, centroids start at 0 and 1.
    # update 1: labels [0, 1, 1, 1, 1, 1] -> centroids 0, 6.1; update 2: labels [0, 0, 0, 1, 1, 1] -> 1, 9.17;
    # the final centroids put the boundary at 5.08, so the labels k-means ends with are [0, 0, 0, 0, 0, 1].
    x = torch.tensor([[0.0], [1.0], [2.0], [3.5], [4.0], [20.0]])
    assert _kmeans_labels(x, 2, iters=2).tolist() == [0, 0, 0, 0, 0, 1]
    # x = [0, 1, 2, 10]: one update moves centroid 1 to 13/3, which claims only the point at 10.
    assert _kmeans_labels(torch.tensor([[0.0], [1.0], [2.0], [10.0]]), 2, iters=1).tolist() == [0, 0, 0, 1]


def _cond_policy(std):
    from driftkit.normalize import NormStats
    from driftkit.policy.condition import ConditionPolicy, ConditionPolicyConfig

    policy = ConditionPolicy(ConditionPolicyConfig(state_dim=3, action_dim=2, horizon=1, decoder="regression"))
    zeros = torch.zeros(2)
    policy.set_stats({"action": NormStats(mean=zeros, std=torch.tensor(std), q01=zeros - 1, q99=zeros + 1)})
    return policy


@pytest.mark.parametrize("select", ["keystone", "medoid"])
def test_predict_selects_on_the_decoders_normalised_scale(monkeypatch, select):
    # dim 1 (std 1) has two modes: three samples near -3 and five near +1 (centre: sample 4). dim 0 has std
    # 1000 and values in the hundreds. In action units dim 0 swamps the modes and both selectors pick sample 0
    # (the minority mode); on the decoder's scale dim 0 is ~0.4 at most and both pick sample 4.
    dim0 = [0.0, 5.0, -5.0, 400.0, 0.0, -400.0, 350.0, -350.0]
    dim1 = [-3.0, -3.1, -2.9, 0.9, 1.0, 1.1, 1.05, 0.95]
    samples = torch.tensor([dim0, dim1]).T.reshape(1, 8, 1, 2)
    selector = keystone if select == "keystone" else medoid
    assert selector(samples).index.item() == 0  # what selecting in action units would pick
    policy = _cond_policy([1000.0, 1.0])
    monkeypatch.setattr(policy, "sample", lambda *args, **kwargs: samples)
    chosen = policy.predict({"observation.state": torch.zeros(1, 3)}, num_samples=8, select=select)
    assert torch.equal(chosen, samples[:, 4])  # in action units, untouched by the round trip
