"""Oracles for the velocity-head variant and the embedding distances of discrete flow matching."""

import pytest
import torch

from driftkit.decoders import make_decoder
from driftkit.demo.runner import TrainSettings, evaluate, train_decoder
from driftkit.demo.tasks import Task
from driftkit.flow.discrete import MetricPath, MixturePath, ctmc_euler, embedding_distances, rate_bregman

V = 16


def _line(v: int, gen) -> torch.Tensor:
    """v embedding rows equally spaced on a random line in R^5: [v, 5]."""
    step, origin = torch.randn(5, generator=gen), torch.randn(5, generator=gen)
    return origin + torch.arange(v).float()[:, None] * step


# ---- the rate loss -----------------------------------------------------------------------------------------
def test_rate_bregman_is_zero_exactly_at_the_target(gen):
    """Catches a dropped constant (a log a - a), a flipped cross term, or a sum over the excluded z."""
    target = torch.rand(4, V, generator=gen) * (torch.rand(4, V, generator=gen) < 0.5)
    keep = torch.ones(4, V, dtype=torch.bool)
    assert rate_bregman(target.log(), target, keep).abs().max() < 1e-6
    for wrong in (target * 1.5 + 1e-3, target * 0.5 + 1e-3, target.flip(-1) + 1e-3):
        assert torch.all(rate_bregman(wrong.log(), target, keep) > 1e-3)
    keep[:, :4] = False  # excluded z add nothing, whatever the prediction there
    assert torch.allclose(rate_bregman(torch.full((4, V), 3.0), target, keep),
                          rate_bregman(torch.full((4, V), 3.0), target * keep, keep))


@pytest.mark.parametrize("path", [MetricPath(V, c=5.0), MixturePath(V)], ids=["metric", "mask"])
def test_rate_bregman_expectation_is_minimised_at_the_marginal_rate(path):
    """Two clean tokens x_1 with probabilities 0.3 / 0.7 given x_t: the expected loss against the conditional
    unit rates is stationary exactly at their mean (the marginal rate) and not at either conditional rate."""
    x = torch.tensor([path.mask_id if isinstance(path, MixturePath) else 2])
    t = torch.tensor([0.4])
    a, b = (path.unit_rates(x, torch.tensor([x1]), t)[0] for x1 in (5, 12))
    mean = 0.3 * a + 0.7 * b
    keep = torch.ones(V, dtype=torch.bool)

    def grad_at(rate):
        log_rate = rate.clamp_min(1e-30).log().requires_grad_(True)
        (0.3 * rate_bregman(log_rate, a, keep) + 0.7 * rate_bregman(log_rate, b, keep)).backward()
        return log_rate.grad

    assert grad_at(mean).abs().max() < 1e-6
    assert grad_at(a).abs().max() > 1e-2 and grad_at(b).abs().max() > 1e-2


def test_unit_rates_times_the_time_factor_are_the_rates():
    for path in (MetricPath(V, c=7.0, alpha=0.5), MixturePath(V, power=2.0)):
        x, x_1 = torch.tensor([1, 9, 15]), torch.tensor([8, 3, 15])
        assert torch.allclose(path.unit_rates(x, x_1, 0.3) * path.rate_scale(0.3), path.rates(x, x_1, 0.3))
        assert 0 <= path.unit_rates(x, x_1, 0.3).min() and path.unit_rates(x, x_1, 0.3).max() <= 1


# ---- the CTMC driven by rates ------------------------------------------------------------------------------
def _marginal_rates(path, modes: torch.Tensor, probs: torch.Tensor):
    """The exact marginal rate field of data x_1 in `modes` with `probs`: u(z | x) = sum_{x_1} w(x_1 | x)
    u(z | x, x_1), w proportional to probs(x_1) p_t(x | x_1) (the mask path: w = probs for x = [MASK])."""

    def rates(x, t, h):
        t_mid, flat = t + h / 2, x.reshape(-1)
        if isinstance(path, MixturePath):
            like = torch.stack([(flat == path.mask_id) | (flat == m) for m in modes], -1).float()
        else:
            p_t = torch.softmax(-path.beta(torch.tensor(t_mid)) * path.distance(modes), -1)  # [M, V]
            like = p_t[:, flat].T  # [N, M]
        w = like * probs
        w = w / w.sum(-1, keepdim=True)
        u = sum(w[:, i:i + 1] * path.rates(flat, modes[i].expand_as(flat), t_mid) for i in range(len(modes)))
        return u.view(*x.shape, path.vocab)

    return rates


