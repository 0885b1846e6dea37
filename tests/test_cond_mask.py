"""cond_mask: the padding of a [B, L, C] condition travels as an explicit mask, from every decoder to the net.

The expert net used to infer padding from rows of cond that were exactly zero. Now cond_mask [B, L] (True = a
real row) is the only record of padding: masked rows may hold anything finite, and a real row may be zero.
"""

from __future__ import annotations

import copy

import pytest
import torch

import driftkit
import driftkit.nets.expert  # noqa: F401  (registers "expert")
from driftkit.decoders.registry import DECODERS
from driftkit.nets import ChunkNet, NetSpec, Prefix, make_net

T, D, C, L = 3, 2, 12, 10  # L - 3 >= T * D: lm_tokens' query rows (the last T * D) stay real under MASK
NAMES = sorted(DECODERS)
RESIDUAL = ["residual_drift", "residual_flow"]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def left_padding(*pads: int, length: int = L) -> torch.Tensor:
    """[len(pads), length] bool: row i has its first pads[i] positions padded (VLM prompts are left padded)."""
    return torch.arange(length)[None] >= torch.tensor(pads)[:, None]


MASK = left_padding(3, 1)  # B = 2 rows with different padding


def with_garbage(cond: torch.Tensor, cond_mask: torch.Tensor, seed: int) -> torch.Tensor:
    """cond with large random values (finite, so cond passes its check) at the masked positions."""
    garbage = 1e3 * torch.randn(cond.shape, generator=torch.Generator().manual_seed(seed))
    return torch.where(cond_mask[..., None], cond, garbage)


def spec(depth: int = 2) -> NetSpec:
    return NetSpec(cond_dim=C, horizon=T, in_dim=D, out_dim=D, use_time=True, hidden_dim=32, depth=depth)


def decoder(name: str, **options):
    options = {"net": "expert", "hidden_dim": 32, "depth": 1, **options}
    dec = driftkit.make_decoder(name, cond_dim=C, target_shape=(T, D), **options)
    if options.get("base") != "external":
        dec.fit_normalizer(torch.randn(64, T, D, generator=torch.Generator().manual_seed(1)))
    return dec


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def differ(a, b, what: str):
    assert (a - b).abs().max() > 1e-4, what


# ---- the expert net ----------------------------------------------------------------------------------------
def test_expert_output_ignores_masked_values_and_follows_real_ones():
    """Mutations caught: the mask not handed to cross-attention (or only to the first of the 2 blocks): the
    garbage reaches the output; the mask inverted (key_padding_mask=cond_mask): the garbage is what is attended,
    and a change to a real row no longer shows; rows of the batch mixed up: row 1's change shows in row 0."""
    torch.manual_seed(0)
    net = make_net("expert", spec()).eval()
    cond, x, t = torch.randn(2, L, C), torch.randn(2, T, D), torch.rand(2)
    y = net(with_garbage(cond, MASK, 1), x, t, cond_mask=MASK)
    close(net(with_garbage(cond, MASK, 2), x, t, cond_mask=MASK), y)
    changed = cond.clone()
    changed[1, 5] += torch.randn(C)  # a real position of row 1 only (not a constant: cond_in LayerNorms rows)
    z = net(with_garbage(changed, MASK, 1), x, t, cond_mask=MASK)
    differ(z[1], y[1], "a real row of cond is ignored")
    close(z[0], y[0])  # rows of the batch do not see each other


def test_expert_attends_a_real_row_that_is_zero():
    """Mutation caught: padding inferred from zero rows again (alone or or-ed into ~cond_mask)."""
    torch.manual_seed(0)
    net = make_net("expert", spec()).eval()
    cond, x, t = torch.randn(2, 6, C), torch.randn(2, T, D), torch.rand(2)
    cond[:, 2] = 0.0  # a real state that happens to be zero
    real = torch.ones(2, 6, dtype=torch.bool)
    dropped = real.clone()
    dropped[:, 2] = False
    y = net(cond, x, t, cond_mask=real)
    differ(y, net(cond, x, t, cond_mask=dropped), "a zero-valued real row is treated as padding")
    differ(net(cond, x, t), net(cond, x, t, cond_mask=dropped), "a zero-valued row is dropped without a mask")
    close(net(cond, x, t), y)  # an all-True mask is no mask


