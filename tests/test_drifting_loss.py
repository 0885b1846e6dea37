"""Oracles for the drifting loss: its gradient is the drift field, padding gets none, groups own their scale."""

import pytest
import torch

from driftkit.losses import drift_field, drifting_loss, group_chunks


def _by_hand(x, y, temps=(0.02, 0.05, 0.2)):
    """One matching problem, written out loop by loop from the notes. x [G, S] samples, y [P, S] positives."""
    g, s_dim = x.shape
    ys = torch.cat([x, y])
    d = torch.cdist(x.double(), ys.double()).clamp_min(1e-4)
    scale = d.mean()
    s = max(scale / s_dim**0.5, 1e-3)
    dn = d / max(scale, 1e-3)
    for i in range(g):
        dn[i, i] += 100
    v = torch.zeros_like(x, dtype=torch.float64)
    for r in temps:
        a = ((-dn / r).softmax(1) * (-dn / r).softmax(0)).clamp_min(1e-6).sqrt()
        f = torch.zeros_like(v)
        for i in range(g):
            neg, pos = a[i, :g].sum(), a[i, g:].sum()
            for j in range(ys.shape[0]):
                w = a[i, j] * neg if j >= g else -a[i, j] * pos
                f[i] += w * (ys[j] - x[i]) / s
        v += f / f.square().mean().clamp_min(1e-8).sqrt()
    return v, s


def test_drift_field_matches_a_loop_by_loop_reference(gen):
    x, y = torch.randn(6, 5, generator=gen), torch.randn(1, 5, generator=gen)
    field = drift_field(x[None, None], y[None, None], torch.ones(1, 1, dtype=torch.bool))
    v_ref, s_ref = _by_hand(x, y)
    assert field.s.item() == pytest.approx(float(s_ref), rel=1e-5)
    assert torch.allclose(field.V[0, 0].double(), v_ref, atol=1e-4)


def test_gradient_is_minus_two_over_s_times_the_field(gen):
    b, g, t, d = 1, 6, 4, 1
    gen_x = torch.randn(b, g, t, d, generator=gen, requires_grad=True)
    target = torch.randn(b, t, d, generator=gen)
    mask = torch.ones(b, t, d, dtype=torch.bool)
    loss = drifting_loss(gen_x, target, mask, grouping="chunk", scale_weighting=False)
    loss.backward()
    x, valid = group_chunks(gen_x.detach(), mask, "chunk")
    pos, _ = group_chunks(target.unsqueeze(1), mask, "chunk")
    field = drift_field(x, pos, valid)
    s, n_feat = field.s.item(), t * d
    expected = -(2.0 / (g * n_feat * s)) * field.V[0, 0].view(g, t, d)
    assert torch.allclose(gen_x.grad[0], expected, atol=1e-6)


def test_field_pulls_a_cluster_of_samples_toward_the_demonstration():
    # Four samples bunched at -1, the demonstration at 0: every sample is pulled toward it.
    x = torch.tensor([[-1.05], [-1.0], [-0.95], [-1.1]])[None, None]
    v = drift_field(x, torch.zeros(1, 1, 1, 1), torch.ones(1, 1, dtype=torch.bool)).V[0, 0, :, 0]
    assert torch.all(v > 0)
    # Mirrored problem, mirrored field.
    v_mirror = drift_field(-x, torch.zeros(1, 1, 1, 1), torch.ones(1, 1, dtype=torch.bool)).V[0, 0, :, 0]
    assert torch.allclose(v_mirror, -v)


@pytest.mark.parametrize("grouping", ["action_dim", "timestep", "chunk"])
def test_padded_steps_and_dims_get_exactly_zero_gradient(gen, grouping):
    b, g, t, d = 3, 5, 6, 4
    gen_x = torch.randn(b, g, t, d, generator=gen, requires_grad=True)
    target = torch.randn(b, t, d, generator=gen)
    mask = torch.ones(b, t, d, dtype=torch.bool)
    mask[:, 4:] = False  # padded timesteps
    mask[:, :, 3] = False  # padded action dim
    mask[2] = False  # a fully padded observation
    drifting_loss(gen_x, target, mask, grouping=grouping).backward()
    grad = gen_x.grad
    assert torch.all(grad.permute(0, 2, 3, 1)[~mask] == 0)
    assert grad.permute(0, 2, 3, 1)[mask].abs().sum() > 0


def test_action_dim_grouping_gives_each_dim_its_own_scale(gen):
    b, g, t, d = 4, 8, 5, 3
    gen_x = torch.randn(b, g, t, d, generator=gen)
    target = torch.randn(b, t, d, generator=gen)
    mask = torch.ones(b, t, d, dtype=torch.bool)
    scaled_x, scaled_target = gen_x.clone(), target.clone()
    scaled_x[..., 0] *= 1000
    scaled_target[..., 0] *= 1000

    def fields(x, y, grouping):
        xs, valid = group_chunks(x, mask, grouping)
        ys, _ = group_chunks(y.unsqueeze(1), mask, grouping)
        return drift_field(xs, ys, valid)

    base, scaled = fields(gen_x, target, "action_dim"), fields(scaled_x, scaled_target, "action_dim")
    assert torch.allclose(base.V[1:], scaled.V[1:], atol=1e-5)  # other dims' forces unchanged
    assert torch.allclose(base.V[0], scaled.V[0], atol=1e-3)  # the scaled dim's force is scale-free
    assert scaled.s[0] / base.s[0] == pytest.approx(1000, rel=1e-4)
    # Chunk grouping shares one scale, so the large dim changes every other dim's force.
    chunk_base, chunk_scaled = fields(gen_x, target, "chunk"), fields(scaled_x, scaled_target, "chunk")
    other = lambda f: f.V[0].view(b, g, t, d)[..., 1:]  # noqa: E731
    assert not torch.allclose(other(chunk_base), other(chunk_scaled), atol=1e-2)


