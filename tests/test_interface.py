"""The one interface: every decoder keeps the same signatures, shapes, errors and save/load behaviour."""

import copy

import pytest
import torch

import driftkit
from driftkit.decoders.registry import DECODERS

NAMES = sorted(DECODERS)
SMALL = {"hidden_dim": 32, "depth": 1}


def _decoder(name, target_shape=(4, 2), cond_dim=6, **options):
    dec = driftkit.make_decoder(name, cond_dim=cond_dim, target_shape=target_shape, **{**SMALL, **options})
    dec.fit_normalizer(torch.randn(64, *target_shape, generator=torch.Generator().manual_seed(1)))
    return dec


def test_registry_lists_every_decoder_of_the_family():
    assert set(driftkit.list_decoders()) == {
        "regression", "tokens", "lm_tokens", "flow", "residual_flow", "drift", "residual_drift", "discrete_flow"
    }
    assert all(summary for summary in driftkit.list_decoders().values())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("target_shape", [(1, 2), (1, 4), (5, 3)], ids=["interval", "box", "chunk"])
def test_loss_and_sample_shapes_and_gradients(name, target_shape, gen):
    dec = _decoder(name, target_shape)
    cond, target = torch.randn(3, 6, generator=gen), torch.randn(3, *target_shape, generator=gen)
    out = dec.loss(cond, target)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss) and "loss" in out.metrics
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dec.parameters())
    assert dec.sample(cond, num_samples=4).shape == (3, 4, *target_shape)


