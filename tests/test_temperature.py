"""Sampling temperature is a per-call argument: sample(..., temperature=None) uses the config's own value,
any other value overrides it for that call only, and decoders without a temperature refuse one."""

import copy

import pytest
import torch

import driftkit
from driftkit.decoders.registry import DECODERS
from driftkit.demo.runner import evaluate
from driftkit.demo.tasks import make_task

SMALL = {"hidden_dim": 32, "depth": 1}
SHAPE = (4, 2)
CONTINUOUS = ["flow", "drift", "residual_flow", "residual_drift"]
TEMPERED = [*CONTINUOUS, "tokens", "lm_tokens"]
UNTEMPERED = ["regression", "discrete_flow"]
# Temperatures with a visibly growing spread for an untrained decoder: bin logits at initialisation are
# small, so the token decoders' softmax is already near uniform at temperature 1.
LADDER = {name: (0.0, 0.25, 1.0, 2.0) for name in CONTINUOUS} | {name: (0.0, 0.01, 0.1, 1.0)
                                                                 for name in ("tokens", "lm_tokens")}


def _decoder(name: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    dec = driftkit.make_decoder(name, cond_dim=6, target_shape=SHAPE, **{**SMALL, **options})
    dec.fit_normalizer(torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(1)))
    return dec.eval()


def _cond(b: int = 3) -> torch.Tensor:
    return torch.randn(b, 6, generator=torch.Generator().manual_seed(2))


def _gen(seed: int = 3) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_exactly_the_decoders_with_a_config_temperature_have_one():
    # Pins the classification the error rule depends on; catches a decoder gaining or losing its knob.
    assert {name for name in DECODERS if _decoder(name).has_temperature} == set(TEMPERED)


@pytest.mark.parametrize("name", TEMPERED)
def test_temperature_zero_gives_the_same_sample_for_every_k(name):
    """Mutation caught: _sample reading self.config.temperature (1 here) instead of its argument."""
    y = _decoder(name, temperature=1.0).sample(_cond(), 6, generator=_gen(), temperature=0.0)
    assert torch.equal(y, y[:, :1].expand_as(y))
    assert not torch.equal(y[0], y[1]), "rows of different conditions must still differ"


@pytest.mark.parametrize("name", TEMPERED)
@pytest.mark.parametrize("t", [0.0, 0.5])
def test_a_per_call_temperature_equals_a_config_with_that_temperature(name, t):
    """Mutations caught: the per-call value ignored or scaled differently from the config default (e.g. the
    noise multiplied by both), or resolve_temperature preferring the config over the argument."""
    default = _decoder(name, temperature=1.0)
    configured = _decoder(name, seed=1, temperature=t)
    configured.load_state_dict(default.state_dict())
    a = default.sample(_cond(), 4, generator=_gen(), temperature=t)
    b = configured.sample(_cond(), 4, generator=_gen())
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", TEMPERED)
def test_none_means_the_config_default(name):
    """Mutation caught: None resolved to a hard-coded value (1.0 or 0.0) rather than the config's 0.5."""
    dec = _decoder(name, temperature=0.5)
    implicit = dec.sample(_cond(), 4, generator=_gen())
    assert torch.equal(dec.sample(_cond(), 4, generator=_gen(), temperature=None), implicit)
    assert torch.equal(dec.sample(_cond(), 4, generator=_gen(), temperature=0.5), implicit)
    # Guards against a vacuous pass: temperature must matter at all for this decoder and seed.
    for other in (0.0, 1.0):
        assert not torch.equal(dec.sample(_cond(), 4, generator=_gen(), temperature=other), implicit)


@pytest.mark.parametrize("name", TEMPERED)
def test_a_larger_temperature_widens_the_spread_over_k(name):
    """Mutations caught: temperature ignored (constant spread) or inverted (noise divided by it)."""
    dec = _decoder(name, temperature=1.0)
    spread = [dec.sample(_cond(), 256, generator=_gen(), temperature=t).std(dim=1).mean().item()
              for t in LADDER[name]]
    assert spread[0] == 0.0
    assert all(lo < hi for lo, hi in zip(spread, spread[1:])), spread