def test_expert_refuses_a_mask_it_cannot_apply():
    net = make_net("expert", spec())
    x, t = torch.randn(2, T, D), torch.rand(2)
    with pytest.raises(ValueError, match=r"cond_mask \[N, L\] = \[2, 4\] bool, got shape \[2, 5\]"):
        net(torch.randn(2, 4, C), x, t, cond_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"cond_mask with cond of shape \[2, 12\]"):
        net(torch.randn(2, C), x, t, cond_mask=torch.ones(2, 1, dtype=torch.bool))


def test_mlp_net_keeps_the_common_signature():
    """The MLP takes pooled cond [N, C] only (it does not pool over L), so cond_mask has nothing to act on."""
    net = make_net("mlp", spec())
    cond, x, t = torch.randn(2, C), torch.randn(2, T, D), torch.rand(2)
    assert torch.equal(net(cond, x, t, cond_mask=None), net(cond, x, t))


# ---- every decoder -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_loss_and_sample_ignore_garbage_in_masked_rows(name):
    """Mutation caught, per decoder: cond_mask not threaded from loss()/sample() to a net call (the decoder's
    own, a repeated cond's in drift/residual_drift/discrete_flow, or the base decoder's in residual_*)."""
    torch.manual_seed(0)
    dec = decoder(name)
    cond, target = torch.randn(2, L, C), torch.randn(2, T, D)
    a, b = with_garbage(cond, MASK, 1), with_garbage(cond, MASK, 2)
    twin = copy.deepcopy(dec)  # residual decoders update sigma and their step in each training call
    torch.manual_seed(0)
    loss_a = dec.loss(a, target, cond_mask=MASK).loss
    torch.manual_seed(0)
    loss_b = twin.loss(b, target, cond_mask=MASK).loss
    close(loss_a, loss_b)
    dec.eval()

    def sample(c, cond_mask):
        return dec.sample(c, 3, generator=torch.Generator().manual_seed(5), cond_mask=cond_mask)

    close(sample(a, MASK), sample(b, MASK))
    if name != "lm_tokens":  # lm_tokens reads only the (real) query rows: garbage in the prefix never matters
        differ(sample(a, None), sample(b, None), "the garbage would change the samples if it were not masked")


@pytest.mark.parametrize("name", RESIDUAL)
def test_external_base_and_base_prediction_ignore_garbage_in_masked_rows(name):
    """Mutation caught: loss_with_base / sample_with_base / base_prediction dropping cond_mask."""
    torch.manual_seed(0)
    cond, target, base = torch.randn(2, L, C), torch.randn(2, T, D), torch.randn(2, T, D)
    a, b = with_garbage(cond, MASK, 1), with_garbage(cond, MASK, 2)
    dec = decoder(name, base="external")
    twin = copy.deepcopy(dec)
    torch.manual_seed(0)
    loss_a = dec.loss_with_base(a, target, base, cond_mask=MASK).loss
    torch.manual_seed(0)
    close(loss_a, twin.loss_with_base(b, target, base, cond_mask=MASK).loss)
    dec.eval()

    def sample(c, cond_mask):
        return dec.sample_with_base(c, base, 3, generator=torch.Generator().manual_seed(5), cond_mask=cond_mask)

    close(sample(a, MASK), sample(b, MASK))
    differ(sample(a, None), sample(b, None), "the garbage would change the refined samples if it were not masked")
    own = decoder(name).eval()  # base = regression
    close(own.base_prediction(a, MASK), own.base_prediction(b, MASK))
    differ(own.base_prediction(a), own.base_prediction(b), "the garbage would change the base if it were not masked")