@pytest.mark.parametrize("name", NAMES)
def test_sampling_is_reproducible_with_a_generator(name):
    dec = _decoder(name).eval()
    cond = torch.randn(2, 6)
    a = dec.sample(cond, 3, generator=torch.Generator().manual_seed(7))
    b = dec.sample(cond, 3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_save_then_load_gives_identical_outputs(name, tmp_path):
    dec = _decoder(name)
    opt = torch.optim.Adam(dec.parameters(), 1e-2)
    for _ in range(3):  # move away from initialisation (and step buffers of staged decoders)
        dec.loss(torch.randn(8, 6), torch.randn(8, 4, 2)).loss.backward()
        opt.step()
    dec.eval()
    driftkit.save_decoder(dec, tmp_path / "dec")
    loaded = driftkit.load_decoder(tmp_path / "dec").eval()
    cond = torch.randn(2, 6)
    a = dec.sample(cond, 3, generator=torch.Generator().manual_seed(3))
    b = loaded.sample(cond, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert loaded.config == dec.config


def test_load_checks_the_decoder_kind_and_files(tmp_path):
    driftkit.save_decoder(_decoder("flow"), tmp_path / "flow")
    with pytest.raises(ValueError, match="holds a 'flow' decoder, expected 'drift'"):
        driftkit.load_decoder(tmp_path / "flow", expect="drift")
    with pytest.raises(FileNotFoundError, match="config.json"):
        driftkit.load_decoder(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a driftkit decoder config"):
        driftkit.load_decoder(tmp_path / "bad")


def test_saving_over_an_existing_decoder_replaces_it_whole(tmp_path):
    first, second = _decoder("regression"), _decoder("regression")
    driftkit.save_decoder(first, tmp_path / "d")
    driftkit.save_decoder(second, tmp_path / "d")
    loaded = driftkit.load_decoder(tmp_path / "d")
    assert torch.equal(loaded.net.inp.weight, second.net.inp.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary or backup folder left


@pytest.mark.parametrize(
    "name,steps,expected",
    [("regression", None, 1), ("tokens", None, 1), ("flow", None, 10), ("flow", 1, 1), ("drift", None, 1),
     ("residual_flow", None, 11), ("residual_flow", 4, 5), ("residual_drift", None, 2),
     ("discrete_flow", None, 16), ("discrete_flow", 6, 8)],
)
def test_nfe_counts_network_evaluations(name, steps, expected):
    dec = _decoder(name)
    calls = []
    for module in dec.modules():
        if isinstance(module, driftkit.nets.ChunkNet):
            module.register_forward_hook(lambda *a: calls.append(1))
    dec.sample(torch.randn(2, 6), num_samples=5, steps=steps)
    assert dec.nfe(steps) == expected == len(calls)


@pytest.mark.parametrize("name", NAMES)
def test_padded_target_entries_do_not_change_the_loss(name):
    dec = _decoder(name)
    cond, target = torch.randn(4, 6), torch.randn(4, 4, 2)
    mask = torch.ones(4, 4, 2, dtype=torch.bool)
    mask[:, 3:] = False
    mask[:, :, 1] = False
    other = target.clone()
    other[~mask] = 1e3
    twin = copy.deepcopy(dec)  # residual decoders update running statistics in each training call
    torch.manual_seed(0)
    a = dec.loss(cond, target, mask).loss
    torch.manual_seed(0)
    b = twin.loss(cond, other, mask).loss
    assert torch.allclose(a, b)


def test_unknown_decoder_and_options_are_named():
    with pytest.raises(ValueError, match="unknown decoder 'difusion'.*available"):
        driftkit.make_decoder("difusion", cond_dim=4, target_shape=(2, 2))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['step'\] for decoder 'flow'"):
        driftkit.make_decoder("flow", cond_dim=4, target_shape=(2, 2), step=5)


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("flow", {"steps": 0}, "steps=0"),
        ("flow", {"time_sampler": "logit_normal"}, "time_sampler='logit_normal'"),
        ("drift", {"grouping": "joint"}, "grouping='joint'"),
        ("drift", {"train_samples": 1}, "train_samples=1"),
        ("drift", {"temperatures": (0.1, -1.0)}, "temperatures="),
        ("tokens", {"num_bins": 0}, "num_bins=0"),
        ("residual_flow", {"base": "residual_drift"}, "base='residual_drift'"),
        ("residual_flow", {"parameterization": "log"}, "parameterization='log'"),
        ("residual_drift", {"source_std": -0.1}, "source_std=-0.1"),
        ("discrete_flow", {"path": "uniform"}, "path='uniform'"),
        ("regression", {"loss_type": "huber"}, "loss_type='huber'"),
        ("regression", {"normalization": "minmax"}, "normalization='minmax'"),
        ("regression", {"net": "transformer9"}, "net='transformer9'"),
    ],
)
def test_invalid_options_name_the_bad_value(name, options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        driftkit.make_decoder(name, cond_dim=4, target_shape=(2, 2), **options)


@pytest.mark.parametrize("shape", [(0, 2), (2, 0, 2), (2,), "x"])
def test_bad_target_shape_is_named(shape):
    with pytest.raises(ValueError, match="target_shape"):
        driftkit.make_decoder("flow", cond_dim=4, target_shape=shape)


@pytest.mark.parametrize("name", ["flow", "drift", "tokens"])
def test_bad_inputs_give_clear_errors(name):
    dec = _decoder(name)
    cond, target = torch.randn(3, 6), torch.randn(3, 4, 2)
    with pytest.raises(ValueError, match=r"cond has shape \[3, 5\], expected \[B, 6\]"):
        dec.loss(torch.randn(3, 5), target)
    with pytest.raises(ValueError, match=r"target has shape \[3, 4, 3\], expected \[3, 4, 2\]"):
        dec.loss(cond, torch.randn(3, 4, 3))
    with pytest.raises(ValueError, match=r"target has shape \[2, 4, 2\]"):
        dec.loss(cond, torch.randn(2, 4, 2))
    bad = target.clone()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"target contains 1 non-finite.*\(1, 2, 0\)"):
        dec.loss(cond, bad)
    bad_cond = cond.clone()
    bad_cond[0, 0] = float("inf")
    with pytest.raises(ValueError, match="cond contains 1 non-finite"):
        dec.sample(bad_cond)
    with pytest.raises(ValueError, match=r"mask has shape"):
        dec.loss(cond, target, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        dec.loss(cond, target, torch.ones(3, 4, 2))
    with pytest.raises(ValueError, match="num_samples=0"):
        dec.sample(cond, num_samples=0)
    with pytest.raises(TypeError, match="cond must be a torch.Tensor"):
        dec.sample(cond.numpy())


def test_non_finite_loss_raises_instead_of_training_on():
    dec = _decoder("regression")
    with torch.no_grad():
        dec.net.inp.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="regression loss is nan"):
        dec.loss(torch.randn(2, 6), torch.randn(2, 4, 2))


def test_weights_of_another_decoder_with_identical_tensors_are_refused(tmp_path):
    """flow and drift nets have the same parameter names and shapes; the decoder's name inside the weights
    still tells them apart."""
    driftkit.save_decoder(_decoder("flow"), tmp_path / "flow")
    driftkit.save_decoder(_decoder("drift"), tmp_path / "drift")
    (tmp_path / "flow" / "model.safetensors").replace(tmp_path / "drift" / "model.safetensors")
    with pytest.raises(ValueError, match="hold a 'flow' decoder, not 'drift'"):
        driftkit.load_decoder(tmp_path / "drift")