@pytest.mark.parametrize("path", [MetricPath(V, c=5.0), MixturePath(V)], ids=["metric", "mask"])
def test_ctmc_with_the_exact_marginal_rates_samples_the_data(gen, path):
    """No posterior at all: the rate field alone must carry the source to a two-mode data law (0.3 on token 3,
    0.7 on 12) at t_max. Catches a rate field that is ignored, a sign flip of the rate, or a wrong time."""
    n, modes, probs = 20_000, torch.tensor([3, 12]), torch.tensor([0.3, 0.7])
    x_0 = path.source((n,), "cpu", gen)
    out = ctmc_euler(None, x_0, path, steps=20, validation_steps=0, generator=gen,
                     rates=_marginal_rates(path, modes, probs))
    share = torch.bincount(out, minlength=V).double() / n
    assert share[3] + share[12] > 0.97
    assert share[12] / (share[3] + share[12]) == pytest.approx(0.7, abs=0.02)


def test_ctmc_with_the_exact_marginal_rates_follows_the_path_part_way(gen):
    """Stopped at t = 0.6, the marginal-rate CTMC must be distributed as the mixture of the path's marginals."""
    path, n, modes, probs = MetricPath(V, c=5.0), 40_000, torch.tensor([3, 12]), torch.tensor([0.3, 0.7])
    out = ctmc_euler(None, path.source((n,), "cpu", gen), path, steps=20, validation_steps=0, t_max=0.6,
                     generator=gen, rates=_marginal_rates(path, modes, probs))
    empirical = torch.bincount(out, minlength=V).double() / n
    exact = (probs[:, None] * torch.softmax(-path.beta(torch.tensor(0.6)) * path.distance(modes), -1)).sum(0)
    assert (empirical - exact.double()).abs().max() < 6 * (0.25 / n) ** 0.5


def test_ctmc_refuses_a_missing_posterior_it_needs():
    with pytest.raises(ValueError, match="validation_steps=2"):
        ctmc_euler(None, torch.zeros(2, dtype=torch.long), MetricPath(4), 3, rates=lambda x, t, h: x)


# ---- embedding distances -----------------------------------------------------------------------------------
def test_embedding_distances_are_a_metric(gen):
    d = embedding_distances(torch.randn(12, 5, generator=gen))
    assert torch.all(d.diagonal() == 0) and torch.allclose(d, d.T)
    assert torch.all(d + torch.eye(12) > 0)
    assert torch.all(d[:, None, :] <= d[:, :, None] + d[None, :, :] + 1e-6)  # d(i, k) <= d(i, j) + d(j, k)
    assert d.max().item() == pytest.approx(11 / 12)


def test_embedding_distances_of_a_line_are_the_bin_distances(gen):
    """Catches another scaling (max = 1 instead of (V - 1) / V) or a cosine distance."""
    d = embedding_distances(_line(V, gen))
    assert torch.allclose(d, MetricPath(V).distance(torch.arange(V)), atol=1e-6)


def test_embedding_distances_refuse_equal_rows():
    with pytest.raises(ValueError, match="equal"):
        embedding_distances(torch.ones(4, 3))


def test_metric_path_with_a_table_draws_and_moves_by_the_table(gen):
    """A line visited in shuffled order: the table's neighbours are not the bin ids' neighbours, so a path that
    ignores the table (or passes the wrong token to it) misses both the training draw and the CTMC marginal."""
    perm = torch.randperm(V, generator=gen)
    path, n, x1 = MetricPath(V, c=5.0, table=embedding_distances(_line(V, gen)[perm])), 40_000, 4
    exact = torch.softmax(-path.beta(torch.tensor(0.6)) * path.table[x1], -1).double()
    assert (exact - torch.softmax(-path.beta(torch.tensor(0.6)) * MetricPath(V).distance(torch.tensor(x1)),
                                  -1).double()).abs().max() > 0.05  # the two distances differ visibly
    drawn = path.sample_xt(torch.full((n,), x1), torch.full((n,), 0.6), gen)
    target = torch.full((n,), x1)
    oracle = lambda x, t: torch.nn.functional.one_hot(target, V).float()  # noqa: E731
    moved = ctmc_euler(oracle, path.source((n,), "cpu", gen), path, steps=20, validation_steps=0, t_max=0.6,
                       generator=gen)
    for z in (drawn, moved):
        assert (torch.bincount(z, minlength=V).double() / n - exact).abs().max() < 6 * (0.25 / n) ** 0.5


