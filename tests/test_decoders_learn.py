"""Each decoder learns a known distribution: generative decoders cover both modes of a two-mode chunk in the
right proportion, regression collapses to their mean, residual decoders beat their coarse base."""

import pytest
import torch

from driftkit.demo.runner import TrainSettings, evaluate, train_decoder
from driftkit.demo.tasks import make_task

pytestmark = pytest.mark.slow

# A 1-D chunk of 4 steps that ramps up or down with equal probability given the condition.
TASK = make_task("bimodal", horizon=4, steady_dim=False, cond_dim=4)
FAST = TrainSettings(steps=1000, batch_size=128, hidden_dim=64, depth=2, lr=2e-3)
# The modes sit 1.37 apart (RMS over the chunk) and their mean 0.68 from each: within 0.3 is on a mode.
TOL = 0.3

GENERATIVE = {
    "flow": {},
    "drift": {},
    "residual_flow": {},
    "residual_drift": {},
    "discrete_flow": {"num_bins": 64, "path": "mask"},
    "discrete_flow-metric": {"num_bins": 64, "path": "metric"},
}


@pytest.mark.parametrize("name", sorted(GENERATIVE))
def test_generative_decoder_covers_both_modes_in_proportion(name):
    dec = train_decoder(name.split("-")[0], TASK, FAST, **GENERATIVE[name])
    scores = evaluate(dec, TASK, n=400, k=4, tol=TOL)
    assert scores.on_mode > 0.7, scores
    assert all(0.35 < share < 0.65 for share in scores.mode_share), scores


def test_regression_collapses_to_the_mean_of_the_modes():
    dec = train_decoder("regression", TASK, FAST, loss_type="l2")
    scores = evaluate(dec, TASK, n=400, k=1, tol=TOL)
    assert scores.on_mode < 0.05, scores
    batch = TASK.sample(400, torch.Generator().manual_seed(5))
    mean = batch.modes.mean(dim=1)
    assert (dec.sample(batch.cond)[:, 0] - mean).abs().mean() < 0.1


@pytest.mark.parametrize("name", ["residual_flow", "residual_drift"])
def test_residual_refinement_beats_its_coarse_base_on_a_sharp_target(name):
    """A 4-bin token base quantises a staircase-shaped interval coarsely; the refiner (sampled at temperature 0,
    its central estimate) must cut the base's error."""
    task = make_task("precision")
    settings = TrainSettings(steps=800, batch_size=128, hidden_dim=64, depth=2, lr=2e-3)
    dec = train_decoder(name, task, settings, base="tokens", base_options={"num_bins": 4}, temperature=0.0)
    batch = task.sample(500, torch.Generator().manual_seed(9))
    refined = dec.sample(batch.cond)[:, 0]
    base = dec.normalizer.unnormalize(dec.base_prediction(batch.cond))
    rms = lambda x: (x - batch.target).square().flatten(1).mean(1).sqrt().mean().item()  # noqa: E731
    assert rms(refined) < 0.8 * rms(base), (rms(refined), rms(base))
