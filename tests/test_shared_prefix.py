"""The condition is projected once per observation and shared by every sample and step (driftkit.nets.base).

Oracles: (1) each net with samples = S equals the same net's maths written with torch's own modules on cond
repeated S times (nn.MultiheadAttention for the expert, the full input Linear for the MLP); (2) every
registered decoder, on both nets, gives the same loss, gradients, samples and inpainted samples as a twin whose
nets are wrapped to repeat cond explicitly (the pre-sharing behaviour) with the same weights and noise;
(3) no net call sees more rows of cond than there are observations, and each net projects cond at most once
per loss() or sample() call, whatever the number of steps.
"""

from __future__ import annotations

import copy

import pytest
import torch

import driftkit.decoders.lm_tokens  # noqa: F401  (registers "lm_tokens")
import driftkit.nets.expert  # noqa: F401  (registers "expert")
from driftkit import list_decoders, make_decoder
from driftkit.nets import ChunkNet, NetSpec, Prefix, make_net
from driftkit.nets.mlp import sinusoidal_embedding
from driftkit.ops import repeat_samples
from driftkit.rtc import Inpaint

T, D, C, L, B = 3, 2, 12, 8, 3
NAMES = sorted(list_decoders())
VARIANTS = {"discrete_flow (velocity head)": ("discrete_flow", {"velocity": "head"})}
CASES = NAMES + sorted(VARIANTS)  # decoder names, plus options whose sampling takes another route


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def close(a, b, what=""):
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=lambda m: f"{what}: {m}")


def prefix_mask() -> torch.Tensor:
    """[B, L]: a different left padding per observation (the last T * D rows stay real for lm_tokens), so a
    mask broadcast to the wrong observation changes the output."""
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, :2] = False
    mask[2, :1] = False
    return mask


def spec(in_dim=D, use_time=True) -> NetSpec:
    return NetSpec(cond_dim=C, horizon=T, in_dim=in_dim, out_dim=D, use_time=use_time, hidden_dim=32, depth=2)


# ---- 1. each net against its maths on repeated cond ---------------------------------------------------------
def reference_expert(net, cond, x, t, cond_mask):
    """The expert through nn.MultiheadAttention, one row of cond per row of x (the forward before sharing)."""
    h = net.steps[None] + net.x_in(x) + net.t_in(sinusoidal_embedding(t, net.time_dim))[:, None]
    context, pad = net.cond_in(cond), None if cond_mask is None else ~cond_mask
    for block in net.blocks:
        y = block.norm_self(h)
        h = h + block.self_attn(y, y, y, need_weights=False)[0]
        y = block.norm_cross(h)
        h = h + block.cross_attn(y, context, context, key_padding_mask=pad, need_weights=False)[0]
        h = h + block.ff(block.norm_ff(h))
    return net.out(h)


def reference_mlp(net, cond, x, t):
    h = net.inp(torch.cat([cond, x.flatten(1), sinusoidal_embedding(t, net.time_dim)], dim=-1))
    return net.out(net.blocks(h)).view(x.shape[0], T, D)


@pytest.mark.parametrize("samples", [1, 4])
@pytest.mark.parametrize("masked", [False, True])
def test_expert_with_samples_equals_multihead_attention_on_repeated_cond(samples, masked):
    """Mutations caught: the query, key or value slice of in_proj swapped; heads split another way than
    nn.MultiheadAttention's; the S samples folded sample-major ([S, B] instead of [B, S]); the key mask
    broadcast to the wrong observation, inverted or dropped; the output projection skipped."""
    torch.manual_seed(0)
    net = make_net("expert", spec()).eval()
    cond, n = torch.randn(B, L, C), B * samples
    x, t = torch.randn(n, T, D), torch.rand(n)
    mask = prefix_mask() if masked else None
    want = reference_expert(net, repeat_samples(cond, samples), x, t, repeat_samples(mask, samples))
    close(net(cond, x, t, cond_mask=mask, samples=samples), want, "expert")
    close(net(net.prefix(cond, mask), x, t, samples=samples), want, "expert from a Prefix")


