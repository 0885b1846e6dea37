"""Real-time chunking through the one policy contract (driftkit.rtc, driftkit.flow.guidance, the decoders'
`inpaint=`, driftkit.selection.prefix).

The learned checks train flow, residual_flow, drift and residual_drift briefly on the two-mode toy
(driftkit.demo.tasks.BimodalChunk, T = 8: an up or a down ramp with equal probability) and hold a new chunk to
a drawn demonstration's first d actions. Each test names, in a comment, a mutation of src/ it catches.
"""

from __future__ import annotations

import math

import pytest
import torch

import driftkit
import driftkit.nets.expert  # noqa: F401  (registers "expert")
from driftkit.decoders.registry import DECODERS
from driftkit.demo.tasks import BimodalChunk
from driftkit.flow import PrefixGuide, guidance_weight, guided_euler
from driftkit.normalize import NormStats
from driftkit.policy import StatePolicy, StatePolicyConfig, VLMPolicyConfig, make_policy
from driftkit.rtc import Inpaint, soft_mask
from driftkit.selection import closest_to_prefix, prefix_distance, rank_by_prefix
from vlm_helpers import CAMERA, camera

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' past_key_values rename

RTC = ["flow", "residual_flow", "drift", "residual_drift"]
ITERATIVE = ["flow", "residual_flow"]
ONE_STEP = ["drift", "residual_drift"]
T = 8
TASK = BimodalChunk(horizon=T)  # cond [B, 8], chunk [B, 8, 2]; dim 0 ramps up or down
DELAY, EXEC = 2, T // 2  # the soft mask reaches 0 at index T - s = 4


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean().sqrt())


# ---- the request: soft mask, validation, from_previous --------------------------------------------------------
def test_soft_mask_matches_the_formula_by_hand():
    """Mutations caught: the ramp's denominator T - s - d (not + 1); the exponential factor dropped from "exp"
    (or kept in "linear"); the zero region starting at s instead of T - s; "zeros" keeping the ramp; the hard
    prefix covering d - 1 or d + 1 actions."""
    # T = 7, d = 2, s = 2: c_i = (5 - i) / 4 for i = 2, 3, 4; W = 0 from i = 5.
    c = [3 / 4, 2 / 4, 1 / 4]
    exp = [1, 1] + [x * (math.exp(x) - 1) / (math.e - 1) for x in c] + [0, 0]
    torch.testing.assert_close(soft_mask(7, 2, 2, "exp"), torch.tensor(exp), rtol=0, atol=1e-6)
    torch.testing.assert_close(soft_mask(7, 2, 2, "linear"), torch.tensor([1, 1, *c, 0, 0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(soft_mask(7, 2, 2, "zeros"), torch.tensor([1.0, 1, 0, 0, 0, 0, 0]), rtol=0, atol=0)
    # d = 0: no hard prefix, the ramp starts at c_0 = (T - s) / (T - s + 1).
    torch.testing.assert_close(soft_mask(4, 0, 2, "linear"), torch.tensor([2 / 3, 1 / 3, 0, 0]), rtol=0, atol=1e-6)
    assert Inpaint(torch.zeros(1, 7, 2), 2, 2).weights().tolist() == pytest.approx(exp, abs=1e-6)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"prefix": torch.zeros(7, 2)}, ValueError, "[7, 2]"),
    ({"prefix": torch.zeros(1, 7, 2, dtype=torch.long)}, TypeError, "torch.int64"),
    ({"prefix": torch.full((1, 7, 2), float("nan"))}, ValueError, "non-finite"),
    ({"delay": 3, "execution_horizon": 2}, ValueError, "delay=3, execution_horizon=2"),
    ({"delay": 2, "execution_horizon": 6}, ValueError, "delay=2, execution_horizon=6 for a chunk of T=7"),
    ({"delay": -1}, ValueError, "delay=-1"),
    ({"delay": 1.5}, TypeError, "delay=1.5"),
    ({"beta": 0.0}, ValueError, "beta=0.0"),
    ({"beta": float("inf")}, ValueError, "beta=inf"),
    ({"schedule": "cosine"}, ValueError, "schedule='cosine'"),
    ({"candidates": 0}, ValueError, "candidates=0"),
    ({"noise_steps": -2}, ValueError, "noise_steps=-2"),
])
def test_inpaint_validation_names_the_values(kwargs, error, words):
    """Mutations caught: any of the checks in Inpaint.__post_init__ removed, or an error that no longer names
    the offending value (a float delay would slice the mask silently wrong; inf beta gives inf * 0 = NaN)."""
    args = {"prefix": torch.zeros(1, 7, 2), "delay": 2, "execution_horizon": 2, **kwargs}
    with pytest.raises(error) as info:
        Inpaint(**args)
    assert words in str(info.value)


