"""Oracles for the shared continuous flow maths: path, loss, time samplers, Euler integration."""

import math

import pytest
import torch

from driftkit.flow import euler, flow_matching_loss, interpolate, sample_time, target_velocity


def test_interpolation_endpoints_and_velocity():
    x_0, x_1 = torch.randn(4, 3, 2), torch.randn(4, 3, 2)
    assert torch.allclose(interpolate(x_0, x_1, torch.zeros(4)), x_0)
    assert torch.allclose(interpolate(x_0, x_1, torch.ones(4)), x_1)
    t, h = torch.full((4,), 0.3), 1e-3
    finite_diff = (interpolate(x_0, x_1, t + h) - interpolate(x_0, x_1, t)) / h
    assert torch.allclose(finite_diff, target_velocity(x_0, x_1), atol=1e-3)


def test_flow_loss_is_zero_for_the_true_velocity_and_masks_padding():
    """The oracle reads its inputs: (x_1 - x) / (1 - s) is the true velocity only at x = x_t and s = t, so a
    loss that hands the model the wrong point of the path (x_0, x_1, another t) is not zero."""
    x_0, x_1 = torch.randn(5, 4, 2), torch.randn(5, 4, 2)
    t = torch.rand(5) * 0.9
    exact = lambda x, s: (x_1 - x) / (1 - s).view(-1, 1, 1)  # noqa: E731
    assert flow_matching_loss(exact, x_0, x_1, t, None).item() == pytest.approx(0.0, abs=1e-9)
    assert (exact(x_0, t) - (x_1 - x_0)).square().mean() > 1e-3  # at another point it is not the velocity
    # "data" prediction: (x - (1 - s) x_0) / s recovers x_1 only at x = x_t, s = t.
    data = lambda x, s: (x - (1 - s).view(-1, 1, 1) * x_0) / s.view(-1, 1, 1)  # noqa: E731
    t_pos = t + 0.05
    assert flow_matching_loss(data, x_0, x_1, t_pos, None, prediction="data").item() == pytest.approx(0, abs=1e-9)
    assert flow_matching_loss(data, x_0, x_1, t_pos, None, prediction="velocity").item() > 1e-3
    mask = torch.ones(5, 4, 2, dtype=torch.bool)
    mask[:, -1] = False
    wrong_in_padding = lambda x, s: exact(x, s) + (~mask) * 100.0  # noqa: E731
    assert flow_matching_loss(wrong_in_padding, x_0, x_1, t, mask).item() == pytest.approx(0.0, abs=1e-9)
    assert flow_matching_loss(wrong_in_padding, x_0, x_1, t, None).item() > 1.0


def test_euler_is_exact_for_constant_fields_and_counts_evaluations():
    x_0 = torch.randn(3, 2, 2)
    calls = []

    def v(x, t):
        calls.append(t.clone())
        return torch.full_like(x, 2.0)

    out = euler(v, x_0, steps=7)
    assert torch.allclose(out, x_0 + 2.0, atol=1e-6)
    assert len(calls) == 7
    assert torch.allclose(torch.stack([c[0] for c in calls]), torch.arange(7) / 7)


def test_euler_integrates_a_time_dependent_field_with_first_order_error():
    # dx/dt = 2t -> x(1) = x(0) + 1; Euler with n steps gives x(0) + 1 - 1/n exactly.
    x_0 = torch.zeros(1, 1, 1, dtype=torch.float64)
    for n in (1, 4, 10):
        out = euler(lambda x, t: 2 * t.view(-1, 1, 1) * torch.ones_like(x), x_0, steps=n)
        assert out.item() == pytest.approx(1 - 1 / n, abs=1e-12)


def test_straight_path_flow_from_one_step_is_exact_when_field_is_the_true_coupling_velocity():
    # For a single data point, the marginal velocity at x_t is (x_1 - x_t) / (1 - t): Euler lands on x_1.
    x_1 = torch.tensor([[[0.7, -0.2]]], dtype=torch.float64)
    out = euler(lambda x, t: (x_1 - x) / (1 - t.view(-1, 1, 1)), torch.randn(1, 1, 2, dtype=torch.float64), 5)
    assert torch.allclose(out, x_1)


def test_time_samplers_have_the_right_distribution(gen):
    u = sample_time("uniform", 200_000, torch.zeros(1), gen)
    assert 0 <= u.min() and u.max() < 1 and u.mean().item() == pytest.approx(0.5, abs=5e-3)
    b = sample_time("beta", 200_000, torch.zeros(1), gen)
    # tau = 0.001 + 0.999 * Beta(1.5, 1); E[Beta(1.5, 1)] = 0.6; t = 1 - tau lies in [0, 0.999].
    assert b.min() >= 0 and b.max() <= 0.999 + 1e-6
    assert b.mean().item() == pytest.approx(1 - (0.001 + 0.999 * 0.6), abs=5e-3)
    # CDF of tau at 0.5 is ~0.5^1.5.
    assert (1 - b < 0.5).float().mean().item() == pytest.approx(math.pow((0.5 - 0.001) / 0.999, 1.5), abs=5e-3)


def test_bad_time_sampler_and_steps_are_named():
    with pytest.raises(ValueError, match="time_sampler='cosine'"):
        sample_time("cosine", 3, torch.zeros(1))
    with pytest.raises(ValueError, match="steps=0"):
        euler(lambda x, t: x, torch.zeros(1, 1, 1), 0)


def test_data_prediction_becomes_the_velocity_toward_the_prediction():
    """as_velocity("data"): v = (x_1_hat - x_t) / (1 - t). With a network that always predicts the same
    point, Euler in data mode lands on it exactly for any step count (the last step has h = 1 - t), while the
    same output read as a velocity does not."""
    from driftkit.decoders.flow import FlowOptions
    from driftkit.flow.path import as_velocity

    x_t, x_hat, t = torch.randn(3, 4, 2), torch.randn(3, 4, 2), torch.tensor([0.0, 0.25, 0.5])
    want = (x_hat - x_t) / (1 - t).view(-1, 1, 1)
    assert torch.allclose(as_velocity(x_hat, x_t, t, "data"), want)
    assert torch.equal(as_velocity(x_hat, x_t, t, "velocity"), x_hat)
    x_0 = torch.randn(3, 4, 2, dtype=torch.float64)
    x_1 = torch.randn(3, 4, 2, dtype=torch.float64)
    for steps in (1, 3, 10):
        out = FlowOptions(prediction="data").integrate(lambda x, s: x_1, x_0, steps)
        assert torch.allclose(out, x_1, atol=1e-12)
    assert not torch.allclose(FlowOptions(prediction="velocity").integrate(lambda x, s: x_1, x_0, 3), x_1)
