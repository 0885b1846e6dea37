"""FAST tokenizer: DCT/rounding oracle, lossless BPE, error bounds, compression, persistence, bad input."""

import numpy as np
import pytest
import torch

from driftkit.tokenizers.fast import FASTDecoded, FASTTokenizer

T, D = 16, 7


def smooth_chunks(n: int, seed: int, horizon: int = T, dim: int = D) -> np.ndarray:
    """[n, T, D] sums of three slow sinusoids per dim, mostly inside [-1, 1]."""
    g = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, horizon)[None, :, None]
    x = np.zeros((n, horizon, dim))
    for _ in range(3):
        amp, freq = g.uniform(-0.3, 0.3, (n, 1, dim)), g.uniform(0.0, 2.0, (n, 1, dim))
        x += amp * np.sin(2 * np.pi * freq * t + g.uniform(0, 2 * np.pi, (n, 1, dim)))
    return x


def dct_matrix(horizon: int) -> np.ndarray:
    """[T, T] orthonormal DCT-II written from its definition: c_k = sum_t M[k, t] x_t."""
    k, t = np.arange(horizon)[:, None], np.arange(horizon)[None, :]
    m = np.sqrt(2.0 / horizon) * np.cos(np.pi * k * (2 * t + 1) / (2 * horizon))
    m[0] /= np.sqrt(2.0)
    return m


def rounding_oracle(x: np.ndarray, scale: float) -> np.ndarray:
    """What decode(encode(x)) must return: the inverse DCT of the rounded scaled coefficients."""
    m = dct_matrix(x.shape[1])
    c = np.rint(np.einsum("kt,ntd->nkd", m, np.clip(x, -1, 1)) * scale) / scale
    return np.einsum("kt,nkd->ntd", m, c)


@pytest.fixture(scope="module")
def train():
    return smooth_chunks(600, seed=0)


@pytest.fixture(scope="module")
def test_chunks():
    return smooth_chunks(200, seed=1)


@pytest.fixture(scope="module")
def tok(train):
    return FASTTokenizer.fit(train, vocab_size=1024, scale=10.0)


def test_ints_are_rounded_dct_in_frequency_major_order(tok, test_chunks):
    ints = tok.to_ints(test_chunks[:5])
    m = dct_matrix(T)
    expected = np.rint(10.0 * np.einsum("kt,ntd->nkd", m, test_chunks[:5])).reshape(5, T * D)
    np.testing.assert_array_equal(ints, expected)
    # a pure cosine at frequency 3 in dim 1 lands at position 3 * D + 1 only
    x = np.zeros((1, T, D))
    x[0, :, 1] = 0.5 * m[3] / np.abs(m[3]).max()
    nonzero = np.flatnonzero(tok.to_ints(x)[0])
    assert nonzero.tolist() == [3 * D + 1]


@pytest.mark.parametrize("scale", [10.0, 100.0])
def test_round_trip_equals_rounding_oracle_and_respects_bound(train, test_chunks, scale):
    tok = FASTTokenizer.fit(train, vocab_size=1024, scale=scale)
    out = tok.decode(tok.encode(test_chunks))
    assert isinstance(out, FASTDecoded) and out.actions.shape == (len(test_chunks), T, D)
    assert out.valid.all()
    # BPE is lossless: the only change is the rounding of the coefficients
    np.testing.assert_allclose(out.actions.double().numpy(), rounding_oracle(test_chunks, scale), atol=1e-5)
    err = np.abs(out.actions.double().numpy() - np.clip(test_chunks, -1, 1))
    # each coefficient is off by <= 0.5 / scale; orthonormality carries that to the time domain
    assert err.max() <= 0.5 * np.sqrt(T) / scale + 1e-6
    assert np.sqrt((err**2).mean()) <= 0.5 / scale


def test_error_shrinks_with_scale(train, test_chunks):
    errs = []
    for scale in (10.0, 100.0):
        tok = FASTTokenizer.fit(train, vocab_size=1024, scale=scale)
        errs.append(np.abs(tok.decode(tok.encode(test_chunks)).actions.numpy() - test_chunks).max())
    assert errs[1] < errs[0] / 4


def test_smooth_chunks_compress(tok, test_chunks):
    ids = tok.encode(test_chunks)
    lengths = np.array([len(seq) for seq in ids])
    assert lengths.mean() < T * D / 3
    assert min(min(seq) for seq in ids) >= 0 and max(max(seq) for seq in ids) < tok.vocab_size