def test_from_previous_pads_with_the_last_action_and_caps_the_delay():
    """Mutations caught: zero padding (decodes to the dataset mean, LeRobot's bug); padding with the first
    action; the delay not capped at the R actions the previous chunk planned; execution_horizon left below
    the capped delay (the request would then be refused)."""
    remaining = torch.arange(6.0).view(3, 2) + 1  # R = 3 actions, D = 2
    inp = Inpaint.from_previous(remaining, horizon=6, delay=5, execution_horizon=1, beta=3.0)
    assert inp.prefix.shape == (1, 6, 2) and inp.delay == 3 and inp.execution_horizon == 3 and inp.beta == 3.0
    torch.testing.assert_close(inp.prefix[0, :3], remaining)
    torch.testing.assert_close(inp.prefix[0, 3:], remaining[2].expand(3, 2))
    long = Inpaint.from_previous(torch.randn(2, 9, 2), horizon=6, delay=2, execution_horizon=2)
    assert long.prefix.shape == (2, 6, 2) and long.delay == 2  # R > T: cut to T
    with pytest.raises(ValueError, match=r"\[1, 0, 2\]"):
        Inpaint.from_previous(torch.zeros(1, 0, 2), horizon=6, delay=1, execution_horizon=1)


# ---- the guided integrator -----------------------------------------------------------------------------------
def test_guidance_weight_is_the_clipped_paper_weight():
    """Mutations caught: max for min (the clip ignored); r2 with t and 1 - t swapped in its numerator (the
    weight at t = 0.25 changes); t = 0 not special-cased (division by zero instead of beta)."""
    assert guidance_weight(0.0, 5.0) == 5.0
    t = 0.25
    r2 = (1 - t) ** 2 / (t**2 + (1 - t) ** 2)
    assert guidance_weight(t, 100.0) == pytest.approx((1 - t) / (t * r2))  # = 10 / 3
    assert guidance_weight(0.5, 100.0) == pytest.approx(2.0)
    assert guidance_weight(t, 1.0) == 1.0


def test_guided_euler_step_by_hand():
    """One guided step of a linear field v(x, t) = a * x from t = 0, where d x1_hat / dx = (1 + a) I:
    x1 = x0 + h (a x0 + beta (1 + a) W (Y - (1 + a) x0)).
    Mutations caught: the vector-Jacobian product taken of v instead of x1_hat = x + (1 - t) v; the error
    computed against x instead of x1_hat; W not applied (or applied over D instead of T); the guidance sign
    flipped; the step size h missing from the guidance term."""
    a, beta = 0.5, 3.0
    x0, y = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    w = torch.tensor([1.0, 0.5, 0.25, 0.0])
    guide = PrefixGuide(y, w, beta)
    got = guided_euler(lambda x, t: a * x, x0, 1, guide)
    want = x0 + a * x0 + beta * (1 + a) * w.view(1, 4, 1) * (y - (1 + a) * x0)
    torch.testing.assert_close(got, want)
    two = guided_euler(lambda x, t: a * x, x0, 2, guide)  # second step at t = 0.5: weight min(3, 2) = 2
    x_half = x0 + 0.5 * (a * x0 + beta * (1 + a) * w.view(1, 4, 1) * (y - (1 + a) * x0))
    k = 1 + 0.5 * a
    torch.testing.assert_close(two, x_half + 0.5 * (a * x_half + 2.0 * k * w.view(1, 4, 1) * (y - k * x_half)))


def test_guided_euler_raises_clearly_under_inference_mode():
    """Mutation caught: the inference-mode check removed (autograd's own error does not say what to do)."""
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        guided_euler(lambda x, t: x, torch.zeros(1, 2, 1), 2, PrefixGuide(torch.zeros(1, 2, 1), torch.ones(2), 1.0))