# ---- the decoder's options ---------------------------------------------------------------------------------
def _decoder(**options):
    return make_decoder("discrete_flow", 4, (2, 1), num_bins=V, embed_dim=5, hidden_dim=32, depth=1,
                        normalization="none", **options)


def test_embedding_distance_follows_the_decoder_embedding(gen):
    dec = _decoder(distance="embedding")
    with torch.no_grad():
        dec.embed.weight[:V] = _line(V, gen)
    table = dec.current_path().table
    assert not table.requires_grad and torch.allclose(table, MetricPath(V).distance(torch.arange(V)), atol=1e-6)
    with torch.no_grad():
        dec.embed.weight[0] += 100.0
    assert dec.current_path().table[0, 1] > 0.5  # recomputed from the changed weights
    dec.loss(torch.randn(8, 4, generator=gen), torch.rand(8, 2, 1, generator=gen)).loss.backward()
    assert dec.embed.weight.grad is not None


def test_external_distance_comes_from_lm_head_rows_and_is_saved(gen):
    dec = _decoder(distance="external")
    with pytest.raises(RuntimeError, match="set_distance_rows"):
        dec.sample(torch.randn(2, 4))
    rows = _line(V, gen)
    dec.init_from_lm_head(lambda n, layout="centres": (rows[:n], None))
    assert torch.allclose(dec.current_path().table, MetricPath(V).distance(torch.arange(V)), atol=1e-6)
    again = _decoder(distance="external")
    again.load_state_dict(dec.state_dict())
    assert torch.equal(again.current_path().table, dec.current_path().table)
    with pytest.raises(ValueError, match=r"\[15, 5\]"):
        dec.set_distance_rows(rows[:15])
    with pytest.raises(ValueError, match="distance='external'"):
        _decoder().set_distance_rows(rows)


@pytest.mark.parametrize("options, message", [
    ({"velocity": "rates"}, "velocity='rates'"),
    ({"distance": "cosine"}, "distance='cosine'"),
    ({"distance": "embedding", "path": "mask"}, "distance='embedding' with path='mask'"),
    ({"head_weight": 0.0}, "head_weight=0.0"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        _decoder(**options)


def test_head_loss_reports_both_terms(gen):
    out = _decoder(velocity="head").loss(torch.randn(8, 4, generator=gen), torch.rand(8, 2, 1, generator=gen))
    assert out.metrics["loss"] == pytest.approx(out.metrics["ce"] + out.metrics["rate_loss"], rel=1e-5)
    assert out.metrics["rate_loss"] > 0


class _Constant(Task):
    """Every condition has the same answer: 0.3 at both steps of a (2, 1) chunk."""

    name, cond_dim, target_shape = "constant", 4, (2, 1)

    def modes(self, cond):
        return torch.full((cond.shape[0], 1, 2, 1), 0.3)


@pytest.mark.slow
def test_velocity_head_alone_carries_the_source_to_a_fixed_target():
    """The head drives every step (no validation step, and the posterior is disabled at sampling): most of the
    uniform source must end on the target's bin (the head variant leans on its validation steps to finish). The head's rates, not p_{1|t}, do all the moving here, so a head
    trained toward the wrong rates (a flipped gap, a wrong time factor) or a sampler that ignores it fails."""
    settings = TrainSettings(steps=1500, batch_size=128, hidden_dim=64, depth=2, lr=3e-3)
    dec = train_decoder("discrete_flow", _Constant(), settings, num_bins=V, velocity="head", validation_steps=0,
                        normalization="none")
    dec.logits = lambda *args, **kwargs: pytest.fail("the head variant sampled through the posterior")
    ids = dec.bins.encode(dec.sample(torch.zeros(50, 4), 8, generator=torch.Generator().manual_seed(1)))
    off = (ids - dec.bins.encode(torch.tensor(0.3))).abs()
    # 0.68 exact and 0.78 within one bin measured (the source alone: 0.06 and 0.19)
    assert (off == 0).float().mean() > 0.5 and (off <= 1).float().mean() > 0.65, off.flatten().bincount()
