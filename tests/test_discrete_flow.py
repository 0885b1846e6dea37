"""Oracles for discrete flow matching: path marginals, rates, and CTMC sampling with an exact posterior."""

import pytest
import torch

from driftkit.flow.discrete import MetricPath, MixturePath, ctmc_euler


@pytest.mark.parametrize("t", [0.0, 0.4, 0.8])
@pytest.mark.parametrize("x1", [0, 7, 15])
def test_metric_path_draws_match_the_softmax_marginal(gen, t, x1):
    path, n = MetricPath(16, c=5.0), 100_000
    z = path.sample_xt(torch.full((n,), x1), torch.full((n,), t), gen)
    empirical = torch.bincount(z, minlength=16).double() / n
    exact = torch.softmax(-path.beta(torch.tensor(t)) * path.distance(torch.tensor(x1)), -1).double()
    assert (empirical - exact).abs().max() < 6 * (0.25 / n) ** 0.5


def test_mixture_path_keeps_the_target_with_probability_kappa(gen):
    path, n = MixturePath(10, power=2.0), 100_000
    x_t = path.sample_xt(torch.full((n,), 3), torch.full((n,), 0.6), gen)
    assert set(x_t.unique().tolist()) == {3, path.mask_id}
    assert (x_t == 3).float().mean().item() == pytest.approx(0.36, abs=0.01)


def test_metric_rates_only_move_toward_tokens_closer_to_the_target():
    path = MetricPath(12, c=10.0)
    x, x_1 = torch.tensor([2, 9, 5]), torch.tensor([8, 3, 5])
    u = path.rates(x, x_1, 0.5)
    d = path.distance(x_1)
    d_x = d.gather(-1, x[:, None])
    assert torch.all(u[d >= d_x] == 0)  # no mass to equally far or farther tokens, nor to x itself
    assert torch.all(u[0, 3:9] > 0) and torch.all(u[2] == 0)  # already at the target: no jumps


def test_mixture_rates_point_only_at_the_target():
    path = MixturePath(6)
    u = path.rates(torch.tensor([path.mask_id, 2, 4]), torch.tensor([1, 2, 0]), 0.5)
    assert u[0, 1] == pytest.approx(2.0) and u[0].sum() == pytest.approx(2.0)  # kappa'/(1-kappa) = 1/(1-t)
    assert u[1].sum() == 0 and u[2, 0] == pytest.approx(2.0)


@pytest.mark.parametrize("path", [MetricPath(32), MixturePath(32)], ids=["metric", "mask"])
def test_ctmc_sampling_with_an_oracle_posterior_converges_to_the_target(gen, path):
    """No validation steps: with them, the argmax of a one-hot oracle returns the target whatever the CTMC did,
    so only the stochastic steps are tested here (and their law in the next test)."""
    target = torch.randint(0, 32, (64, 6, 3), generator=gen)
    oracle = lambda x, t: torch.nn.functional.one_hot(target, 32).float()  # noqa: E731
    x_0 = path.source(target.shape, target.device, gen)
    out = ctmc_euler(oracle, x_0, path, steps=14, validation_steps=0, generator=gen)
    assert (out == target).float().mean() > 0.97


def test_ctmc_reproduces_the_metric_path_marginal_part_way(gen):
    """Stopped at t = 0.6, the CTMC from the uniform source with an oracle posterior must be distributed as the
    path's marginal p_t(. | x_1) (max error 0.004 measured with 20 000 draws, 20 steps). Breaks for a
    sign-flipped or mis-scaled rate, which a converged end point can hide."""
    path, n = MetricPath(16, c=5.0), 40_000
    target = torch.full((n,), 7)
    oracle = lambda x, t: torch.nn.functional.one_hot(target, 16).float()  # noqa: E731
    out = ctmc_euler(oracle, path.source(target.shape, "cpu", gen), path, steps=20, validation_steps=0, t_max=0.6,
                     generator=gen)
    empirical = torch.bincount(out, minlength=16).double() / n
    exact = torch.softmax(-path.beta(torch.tensor(0.6)) * path.distance(torch.tensor(7)), -1).double()
    assert (empirical - exact).abs().max() < 6 * (0.25 / n) ** 0.5


def test_ctmc_counts_posterior_evaluations(gen):
    calls = []

    def posterior(x, t):
        calls.append(float(t[0]))
        return torch.full((*x.shape, 8), 1 / 8)

    ctmc_euler(posterior, torch.zeros(2, 3, dtype=torch.long), MetricPath(8), steps=5, validation_steps=2)
    assert len(calls) == 7 and calls[:5] == pytest.approx([i * 0.999 / 5 for i in range(5)])


@pytest.mark.parametrize("path", [MetricPath(32, alpha=0.5), MixturePath(32, power=0.5), MetricPath(32, alpha=2.0),
                                  MixturePath(32, power=2.0)], ids=["metric-0.5", "mask-0.5", "metric-2", "mask-2"])
def test_ctmc_sampling_with_exponents_other_than_one(gen, path):
    """An exponent below 1 makes the rate diverge at t = 0 (the left end of the first step divided by zero
    before the rates moved to each step's midpoint); sampling must run and reach the oracle's target."""
    target = torch.randint(0, 32, (64, 6, 3), generator=gen)
    oracle = lambda x, t: torch.nn.functional.one_hot(target, 32).float()  # noqa: E731
    x_0 = path.source(target.shape, target.device, gen)
    out = ctmc_euler(oracle, x_0, path, steps=14, validation_steps=0, generator=gen)
    assert (out == target).float().mean() > 0.9