# ---- prefix-distance selection --------------------------------------------------------------------------------
def test_prefix_distance_and_ranking_by_hand():
    """Mutations caught: W squared (the 0.5-weighted step would count 0.25); the sum over the wrong axis; the
    ranking descending; rows of the batch mixed up in the gather."""
    prefix = torch.zeros(2, 3, 1)
    samples = torch.tensor([[[1.0], [2.0], [9.0]], [[0.0], [1.0], [0.0]], [[3.0], [0.0], [0.0]]])[None]  # [1, 3, 3, 1]
    samples = torch.cat([samples, samples.flip(1)])  # row 1 holds the same candidates in reverse order
    w = torch.tensor([1.0, 0.5, 0.0])
    want = torch.tensor([[1 + 0.5 * 4, 0.5, 9.0], [9.0, 0.5, 3.0]])
    torch.testing.assert_close(prefix_distance(samples, prefix, w), want)
    kept, index = rank_by_prefix(samples, prefix, w, keep=2)
    assert index.tolist() == [[1, 0], [1, 2]]
    torch.testing.assert_close(kept[1, 1], samples[1, 2])
    assert closest_to_prefix(samples, prefix, w).index.tolist() == [1, 1]
    with pytest.raises(ValueError, match="keep=4"):
        rank_by_prefix(samples, prefix, w, keep=4)


# ---- decoders learned on the two-mode toy ------------------------------------------------------------------------
_TRAINED: dict[str, driftkit.Decoder] = {}


def trained(name: str) -> driftkit.Decoder:
    """name trained for 300 steps (batch 128, width 64) on the toy; cached across tests (about 1-4 s each)."""
    if name not in _TRAINED:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        dec = driftkit.make_decoder(name, TASK.cond_dim, TASK.target_shape, hidden_dim=64, depth=2)
        dec.fit_normalizer(TASK.sample(2048, gen).target)
        opt = torch.optim.Adam(dec.parameters(), 2e-3)
        for _ in range(300):
            batch = TASK.sample(128, gen)
            loss = dec.loss(batch.cond, batch.target).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        _TRAINED[name] = dec.eval()
    return _TRAINED[name]


def draws(n: int = 256, seed: int = 5):
    return TASK.sample(n, torch.Generator().manual_seed(seed))


def switched(chunk: torch.Tensor, batch, d: int) -> float:
    """Share of chunks [B, T, D] whose free part (i >= d) is nearer the other mode than the prefix's."""
    dist = (chunk[:, None, d:] - batch.modes[:, :, d:]).square().flatten(2).mean(-1)  # [B, 2]
    return float((dist.argmin(-1) != batch.mode_index).float().mean())


def pair(dec, batch, seed: int = 1, **options):
    """(unguided, guided) first samples [B, T, D] from the same generator seed."""
    inp = Inpaint(batch.target, DELAY, EXEC, **options)
    free = dec.sample(batch.cond, 1, generator=torch.Generator().manual_seed(seed))[:, 0]
    held = dec.sample(batch.cond, 1, generator=torch.Generator().manual_seed(seed), inpaint=inp)[:, 0]
    return free, held


# Measured with these settings (T = 8, d = 2, s = 4, 256 draws): prefix RMS error over the first d actions
# unguided / guided = 9.5x flow, 6.7x residual_flow, 2.4x drift, 2.7x residual_drift; mode switching
# 0.46 -> 0.21, 0.45 -> 0.30, 0.48 -> 0.14, 0.54 -> 0.13. The bounds below leave about half that margin.
FACTOR = {"flow": 4.0, "residual_flow": 3.0, "drift": 1.6, "residual_drift": 1.6}