@pytest.mark.parametrize("grouping", ["action_dim", "chunk"])
def test_loss_and_gradient_under_bf16_autocast_equal_the_float32_ones(gen, grouping):
    """The autocast guard: under bf16 autocast the loss and its gradient are the ones computed in float32
    without autocast from the same (bf16) values. Without the guard autocast runs the field's matmul in bf16,
    and both move."""
    gen_x = torch.randn(2, 8, 4, 3, generator=gen).bfloat16().requires_grad_()
    target = torch.randn(2, 4, 3, generator=gen).bfloat16()
    mask = torch.ones(2, 4, 3, dtype=torch.bool)
    exact_x = gen_x.detach().float().requires_grad_()
    exact = drifting_loss(exact_x, target, mask, grouping)
    exact.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = drifting_loss(gen_x, target, mask, grouping)
    loss.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(exact.item(), rel=1e-6)
    assert torch.equal(gen_x.grad, exact_x.grad.bfloat16())  # bf16 leaf: the float32 gradient, rounded once


def test_unknown_grouping_is_named():
    with pytest.raises(ValueError, match="grouping='per_joint'"):
        group_chunks(torch.zeros(1, 2, 3, 4), torch.ones(1, 3, 4, dtype=torch.bool), "per_joint")


def test_fp32_target_is_a_real_switch_under_bf16_autocast(gen):
    """fp32_target=True computes the field, the target and the regression in float32 from full-precision
    demonstrations: the same loss as the float32 computation on the bf16 generator's values. False computes
    them in bf16, which rounds visibly. Breaks when the flag is ignored either way, or when the target is
    rounded to the generator's dtype first."""
    gen_x = torch.randn(2, 8, 4, 3, generator=gen).bfloat16().requires_grad_()
    target = torch.randn(2, 4, 3, generator=gen) * 0.5 + 1e-3  # finer than bf16's resolution near 1
    mask = torch.ones(2, 4, 3, dtype=torch.bool)
    exact = drifting_loss(gen_x.detach().float(), target, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        guarded = drifting_loss(gen_x, target, mask, fp32_target=True)
        unguarded = drifting_loss(gen_x, target, mask, fp32_target=False)
    assert guarded.dtype == torch.float32 and unguarded.dtype == torch.bfloat16
    assert guarded.item() == pytest.approx(exact.item(), rel=1e-6)
    assert abs(unguarded.float().item() - exact.item()) > 1e-4 * abs(exact.item())
    rounded = drifting_loss(gen_x.detach().float(), target.bfloat16().float(), mask)
    assert guarded.item() != pytest.approx(rounded.item(), rel=1e-7)  # the demonstrations kept their precision
    guarded.backward()
    assert torch.isfinite(gen_x.grad.float()).all()


class _AffineNet(torch.nn.Module):
    """Stands in for the generator's network: v(x, t) = 2 x + 3 t, whatever the condition."""

    def forward(self, cond, x, t, **kwargs):
        return 2 * x + 3 * t.view(-1, 1, 1)


@pytest.mark.parametrize("one_step, expected", [("skip", lambda x: 3 * x), ("direct", lambda x: 2 * x + 3)])
def test_one_step_output_forms(gen, one_step, expected):
    """skip: x = x_0 + v(x_0, t=0) = 3 x_0; direct: x = v(x_0, t=1) = 2 x_0 + 3 (the network's output itself).
    Breaks on a swapped form, a wrong pinned time, or an option that does not reach the generator."""
    from driftkit.decoders.registry import make_decoder

    x_0 = torch.randn(4, 3, 2, generator=gen)
    dec = make_decoder("drift", 5, (3, 2), hidden_dim=8, depth=1, one_step=one_step)
    dec.net = _AffineNet()
    assert torch.allclose(dec.generate(torch.zeros(4, 5), x_0), expected(x_0))
    # residual_drift shares the form, in its own coordinates (absolute: c_0 = b + sigma eps).
    res = make_decoder("residual_drift", 5, (3, 2), hidden_dim=8, depth=1, one_step=one_step, source_std=0.5)
    res._refiner_fn = lambda *args, **kwargs: (lambda c, t: 2 * c + 3 * t.view(-1, 1, 1))
    b, eps = torch.randn(4, 3, 2, generator=gen), x_0
    assert torch.allclose(res._generate_from(torch.zeros(4, 5), b, eps), expected(b + 0.5 * eps))


def test_unknown_one_step_form_is_named():
    from driftkit.decoders.registry import make_decoder

    with pytest.raises(ValueError, match="one_step='euler'"):
        make_decoder("drift", 5, (3, 2), one_step="euler")