@pytest.mark.parametrize("samples", [1, 4])
def test_mlp_with_samples_equals_its_input_layer_on_repeated_cond(samples):
    """Mutations caught: the cond columns of the input layer taken from the wrong end, the bias added twice
    or not at all, the projected cond broadcast to the wrong samples (repeat instead of repeat_interleave)."""
    torch.manual_seed(0)
    net = make_net("mlp", spec()).eval()
    cond, n = torch.randn(B, C), B * samples
    x, t = torch.randn(n, T, D), torch.rand(n)
    close(net(cond, x, t, samples=samples), reference_mlp(net, repeat_samples(cond, samples), x, t), "mlp")


# ---- 2. every decoder against an explicitly repeating twin --------------------------------------------------
class Repeating(ChunkNet):
    """Wraps a net to repeat cond S times and evaluate one sample per row: the behaviour before sharing."""

    name = "repeating"

    def __init__(self, inner: ChunkNet):
        super().__init__(inner.spec)
        self.inner = inner

    def project(self, cond, cond_mask):
        return (cond, cond_mask)  # nothing shared ahead

    def evaluate(self, prefix: Prefix, x, t, samples):
        cond, cond_mask = prefix.memory
        return self.inner(repeat_samples(cond, samples), x, t, cond_mask=repeat_samples(cond_mask, samples))


def repeating_twin(dec):
    twin = copy.deepcopy(dec)
    for parent in list(twin.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, ChunkNet) and not isinstance(child, Repeating):
                setattr(parent, child_name, Repeating(child))
    return twin


def decoder(case: str, net: str):
    name, opts = VARIANTS.get(case, (case, {}))
    torch.manual_seed(0)
    opts = {"base": "regression", **opts} if name.startswith("residual") else dict(opts)
    dec = make_decoder(name, cond_dim=C, target_shape=(T, D), net=net, hidden_dim=32, depth=2, **opts)
    dec.fit_normalizer(torch.randn(32, T, D))
    return dec


def inputs(net: str):
    g = torch.Generator().manual_seed(1)
    if net == "expert":
        return torch.randn(B, L, C, generator=g), prefix_mask(), torch.randn(B, T, D, generator=g)
    return torch.randn(B, C, generator=g), None, torch.randn(B, T, D, generator=g)


def run(dec, cond, cond_mask, target) -> dict:
    """Loss, gradients (parameters and cond), samples and (where supported) inpainted samples."""
    cond = cond.clone().requires_grad_(True)
    dec.train()
    torch.manual_seed(5)
    loss = dec.loss(cond, target, cond_mask=cond_mask).loss
    loss.backward()
    out = {"loss": loss.detach(), "cond_grad": cond.grad}
    out["grads"] = [torch.zeros(()) if p.grad is None else p.grad for p in dec.parameters()]
    dec.eval()
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    out["samples"] = dec.sample(cond.detach(), 4, generator=gen(), cond_mask=cond_mask)
    if dec.supports_inpaint:
        request = Inpaint(prefix=torch.randn(B, T, D), delay=1, execution_horizon=1, candidates=3, noise_steps=2)
        out["inpaint"] = dec.sample(cond.detach(), 2, generator=gen(), cond_mask=cond_mask, inpaint=request)
    return out


@pytest.mark.parametrize("net", ["expert", "mlp"])
@pytest.mark.parametrize("name", CASES)
def test_shared_prefix_equals_repeated_cond(name, net):
    """Mutations caught: a decoder's noise drawn in another row layout than the samples it is paired with
    (e.g. [K, B] against cond's [B, K]); samples= not passed (a row-count error) or passed where x has one row
    per observation; a residual base not repeated with the samples; drift's G training samples or the
    inpainting candidates sharing the prefix wrongly; gradients not reaching the shared projection."""
    dec = decoder(name, net)
    twin = repeating_twin(dec)
    got, want = run(dec, *inputs(net)), run(twin, *inputs(net))
    for key in ("loss", "cond_grad", "samples", "inpaint"):
        if key in want:
            close(got[key], want[key], f"{name} on {net}: {key}")
    assert len(got["grads"]) == len(want["grads"])
    for i, (a, b) in enumerate(zip(got["grads"], want["grads"])):
        close(a, b, f"{name} on {net}: gradient of parameter {i}")