@pytest.mark.parametrize("name", RTC)
def test_rtc_holds_the_first_actions_to_the_prefix_and_keeps_the_mode(name):
    """Mutations caught: inpaint not reaching _sample (no gain); the guidance added with the wrong sign or to
    x instead of v (the chunk leaves the prefix); the prefix not normalised by the base class (the guide pulls
    to a shifted target); residual_flow guiding in target units while it integrates in its coordinates (with
    the default absolute coordinates this shows only via the base; see the residual-coordinates test);
    one-step selection keeping the farthest candidates, or K' = min(K, candidates) instead of max (no choice
    left at K = 1)."""
    dec, batch = trained(name), draws()
    free, held = pair(dec, batch)
    err_free, err_held = rms(free[:, :DELAY], batch.target[:, :DELAY]), rms(held[:, :DELAY], batch.target[:, :DELAY])
    assert err_free > FACTOR[name] * err_held, f"{name}: prefix error {err_free:.3f} -> {err_held:.3f}"
    before, after = switched(free, batch, DELAY), switched(held, batch, DELAY)
    assert before > 0.35, f"{name} learned one mode only (switch rate {before:.2f}): the check would be vacuous"
    assert after < before - 0.1, f"{name}: mode switching {before:.2f} -> {after:.2f}"


@pytest.mark.parametrize("name", ITERATIVE)
def test_tiny_beta_gives_the_unguided_chunk(name):
    """Mutations caught: the clip at beta not applied (at t = 0 the unclipped weight is infinite); the guided
    integrator drawing its noise or its time grid differently from the unguided one."""
    dec, batch = trained(name), draws(64)
    free, held = pair(dec, batch, beta=1e-7)
    torch.testing.assert_close(held, free, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ONE_STEP)
def test_one_candidate_gives_the_unguided_chunk(name):
    """Mutation caught: the one-step route drawing its candidates' noise differently from sample() (then
    candidates=1, K=1 would not reproduce the unguided draw)."""
    dec, batch = trained(name), draws(64)
    free, held = pair(dec, batch, candidates=1)
    torch.testing.assert_close(held, free, rtol=0, atol=0)


@pytest.mark.parametrize("name", RTC)
def test_k_samples_follow_their_own_rows_prefix(name):
    """One observation twice, its two rows held to opposite modes; K = 4 samples each (one-step decoders keep
    the 4 closest of K' = 64). At least 7 of the 8 samples must sit nearer their own row's mode than the other
    row's, over the whole chunk (one may stray: which one depends on the briefly trained decoder's float
    rounding, which differs between CPUs). Mutations caught: the prefix tiled over K (prefix.repeat: half of
    each row's samples follow the other row's prefix, 4 of 8) instead of repeated per row like cond; the
    one-step gather mixing rows."""
    dec, one = trained(name), draws(1, seed=11)
    cond = one.cond.expand(2, -1)
    prefix = one.modes[0]  # [2, T, D]: row 0 the up ramp, row 1 the down ramp
    inp = Inpaint(prefix, DELAY, EXEC, candidates=64)
    y = dec.sample(cond, 4, generator=torch.Generator().manual_seed(3), inpaint=inp)
    assert y.shape == (2, 4, T, 2)
    own = (y - prefix[:, None]).square().flatten(2).mean(-1)  # [2, K]
    other = (y - prefix.flip(0)[:, None]).square().flatten(2).mean(-1)
    assert (own < other).sum() >= 7, f"{name}: own {own.tolist()}, other {other.tolist()}"


@pytest.mark.parametrize("name", ["flow", "drift"])
def test_inpaint_works_under_inference_mode(name):
    """Decision: inpainted sampling works under torch.inference_mode() (serving code uses it): Decoder.sample
    leaves inference mode for the guided part, on clones of its inputs, and gives the same result as under
    no_grad. Mutation caught: that exit removed (autograd.grad fails under inference mode, or the inference
    tensors cannot be saved for backward)."""
    dec, batch = trained(name), draws(16)
    options = {"noise_steps": 2} if name == "drift" else {}
    inp = Inpaint(batch.target, DELAY, EXEC, **options)
    want = dec.sample(batch.cond, 2, generator=torch.Generator().manual_seed(4), inpaint=inp)
    with torch.inference_mode():
        cond = batch.cond.clone()  # an inference tensor, as a server's would be
        got = dec.sample(cond, 2, generator=torch.Generator().manual_seed(4),
                         inpaint=Inpaint(batch.target.clone(), DELAY, EXEC, **options))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", ["flow", "drift"])
