"""The demo trains through the project's one training loop (driftkit.train.train): every trained entry leaves a
trainer run under <out>/runs/<task>/<label>, whose checkpoint driftkit.policy.load_policy opens as the decoder
the demo scored, with the demo's optimisation (Adam, cosine to 0 without warm-up) and normaliser statistics."""

import pytest
import torch

from driftkit.demo.runner import STATS_DRAWS, TrainSettings
from driftkit.demo.suite import Entry, SuiteSettings, run_suite
from driftkit.demo.tasks import make_task
from driftkit.normalize import NormStats
from driftkit.policy import load_policy
from driftkit.train import list_checkpoints, read_metrics
from driftkit.train.checkpoint import read_train_config

TASK = "precision"
STEPS = 12
ENTRIES = [
    Entry("regression", "regression"),
    Entry("flow", "flow"),
    Entry("flow (1 step)", "flow", steps=1, reuse="flow"),
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A tiny suite run twice into the same folder: a rerun replaces the earlier runs, as it does results.md."""
    out = tmp_path_factory.mktemp("demo")
    settings = SuiteSettings(tasks=(TASK,), train=TrainSettings(steps=STEPS, batch_size=32, hidden_dim=16, depth=1),
                             eval_samples=32, k=2, out_dir=str(out))
    run_suite(settings, ENTRIES, progress=False)
    return out, settings, run_suite(settings, ENTRIES, progress=False)


def test_demo_checkpoints_load_as_the_decoders_it_scored(demo):
    """Mutation caught: the scored decoder not being the one the trainer saved (e.g. models[key] fitted by a
    private loop, or taken from a policy other than result.policy); also a rerun failing on the earlier run's
    checkpoints (run directory not replaced) and a reuse row training a model of its own."""
    out, _, run = demo
    runs = out / "runs" / TASK
    assert sorted(p.name for p in runs.iterdir()) == ["flow", "regression"]
    assert len(run.rows) == len(ENTRIES)
    cond = make_task(TASK).sample(16, torch.Generator().manual_seed(7)).cond
    for label in ("regression", "flow"):
        [checkpoint] = list_checkpoints(runs / label)
        assert checkpoint.name == f"step_{STEPS:08d}" and run.checkpoints[(TASK, label)] == checkpoint
        loaded = load_policy(checkpoint, kind="cond", decoder=label).decoder
        scored = run.models[(TASK, label)]
        same = [m.sample(cond, 4, generator=torch.Generator().manual_seed(0)) for m in (scored, loaded)]
        assert torch.equal(*same), label


def test_demo_training_keeps_its_optimisation_and_normaliser_statistics(demo):
    """The trainer runs Adam (AdamW, no weight decay, Adam's betas) without clipping or warm-up, its lr is
    CosineAnnealingLR(T_max=steps), and the action statistics come from the 4096 draws made before the
    training data. Mutation caught: the trainer's defaults (warm-up, min_lr_ratio 0.1, betas 0.95, decay 1e-4,
    clipping) left in place, or the dataset without `.stats` (statistics then computed over the training data)."""
    out, settings, run = demo
    run_dir = out / "runs" / TASK / "flow"
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=settings.train.lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS)
    lrs = []
    for _ in range(STEPS):
        opt.step()
        cosine.step()
        lrs.append(cosine.get_last_lr()[0])
    logged = read_metrics(run_dir)
    assert [row["step"] for row in logged] == [10, STEPS]
    assert all(row["lr"] == pytest.approx(lrs[row["step"] - 1], abs=1e-12) for row in logged)
    [checkpoint] = list_checkpoints(run_dir)
    policy = load_policy(checkpoint)
    train = read_train_config(checkpoint)
    assert train["optim"] == {"lr": settings.train.lr, "weight_decay": 0.0, "betas": [0.9, 0.999], "grad_clip": 0.0,
                              "batch_size": 32}
    assert train["schedule"] == {"steps": STEPS, "warmup_steps": 0, "decay": "cosine", "min_lr_ratio": 0.0}
    target = make_task(TASK).sample(STATS_DRAWS, torch.Generator().manual_seed(settings.train.seed)).target
    want = NormStats.from_data(target)
    for name in ("mean", "std", "q01", "q99"):
        assert torch.equal(getattr(policy.decoder.normalizer, name), getattr(want, name)), name
        assert torch.equal(getattr(run.models[(TASK, "flow")].normalizer, name), getattr(want, name)), name