def _record_net_calls(dec) -> list:
    """(cond, cond_mask) of every net call; a shared Prefix (driftkit.nets.Prefix) carries both."""
    calls = []

    def record(m, args, kwargs):
        c = args[0]
        calls.append((c.cond, c.cond_mask) if isinstance(c, Prefix) else (c, kwargs.get("cond_mask")))

    for module in dec.modules():
        if isinstance(module, ChunkNet):
            module.register_forward_pre_hook(record, with_kwargs=True)
    return calls


def _assert_aligned(calls, cond, cond_mask):
    """Every net call got a mask, and each of its rows carries the mask of the cond row it is a copy of."""
    for c, m in calls:
        assert m is not None, "a net call got no cond_mask"
        assert m.shape == c.shape[:2]
        for j in range(c.shape[0]):
            (i,) = [i for i in range(cond.shape[0]) if torch.equal(c[j], cond[i])]
            assert torch.equal(m[j], cond_mask[i]), f"net row {j} (a copy of cond row {i}) has another row's mask"


@pytest.mark.parametrize("name", NAMES)
def test_repeated_cond_keeps_each_rows_mask(name):
    """Mutations caught: the mask repeated another way than cond (cond_mask.repeat(k, 1), tiling, where cond is
    repeat_interleaved), not repeated at all, or not passed to some net call; in sample (K copies) and in loss
    (drift's and residual_drift's G = train_samples copies)."""
    torch.manual_seed(0)
    dec = decoder(name)
    cond = with_garbage(torch.randn(2, L, C), MASK, 1)
    calls = _record_net_calls(dec)
    dec.loss(cond, torch.randn(2, T, D), cond_mask=MASK)
    dec.sample(cond, 3, cond_mask=MASK)
    assert calls or name == "lm_tokens", "no net was called"
    _assert_aligned(calls, cond, MASK)


@pytest.mark.parametrize("name", RESIDUAL)
def test_repeated_cond_keeps_each_rows_mask_with_an_external_base(name):
    dec = decoder(name, base="external")
    cond, base = with_garbage(torch.randn(2, L, C), MASK, 1), torch.randn(2, T, D)
    calls = _record_net_calls(dec)
    dec.loss_with_base(cond, torch.randn(2, T, D), base, cond_mask=MASK)
    dec.sample_with_base(cond, base, 3, cond_mask=MASK)
    assert calls
    _assert_aligned(calls, cond, MASK)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "discrete_flow"])  # discrete_flow is always random
def test_each_of_k_samples_is_its_rows_own_deterministic_sample(name):
    """At temperature 0 every one of a row's K samples equals that row sampled alone with its own mask.
    Mutation caught: a tiled mask (row 0's second copy gets row 1's mask and attends row 0's garbage)."""
    torch.manual_seed(0)
    dec = decoder(name).eval()
    cond = with_garbage(torch.randn(2, L, C), MASK, 1)
    temp = {"temperature": 0.0} if dec.has_temperature else {}
    y = dec.sample(cond, 3, cond_mask=MASK, **temp)
    for i in range(2):
        alone = dec.sample(cond[i:i + 1], 1, cond_mask=MASK[i:i + 1], **temp)[0, 0]
        torch.testing.assert_close(y[i], alone.expand(3, -1, -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "lm_tokens"])  # lm_tokens reads only query rows
def test_a_zero_valued_real_row_is_attended_by_every_decoder(name):
    """Compared through the loss (at one seed), which is continuous for every decoder, where the samples of the
    bin decoders might land in the same bins. Mutation caught: zero rows inferred as padding anywhere."""
    torch.manual_seed(0)
    dec = decoder(name)
    cond, target = torch.randn(2, L, C), torch.randn(2, T, D)
    cond[:, 4] = 0.0
    real = torch.ones(2, L, dtype=torch.bool)
    dropped = real.clone()
    dropped[:, 4] = False

    def loss(cond_mask):
        torch.manual_seed(0)
        return copy.deepcopy(dec).loss(cond, target, cond_mask=cond_mask).loss

    differ(loss(real), loss(dropped), "a zero-valued real row is treated as padding")
    close(loss(real), loss(None))