@pytest.mark.parametrize("name", TEMPERED)
def test_a_call_leaves_the_config_untouched(name):
    """Mutation caught: overriding by writing decoder.config.temperature (the old callers' way) without
    restoring it, or swapping in a replaced config object."""
    dec = _decoder(name, temperature=0.5)
    config, before = dec.config, copy.deepcopy(dec.config)
    for t in (0.0, 2.0):
        dec.sample(_cond(), 2, generator=_gen(), temperature=t)
    assert dec.config is config and dec.config == before


@pytest.mark.parametrize("name", ["residual_flow", "residual_drift"])
def test_sample_with_base_threads_the_temperature(name):
    """Mutation caught: sample_with_base dropping its temperature (sampling at the config's 1.0), or mutating
    the config to apply it."""
    dec = _decoder(name, base="external", temperature=1.0)
    cond, base = _cond(), torch.randn(3, *SHAPE, generator=_gen(4))
    before = copy.deepcopy(dec.config)
    y = dec.sample_with_base(cond, base, 6, generator=_gen(), temperature=0.0)
    assert torch.equal(y, y[:, :1].expand_as(y))
    default = dec.sample_with_base(cond, base, 6, generator=_gen())
    assert torch.equal(dec.sample_with_base(cond, base, 6, generator=_gen(), temperature=None), default)
    assert not torch.equal(default, y)
    assert dec.config == before
    with pytest.raises(ValueError, match=r"got temperature=-1\.0, must be >= 0"):
        dec.sample_with_base(cond, base, temperature=-1.0)


@pytest.mark.parametrize("name", ["residual_flow", "residual_drift"])
def test_the_per_call_temperature_does_not_reach_the_base(name):
    """A tokens base at its own temperature 1 stays stochastic when the refiner is sampled at 0. Mutation
    caught: base_prediction forwarding the per-call temperature to the base (then two global seeds agree)."""
    dec = _decoder(name, base="tokens", base_options={"temperature": 1.0}, temperature=1.0)
    draws = []
    for seed in (10, 11):
        torch.manual_seed(seed)  # the base samples from the global generator
        draws.append(dec.sample(_cond(), 2, generator=_gen(), temperature=0.0))
    assert not torch.equal(draws[0], draws[1])


@pytest.mark.parametrize("name", UNTEMPERED)
@pytest.mark.parametrize("t", [0.5, 0.0])
def test_decoders_without_a_temperature_refuse_one(name, t):
    """Mutation caught: a value silently ignored by a decoder that has no temperature (0 included)."""
    dec = _decoder(name)
    with pytest.raises(ValueError, match=rf"decoder '{name}' has no sampling temperature; got temperature={t}"):
        dec.sample(_cond(), 2, temperature=t)
    assert dec.sample(_cond(), 2, temperature=None).shape == (3, 2, *SHAPE)


@pytest.mark.parametrize("name", TEMPERED)
@pytest.mark.parametrize(("t", "message"), [(-0.5, r"temperature=-0\.5, must be >= 0"),
                                             (float("inf"), r"temperature=inf, must be finite"),
                                             (float("nan"), r"temperature=nan, must be finite")])
def test_a_negative_or_non_finite_temperature_raises_naming_it(name, t, message):
    """Mutation caught: the >= 0 / finiteness check dropped (flow and tokens sample happily at -0.5)."""
    with pytest.raises(ValueError, match=message):
        _decoder(name).sample(_cond(), 2, temperature=t)


def test_demo_evaluation_at_a_temperature_matches_a_decoder_configured_with_it():
    """The demo's T=0 rows pass temperature= instead of swapping the config; the scores must be the ones a
    decoder whose config says 0 gets. Mutation caught: runner.evaluate not passing temperature to sample."""
    task = make_task("precision")
    default = driftkit.make_decoder("residual_flow", task.cond_dim, task.target_shape, **SMALL)
    configured = driftkit.make_decoder("residual_flow", task.cond_dim, task.target_shape, temperature=0.0, **SMALL)
    default.fit_normalizer(task.sample(256, _gen(5)).target)
    configured.load_state_dict(default.state_dict())
    a = evaluate(default.eval(), task, n=64, k=4, temperature=0.0)
    b = evaluate(configured.eval(), task, n=64, k=4)
    a.ms_per_chunk = b.ms_per_chunk = 0.0  # wall time is not a score
    assert a == b
    assert default.config.temperature == 1.0