def test_inputs_are_clipped_and_tensors_accepted(tok, train, test_chunks):
    x = torch.from_numpy(test_chunks[:4]).float()
    assert tok.encode(x) == tok.encode(test_chunks[:4].astype(np.float32))
    full = FASTTokenizer.fit(train, vocab_size=1024, full_range=True)
    big = test_chunks[:1].copy()
    big[0, :, 0] = 3.0  # clipped to 1.0
    out = full.decode(full.encode(big)).actions
    assert torch.allclose(out[0, :, 0], torch.ones(T), atol=0.5 * np.sqrt(T) / 10.0)


def test_save_load_identical(tok, test_chunks, tmp_path):
    tok.save(tmp_path / "fast")
    loaded = FASTTokenizer.load(tmp_path / "fast")
    assert loaded.config == tok.config and loaded.vocab_size == tok.vocab_size
    ids = tok.encode(test_chunks)
    assert loaded.encode(test_chunks) == ids
    assert torch.equal(loaded.decode(ids).actions, tok.decode(ids).actions)
    with pytest.raises(FileNotFoundError, match="fast_config.json"):
        FASTTokenizer.load(tmp_path / "missing")


def test_wrong_length_raises_or_pads(tok, test_chunks):
    ids = tok.encode(test_chunks[:3])
    good = tok.decode(ids)
    short = [ids[0], ids[1][:-1], ids[2] + ids[2][:1]]  # sequence 1 too short, sequence 2 too long
    with pytest.raises(ValueError, match=r"sequence 1 decodes to \d+ integers, expected .* = 112"):
        tok.decode(short)
    out = tok.decode(short, on_error="pad")
    assert out.valid.tolist() == [True, False, False]
    assert out.actions.shape == (3, T, D)
    assert torch.equal(out.actions[0], good.actions[0])
    # padding zeros the missing high-frequency coefficients; truncation drops the extra ones
    full_ints = tok.to_ints(test_chunks[1:2])[0]
    prefix = tok.ids_to_ints(short[1])
    assert 0 < len(prefix) < T * D
    np.testing.assert_array_equal(prefix, full_ints[: len(prefix)])
    padded = np.concatenate([prefix, np.zeros(T * D - len(prefix), np.int64)])
    m = dct_matrix(T)
    expected = np.einsum("kt,kd->td", m, padded.reshape(T, D) / 10.0)
    np.testing.assert_allclose(out.actions[1].double().numpy(), expected, atol=1e-5)
    assert torch.allclose(out.actions[2], good.actions[2], atol=1e-6)
    empty = tok.decode([[]], on_error="pad")
    assert empty.valid.tolist() == [False] and torch.equal(empty.actions, torch.zeros(1, T, D))
    with pytest.raises(ValueError, match="on_error='skip'"):
        tok.decode(ids, on_error="skip")


def test_decode_other_shape_checks_length(tok, test_chunks):
    ids = tok.encode(test_chunks[:1])
    with pytest.raises(ValueError, match=r"8 \* 7 = 56"):
        tok.decode(ids, horizon=8)


def test_bad_token_id_raises(tok):
    with pytest.raises(ValueError, match=f"sequence 0 holds token id {tok.vocab_size} outside"):
        tok.decode([[0, tok.vocab_size]])
    with pytest.raises(ValueError, match="token id -1"):
        tok.decode([[-1]])


def test_out_of_alphabet_coefficient_raises_unless_full_range(train):
    small = FASTTokenizer.fit(train * 0.2, vocab_size=256)
    full = FASTTokenizer.fit(train * 0.2, vocab_size=256, full_range=True)
    ones = np.ones((2, T, D))  # DC coefficient scale * sqrt(T) = 40, beyond the small alphabet
    with pytest.raises(ValueError, match=r"chunk 0: coefficient 40 \(frequency 0, dim 0\) lies outside"):
        small.encode(ones)
    assert full.config.min_int == -40 and full.config.max_int == 40
    out = full.decode(full.encode(ones)).actions
    assert torch.allclose(out, torch.ones(2, T, D), atol=1e-6)


def test_bad_inputs_raise_clear_errors(tok, train):
    nan = train[:10].copy()
    nan[3, 2, 1] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*\(3, 2, 1\)"):
        FASTTokenizer.fit(nan)
    with pytest.raises(ValueError, match=r"shape \[16, 7\], expected \[\*, \*, \*\]"):
        FASTTokenizer.fit(train[0])
    with pytest.raises(ValueError, match=r"shape \[2, 16, 7, 1\]"):
        tok.encode(train[:2, :, :, None])
    with pytest.raises(ValueError, match=r"expected \[\*, 16, 7\] \(the tokenizer was fitted on T=16, D=7\)"):
        tok.encode(train[:2, :8])
    with pytest.raises(ValueError, match="got vocab_size=10, smaller than the alphabet"):
        FASTTokenizer.fit(train, vocab_size=10)
    with pytest.raises(ValueError, match="got scale=0"):
        FASTTokenizer.fit(train, scale=0)