# ---- bad masks ---------------------------------------------------------------------------------------------
def _calls(dec, cond, cond_mask):
    """Every public entry point of dec that takes a cond_mask, as thunks."""
    target = torch.randn(cond.shape[0], T, D)
    if getattr(dec, "base", False) is None:  # base = "external"
        return [lambda: dec.loss_with_base(cond, target, target, cond_mask=cond_mask),
                lambda: dec.sample_with_base(cond, target, cond_mask=cond_mask)]
    calls = [lambda: dec.loss(cond, target, cond_mask=cond_mask), lambda: dec.sample(cond, 2, cond_mask=cond_mask)]
    if name_of(dec) in RESIDUAL:
        calls.append(lambda: dec.base_prediction(cond, cond_mask))
    return calls


def name_of(dec) -> str:
    return type(dec).name


CASES = [(n, {}) for n in NAMES] + [(n, {"base": "external"}) for n in RESIDUAL]


@pytest.mark.parametrize("name, options", CASES, ids=[n + ("-external" if o else "") for n, o in CASES])
def test_bad_cond_masks_are_refused_naming_the_shapes(name, options):
    """Mutation caught: the decoder-level check removed or bypassed on one entry point (the expert then raises
    its own message, or an all-False row turns into NaN)."""
    dec = decoder(name, **options)
    cond = torch.randn(2, L, C)
    ones = torch.ones(2, L, dtype=torch.bool)
    empty_row = ones.clone()
    empty_row[1] = False
    bad = [
        (torch.ones(2, L - 1, dtype=torch.bool), ValueError,
         rf"cond_mask has shape \[2, {L - 1}\], expected \[B, L\] = \[2, {L}\] \(cond has shape \[2, {L}, {C}\]\)"),
        (torch.ones(3, L, dtype=torch.bool), ValueError,
         rf"cond_mask has shape \[3, {L}\], expected \[B, L\] = \[2, {L}\]"),
        (empty_row, ValueError, rf"cond_mask row\(s\) \[1\] of shape \[2, {L}\] are all False"),
        (ones.float(), TypeError, "cond_mask must be a bool tensor"),
    ]
    for cond_mask, error, message in bad:
        for call in _calls(dec, cond, cond_mask):
            with pytest.raises(error, match=message):
                call()
    pooled = torch.randn(2, C)
    for call in _calls(dec, pooled, torch.ones(2, 5, dtype=torch.bool)):
        with pytest.raises(ValueError, match=rf"cond_mask has shape \[2, 5\] but cond has shape \[2, {C}\]"):
            call()


@pytest.mark.parametrize("net", ["mlp", "expert"])
def test_a_mask_with_pooled_cond_is_refused_whatever_the_net(net):
    dec = decoder("flow", net=net)
    with pytest.raises(ValueError, match=rf"cond_mask has shape \[2, 1\] but cond has shape \[2, {C}\]"):
        dec.sample(torch.randn(2, C), cond_mask=torch.ones(2, 1, dtype=torch.bool))


def test_lm_tokens_refuses_a_mask_over_its_query_rows():
    dec = decoder("lm_tokens")
    cond_mask = torch.ones(2, L, dtype=torch.bool)
    cond_mask[0, -1] = False  # the last T * D rows are the query states it reads
    with pytest.raises(ValueError, match=rf"last T \* D = {T * D} rows of cond \[2, {L}, {C}\].*\[2, {L}\]"):
        dec.sample(torch.randn(2, L, C), cond_mask=cond_mask)