def test_inpainting_leaves_no_gradients_on_the_weights(name):
    """Mutation caught: loss.backward() (or autograd.grad over the parameters) inside the guidance or the
    noise steps: the network's .grad would fill up between training steps."""
    dec, batch = trained(name), draws(8)
    dec.zero_grad(set_to_none=True)
    dec.sample(batch.cond, 2, inpaint=Inpaint(batch.target, DELAY, EXEC, noise_steps=2))
    assert all(p.grad is None for p in dec.parameters())


def test_noise_steps_lower_the_prefix_distance():
    """Mutation caught: the noise steps ascending the distance (a sign error) or not feeding back into the
    returned samples."""
    dec, batch = trained("drift"), draws(64)
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    inp = lambda n: Inpaint(batch.target, DELAY, EXEC, noise_steps=n)  # noqa: E731
    w = soft_mask(T, DELAY, EXEC)
    sel = dec.sample(batch.cond, 1, generator=gen(), inpaint=inp(0))
    opt = dec.sample(batch.cond, 1, generator=gen(), inpaint=inp(10))
    assert prefix_distance(opt, batch.target, w).mean() < 0.8 * prefix_distance(sel, batch.target, w).mean()


# ---- units and coordinates (untrained nets, targets far from the identity) ---------------------------------------
@pytest.mark.parametrize("name, options", [("flow", {}), ("residual_flow", {"parameterization": "absolute"}),
                                           ("residual_flow", {"parameterization": "residual", "source_std": 0.3})],
                         ids=["flow", "residual_flow-absolute", "residual_flow-residual"])
def test_guidance_reaches_a_prefix_in_action_units(name, options):
    """Targets with mean 5 and std 3: an untrained field with strong guidance must land on the prefix, in action
    units. Mutations caught: the prefix handed to the decoder unnormalised (or normalised twice); residual_flow
    guiding toward the prefix in normalised target units while it integrates in (x - b) / sigma coordinates
    (the residual case); the base prediction missing from to_coords."""
    torch.manual_seed(0)
    dec = driftkit.make_decoder(name, 4, (T, 2), hidden_dim=32, depth=1, **options).eval()
    dec.fit_normalizer(5 + 3 * torch.randn(512, T, 2, generator=torch.Generator().manual_seed(1)))
    cond, prefix = torch.randn(3, 4), 5 + 3 * torch.randn(3, T, 2, generator=torch.Generator().manual_seed(2))
    y = dec.sample(cond, 2, inpaint=Inpaint(prefix, DELAY, EXEC, beta=10.0))
    free = dec.sample(cond, 2)
    err = rms(y[:, :, :DELAY], prefix[:, None, :DELAY])
    assert err < 0.1 * rms(free[:, :, :DELAY], prefix[:, None, :DELAY]) and err < 0.3, err


# ---- expert net with a padded [B, L, C] cond ------------------------------------------------------------------
@pytest.mark.parametrize("name", RTC)
def test_inpaint_with_a_padded_sequence_cond(name):
    """Expert net, cond [2, 6, 12] left padded by cond_mask, K = 3. Mutations caught: the guided or selecting
    path dropping cond_mask (the garbage in padded rows would change the output) or not repeating it over K or
    K' (shape errors in attention)."""
    torch.manual_seed(0)
    dec = driftkit.make_decoder(name, 12, (T, 2), net="expert", hidden_dim=32, depth=1).eval()
    dec.fit_normalizer(torch.randn(64, T, 2, generator=torch.Generator().manual_seed(1)))
    mask = torch.arange(6)[None] >= torch.tensor([[2], [0]])  # row 0 has 2 padded positions
    cond = torch.randn(2, 6, 12)
    garbage = torch.where(mask[..., None], cond, 1e3 * torch.randn(2, 6, 12))
    inp = Inpaint(torch.randn(2, T, 2), DELAY, EXEC, noise_steps=1)
    a = dec.sample(cond, 3, generator=torch.Generator().manual_seed(0), cond_mask=mask, inpaint=inp)
    b = dec.sample(garbage, 3, generator=torch.Generator().manual_seed(0), cond_mask=mask, inpaint=inp)
    assert a.shape == (2, 3, T, 2) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