# ---- 3. no copies, one projection per call -----------------------------------------------------------------
def watch(dec) -> dict:
    """Record the rows of cond each net call sees and count each net's projections."""
    seen = {"rows": [], "projections": {}}
    for module in dec.modules():
        if not isinstance(module, ChunkNet):
            continue

        def count(cond, cond_mask, _net=module, _project=module.project):
            seen["projections"][id(_net)] = seen["projections"].get(id(_net), 0) + 1
            return _project(cond, cond_mask)

        module.project = count
        module.register_forward_pre_hook(lambda m, args: seen["rows"].append(
            args[0].rows if isinstance(args[0], Prefix) else args[0].shape[0]))
    return seen


@pytest.mark.parametrize("name", CASES)
def test_no_net_call_sees_a_repeated_prefix_and_each_projects_once(name):
    """Mutations caught: a decoder still repeating cond (repeat_samples(cond, k)) before a net call; a
    multi-step sampler (Euler, CTMC, noise refinement) handing the raw cond to every step, which projects it
    again at each step."""
    dec = decoder(name, "expert").eval()
    cond, mask, target = inputs("expert")
    seen = watch(dec)
    dec.sample(cond, 5, steps=4, cond_mask=mask)
    assert set(seen["rows"]) <= {B}, f"{name}: a net saw {sorted(set(seen['rows']))} rows of cond, not B={B}"
    assert all(n == 1 for n in seen["projections"].values()), f"{name}: projections per net {seen['projections']}"
    if dec.supports_inpaint:
        seen["projections"].clear()
        request = Inpaint(prefix=torch.randn(B, T, D), delay=1, execution_horizon=1, noise_steps=3)
        dec.sample(cond, 2, steps=4, cond_mask=mask, inpaint=request)
        assert all(n == 1 for n in seen["projections"].values()), f"{name}: {seen['projections']} with inpaint"
    dec.train()
    dec.loss(cond, target, cond_mask=mask)
    assert set(seen["rows"]) <= {B}, f"{name}: a training call saw {sorted(set(seen['rows']))} rows of cond"


# ---- 4. bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("net_name", ["expert", "mlp"])
def test_rows_of_x_and_t_must_be_b_times_samples(net_name):
    net = make_net(net_name, spec())
    cond = torch.randn(2, C)
    with pytest.raises(ValueError, match=r"x of shape \[5, 3, 2\], expected \[4, 3, 2\].*B=2.*samples=2"):
        net(cond, torch.randn(5, T, D), torch.rand(4), samples=2)
    with pytest.raises(ValueError, match=r"t of shape \[2\], expected \[4\]"):
        net(cond, torch.randn(4, T, D), torch.rand(2), samples=2)
    with pytest.raises(ValueError, match=r"t of shape None"):
        net(cond, torch.randn(2, T, D))
    with pytest.raises(ValueError, match=r"needs x \[B \* S, T, 2\]"):
        net(cond, None, torch.rand(2))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=rf"samples={bad!r}, must be an int >= 1"):
            net(cond, torch.randn(2, T, D), torch.rand(2), samples=bad)


def test_a_prefix_carries_its_mask_and_belongs_to_its_net():
    net, other = make_net("expert", spec()), make_net("expert", spec())
    cond, mask = torch.randn(B, L, C), prefix_mask()
    prefix = net.prefix(cond, mask)
    x, t = torch.randn(B, T, D), torch.rand(B)
    with pytest.raises(ValueError, match="the Prefix carries its own mask"):
        net(prefix, x, t, cond_mask=mask)
    with pytest.raises(ValueError, match="a Prefix built by another net"):
        other(prefix, x, t)
    with pytest.raises(ValueError, match=r"takes cond_mask \[N, L\] = \[3, 8\] bool, got shape \[3, 7\]"):
        net.prefix(cond, mask[:, 1:])
    with pytest.raises(ValueError, match=r"'mlp' takes pooled features cond \[N, C\] with C=12, got shape \[3, 8"):
        make_net("mlp", spec()).prefix(cond)
