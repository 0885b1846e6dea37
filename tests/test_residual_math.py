"""Oracles for the residual decoders' maths: the two coordinate systems, the automatic source width sigma,
and the staged training switch (src/driftkit/decoders/residual.py)."""

import pytest
import torch

from driftkit.decoders.registry import make_decoder
from driftkit.flow import interpolate
from driftkit.ops import randn

SMALL = {"hidden_dim": 16, "depth": 1}


def _decoder(name="residual_flow", **options):
    return make_decoder(name, 3, (4, 2), **{**SMALL, **options})


@pytest.mark.parametrize("parameterization", ["residual", "absolute"])
def test_coordinates_round_trip_and_describe_the_same_path_in_target_units(gen, parameterization):
    dec = _decoder(parameterization=parameterization, source_std=0.5)
    dec.sigma.copy_(torch.tensor([0.5, 2.0]))  # one width per dim
    x_0, x_1, b = (torch.randn(6, 4, 2, generator=gen) for _ in range(3))
    assert torch.allclose(dec.from_coords(dec.to_coords(x_1, b), b), x_1, atol=1e-6)
    z = torch.randn(6, 4, 2, generator=gen)
    if parameterization == "residual":  # c(x) = (x - b) / sigma, per dim
        assert torch.allclose(dec.to_coords(b + dec.sigma * z, b), z, atol=1e-6)
    else:  # c(x) = x
        assert torch.equal(dec.to_coords(x_1, b), x_1)
    # The coordinate map is affine, so the straight path in coordinates is the straight path in target units.
    t = torch.rand(6, generator=gen)
    in_coords = interpolate(dec.to_coords(x_0, b), dec.to_coords(x_1, b), t)
    assert torch.allclose(dec.from_coords(in_coords, b), interpolate(x_0, x_1, t), atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.3, 0.0])
def test_source_is_the_base_plus_temperature_times_sigma_times_noise(temperature):
    dec = _decoder(parameterization="residual")
    dec.sigma.copy_(torch.tensor([0.5, 2.0]))
    b = torch.randn(5, 4, 2)
    got = dec.source(b, torch.Generator().manual_seed(3), temperature)
    eps = randn(b.shape, b, torch.Generator().manual_seed(3))
    assert torch.allclose(got, b + temperature * dec.sigma * eps)
    assert torch.allclose(dec.to_coords(got, b), temperature * eps, atol=1e-6)  # N(0, T^2 I) in residual coords


def _sigma_batch():
    """External base with residual 2.0 in dim 0 and 0.001 in dim 1 on the real steps, 100 on the padded one."""
    base = torch.zeros(8, 4, 2)
    target = base + torch.tensor([2.0, 0.001])
    mask = torch.ones(8, 4, 2, dtype=torch.bool)
    mask[:, -1] = False
    base[:, -1] = 100.0
    return torch.randn(8, 3), target, base, mask


@pytest.mark.parametrize("name", ["residual_flow", "residual_drift"])
def test_auto_sigma_is_an_ema_of_the_masked_residual_rms_with_a_floor(name):
    dec = _decoder(name, base="external", normalization="none", std_momentum=0.5, min_source_std=0.02).train()
    cond, target, base, mask = _sigma_batch()
    dec.loss_with_base(cond, target, base, mask)
    # 0.5 * 1 (the initial width) + 0.5 * rms; dim 1's rms 0.001 is floored at 0.02; the padded step is ignored.
    assert torch.allclose(dec.sigma, torch.tensor([0.5 + 0.5 * 2.0, 0.5 + 0.5 * 0.02]), atol=1e-6)
    dec.loss_with_base(cond, target, base, mask)
    assert torch.allclose(dec.sigma, torch.tensor([0.5 * 1.5 + 0.5 * 2.0, 0.5 * 0.51 + 0.5 * 0.02]), atol=1e-6)
    before = dec.sigma.clone()
    dec.eval().loss_with_base(cond, target, base, mask)  # evaluation does not move it
    assert torch.equal(dec.sigma, before)
    fixed = _decoder(name, base="external", normalization="none", source_std=0.3).train()
    fixed.loss_with_base(cond, target, base, mask)
    assert torch.allclose(fixed.sigma, torch.full((2,), 0.3))


def _has_grad(module):
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("name", ["residual_flow", "residual_drift"])
def test_staged_schedule_trains_the_base_for_base_steps_then_only_the_refiner(gen, name):
    dec = _decoder(name, schedule="staged", base_steps=2).train()
    cond, target = torch.randn(6, 3, generator=gen), torch.randn(6, 4, 2, generator=gen)
    seen = []
    for _ in range(4):
        dec.zero_grad(set_to_none=True)
        stage = dec.stage()
        out = dec.loss(cond, target)
        out.loss.backward()
        seen.append((stage, _has_grad(dec.base), _has_grad(dec.refiner), "base_loss" in out.metrics,
                     "refine_loss" in out.metrics))
    base_stage, refiner_stage = ("base", True, False, True, False), ("refiner", False, True, False, True)
    assert seen == [base_stage, base_stage, refiner_stage, refiner_stage]
    # The step count is a buffer: a reloaded decoder resumes in the refiner stage; evaluation does not count.
    resumed = _decoder(name, schedule="staged", base_steps=2)
    resumed.load_state_dict(dec.state_dict())
    assert resumed.stage() == "refiner" and int(resumed.step) == 4
    fresh = _decoder(name, schedule="staged", base_steps=1).eval()
    fresh.loss(cond, target)
    assert fresh.stage() == "base"


def test_joint_schedule_trains_both_every_step(gen):
    dec = _decoder(schedule="joint").train()
    out = dec.loss(torch.randn(6, 3, generator=gen), torch.randn(6, 4, 2, generator=gen))
    out.loss.backward()
    assert _has_grad(dec.base) and _has_grad(dec.refiner)
    assert out.loss.item() == pytest.approx(out.metrics["base_loss"] + out.metrics["refine_loss"], rel=1e-5)