# ---- refusals -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(set(DECODERS) - set(RTC)))
def test_decoders_without_rtc_raise_naming_themselves(name):
    """Mutations caught: a decoder without support silently ignoring inpaint (its chunk would not follow the
    prefix), or the error not naming it."""
    dec = driftkit.make_decoder(name, 4, (3, 2), hidden_dim=16, depth=1)
    dec.fit_normalizer(torch.randn(64, 3, 2, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match=f"decoder '{name}' cannot inpaint"):
        dec.sample(torch.randn(2, 4), inpaint=Inpaint(torch.zeros(2, 3, 2), 1, 1))


def test_prefix_of_the_wrong_shape_is_refused_naming_both():
    """Mutation caught: the prefix's batch or (T, D) not checked against cond and target_shape (a [1, T, D]
    prefix would broadcast over a batch of 3, a wrong T would fail deep inside the integrator)."""
    dec = driftkit.make_decoder("flow", 4, (T, 2), hidden_dim=16, depth=1)
    for shape in [(1, T, 2), (3, T + 1, 2), (3, T, 3)]:
        with pytest.raises(ValueError, match=r"inpaint prefix has shape \[" + ", ".join(map(str, shape))):
            dec.sample(torch.randn(3, 4), inpaint=Inpaint(torch.zeros(shape), 1, 1))
    with pytest.raises(TypeError, match="driftkit.rtc.Inpaint"):
        dec.sample(torch.randn(3, 4), inpaint=torch.zeros(3, T, 2))


# ---- the policy contract ---------------------------------------------------------------------------------------
S, H, D_POLICY = 3, 4, 2


def policy_stats() -> dict:
    g = torch.Generator().manual_seed(1)
    mean, std = 3 * torch.randn(D_POLICY, generator=g), torch.rand(D_POLICY, generator=g) + 0.5
    return {"action": NormStats(mean=mean, std=std, q01=mean - 2 * std, q99=mean + 2 * std),
            "observation.state": NormStats(mean=torch.zeros(S), std=torch.ones(S), q01=-torch.ones(S) * 2,
                                           q99=torch.ones(S) * 2)}


def check_policy_inpaints(policy, obs, b: int) -> None:
    """predict(obs, inpaint=) of an iterative decoder lands nearer the prefix than without; a one-step decoder's
    equals the candidate closest to the prefix (in the decoder's normalised units) among sample(obs, K' = 8)
    drawn from the same generator."""
    prefix = policy_stats()["action"].mean + torch.randn(b, H, D_POLICY, generator=torch.Generator().manual_seed(9))
    inp = Inpaint.from_previous(prefix, horizon=H, delay=1, execution_horizon=2)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    held = policy.predict(obs, num_samples=2, generator=gen(), inpaint=inp, select="keystone")
    assert held.shape == (b, H, D_POLICY)
    if policy.decoder.name in ONE_STEP:
        first = policy.predict(obs, generator=gen(), inpaint=inp)
        candidates = policy.sample(obs, inp.candidates, generator=gen())
        norm = policy.decoder.normalizer.normalize
        index = closest_to_prefix(norm(candidates), norm(prefix), inp.weights()).index
        torch.testing.assert_close(first, candidates[torch.arange(b), index])
        return
    free = policy.predict(obs, num_samples=2, generator=gen())
    assert rms(held[:, :1], prefix[:, :1]) < 0.5 * rms(free[:, :1], prefix[:, :1])


@pytest.mark.parametrize("decoder", ["flow", "residual_drift"])
def test_state_policy_predict_with_inpaint(decoder):
    """Mutations caught: Policy.predict or Policy.sample not forwarding inpaint to the decoder; the one-step
    route's prefix normalised against the wrong statistics (the stats here are far from the identity), or its
    candidates not returned closest first."""
    torch.manual_seed(0)
    config = StatePolicyConfig(state_dim=S, action_dim=D_POLICY, horizon=H, num_tasks=2, task_embed_dim=8,
                               hidden_dim=32, cond_dim=32, decoder=decoder,
                               decoder_options={"hidden_dim": 32, "depth": 1})
    policy = StatePolicy(config)
    policy.set_stats(policy_stats())
    obs = {"observation.state": torch.randn(2, S, generator=torch.Generator().manual_seed(0)),
           "task_index": torch.arange(2)}
    check_policy_inpaints(policy.eval(), obs, 2)


def test_vlm_policy_predict_with_inpaint():
    """A tiny SmolVLM policy (query cond, flow decoder). Mutation caught: the VLM policy's sample path not
    forwarding inpaint (it shares Policy.sample; an override without the keyword would raise TypeError)."""
    torch.manual_seed(0)
    config = VLMPolicyConfig(backbone="smolvlm-tiny", num_query_tokens=4, cond="query", decoder="flow",
                             decoder_options={"hidden_dim": 32, "depth": 1}, horizon=H, action_dim=D_POLICY,
                             state_dim=S, cameras=(CAMERA,))
    policy = make_policy(config)
    policy.set_stats(policy_stats())
    obs = {CAMERA: camera(2, 0), "task": ["pick up the red cube", "go"],
           "observation.state": torch.randn(2, S, generator=torch.Generator().manual_seed(0))}
    check_policy_inpaints(policy.eval(), obs, 2)


@pytest.mark.parametrize("name", ["residual_flow", "residual_drift"])
def test_sample_with_an_external_base_inpaints(name):
    """The FAST policy's route (base="external", sample_with_base). Mutations caught: sample_with_base not
    forwarding inpaint; the external base not cloned / normalised like cond (it is mapped into the refiner's
    coordinates with the prefix); residual_drift's candidates not returned closest first."""
    torch.manual_seed(0)
    dec = driftkit.make_decoder(name, 4, (T, 2), base="external", hidden_dim=32, depth=1, source_std=0.5).eval()
    dec.fit_normalizer(5 + 3 * torch.randn(512, T, 2, generator=torch.Generator().manual_seed(1)))
    cond = torch.randn(3, 4)
    base = 5 + 3 * torch.randn(3, T, 2, generator=torch.Generator().manual_seed(2))
    prefix = base + torch.randn(3, T, 2, generator=torch.Generator().manual_seed(3))
    inp = Inpaint(prefix, DELAY, EXEC)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    held = dec.sample_with_base(cond, base, 2, generator=gen(), inpaint=inp)
    assert held.shape == (3, 2, T, 2)
    if name == "residual_flow":
        free = dec.sample_with_base(cond, base, 2, generator=gen())
        assert rms(held[:, :, :DELAY], prefix[:, None, :DELAY]) < 0.2 * rms(free[:, :, :DELAY], prefix[:, None, :DELAY])
        return
    candidates = dec.sample_with_base(cond, base, inp.candidates, generator=gen())
    norm = dec.normalizer.normalize
    kept, _ = rank_by_prefix(norm(candidates), norm(prefix), inp.weights(), keep=2)
    torch.testing.assert_close(norm(held), kept)


def test_fast_policy_predict_with_inpaint():
    """A tiny FAST policy (Qwen2.5-VL tiny, residual_flow refiner around the decoded FAST tokens). Mutation
    caught: FASTPolicy.sample not forwarding inpaint to sample_with_base."""
    from driftkit.policy import FASTPolicy, FASTPolicyConfig
    from driftkit.train.data import SyntheticChunkDataset

    torch.manual_seed(0)
    config = FASTPolicyConfig(backbone="qwen2_5_vl-tiny", num_query_tokens=2, cond="query",
                              decoder_options={"hidden_dim": 32, "depth": 1, "steps": 3}, fast_vocab_size=64,
                              fast_scale=5.0, horizon=H, action_dim=D_POLICY, state_dim=S, cameras=(CAMERA,))
    data = SyntheticChunkDataset(64, config, seed=0)
    policy = FASTPolicy.for_training(config.with_data(data), data).eval()
    obs = {CAMERA: torch.rand(2, *policy.config.image_shape, generator=torch.Generator().manual_seed(0)),
           "task": ["pick up the red cube", "go"],
           "observation.state": torch.randn(2, S, generator=torch.Generator().manual_seed(0))}
    prefix = torch.randn(2, H, D_POLICY, generator=torch.Generator().manual_seed(9))
    inp = Inpaint(prefix, 1, 2)
    free = policy.predict(obs, generator=torch.Generator().manual_seed(0))
    held = policy.predict(obs, generator=torch.Generator().manual_seed(0), inpaint=inp)
    assert held.shape == (2, H, D_POLICY)
    assert rms(held[:, :1], prefix[:, :1]) < 0.5 * rms(free[:, :1], prefix[:, :1])
