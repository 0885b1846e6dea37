"""FAST action tokenizer (Pertsch et al. 2025, arXiv 2501.09747): DCT over time, rounding, then BPE.

An action chunk x [T, D], already normalised so the dataset's q01/q99 sit at -1/1, is clipped to [-1, 1] and
turned into integers

    c = round(scale * DCT_ortho(x, over time))      # [T, D]

flattened frequency-major (c[0, 0], c[0, 1], ..., c[0, D-1], c[1, 0], ...), so every dim's low frequencies come
first. Each integer becomes one character (shifted by the smallest fitted integer) and a byte-pair encoding
trained on a set of chunks merges frequent runs (mostly the zeros of the high frequencies) into tokens.
Decoding inverts each step; rounding is the only loss, so the error of a coefficient is <= 0.5 / scale and,
because the DCT is orthonormal, the RMS error per sample is <= 0.5 / scale and the max error per dim and chunk
is <= 0.5 * sqrt(T) / scale.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.fft import dct, idct
from tokenizers import Tokenizer, models, trainers
from torch import Tensor

from driftkit.errors import check_choice, check_finite, check_positive, check_shape

# Integer k - min_int is written as chr(_CHAR_BASE + k - min_int). CJK ideographs are plain letters to the
# tokenizers library (no whitespace, no combining marks), and the block holds 20992 of them.
_CHAR_BASE = 0x4E00
_MAX_ALPHABET = 20992
_CONFIG_FILE = "fast_config.json"
_BPE_FILE = "fast_bpe.json"
_ON_ERROR = ("raise", "pad")


@dataclass
class FASTConfig:
    """What a fitted FASTTokenizer needs besides its BPE tables (saved as JSON next to them)."""

    horizon: int
    """T: time steps per chunk the tokenizer was fitted on."""
    dim: int
    """D: action dims per chunk."""
    scale: float = 10.0
    """DCT coefficients are multiplied by this before rounding; larger = finer and more tokens."""
    min_int: int = 0
    """Smallest rounded coefficient in the alphabet (the shift to character 0)."""
    max_int: int = 0
    """Largest rounded coefficient in the alphabet."""

    def __post_init__(self):
        check_positive("horizon", self.horizon)
        check_positive("dim", self.dim)
        check_positive("scale", self.scale)
        if self.min_int > 0 or self.max_int < 0:
            raise ValueError(f"got min_int={self.min_int}, max_int={self.max_int}: the alphabet must contain 0")
        if self.alphabet_size > _MAX_ALPHABET:
            raise ValueError(
                f"alphabet of {self.alphabet_size} integers ({self.min_int}..{self.max_int}) exceeds "
                f"{_MAX_ALPHABET}; lower scale={self.scale}"
            )

    @property
    def alphabet_size(self) -> int:
        return self.max_int - self.min_int + 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FASTDecoded:
    """Result of FASTTokenizer.decode."""

    actions: Tensor  # [N, T, D] float32, in the normalised [-1, 1] space
    valid: Tensor  # [N] bool; False where the tokens decoded to the wrong number of coefficients (pad mode)


def _as_array(name: str, chunks, expected: tuple = (None, None, None), hint: str = "") -> np.ndarray:
    """Tensor or array [N, T, D] -> float64 ndarray, after the shape and finiteness checks."""
    x = chunks if isinstance(chunks, Tensor) else torch.as_tensor(np.asarray(chunks))
    if not torch.is_floating_point(x):
        x = x.double()
    check_shape(name, x, expected, hint or " ([N, T, D] action chunks)")
    check_finite(name, x)
    return x.detach().cpu().double().numpy()


def dct_ints(chunks: np.ndarray, scale: float) -> np.ndarray:
    """[N, T, D] -> [N, T * D] int64 rounded scaled DCT coefficients, frequency-major."""
    x = np.clip(chunks, -1.0, 1.0)
    coeffs = dct(x, type=2, axis=1, norm="ortho")  # [N, T, D]
    return np.rint(coeffs * scale).astype(np.int64).reshape(len(x), -1)


def ints_to_chunks(ints: np.ndarray, horizon: int, dim: int, scale: float) -> np.ndarray:
    """[N, T * D] ints -> [N, T, D] float64 chunks (inverse of dct_ints up to rounding)."""
    coeffs = ints.reshape(len(ints), horizon, dim).astype(np.float64) / scale
    return idct(coeffs, type=2, axis=1, norm="ortho")


class FASTTokenizer:
    """Action chunks [N, T, D] <-> lists of BPE token ids in [0, vocab_size). Build with fit() or load()."""

    def __init__(self, config: FASTConfig, bpe: Tokenizer):
        self.config = config
        self._bpe = bpe
        if bpe.get_vocab_size() < config.alphabet_size:
            raise ValueError(
                f"BPE vocab of {bpe.get_vocab_size()} tokens cannot cover the alphabet of {config.alphabet_size}"
            )
        # token id -> its integers, looked up once instead of per decode
        vocab = bpe.get_vocab()
        self._id_to_ints: list[np.ndarray | None] = [None] * bpe.get_vocab_size()
        for piece, idx in vocab.items():
            self._id_to_ints[idx] = np.array([ord(ch) - _CHAR_BASE + config.min_int for ch in piece], np.int64)

    # ---- fitting -------------------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        chunks,
        vocab_size: int = 1024,
        scale: float = 10.0,
        min_frequency: int = 2,
        full_range: bool = False,
    ) -> "FASTTokenizer":
        """Train the BPE on chunks [N, T, D] (Tensor or ndarray, normalised to [-1, 1]).

        The alphabet is every integer between the smallest and largest rounded coefficient seen (0 included),
        so encode() later rejects chunks whose coefficients fall outside it. full_range=True instead covers
        every integer a clipped chunk can produce (|c| <= scale * sqrt(T), since the DCT is orthonormal),
        so encode() never rejects one, at the cost of alphabet slots that could have been merges.
        vocab_size counts the alphabet and the merges; training may stop below it when no pair occurs
        min_frequency times.
        """
        x = _as_array("chunks", chunks)
        if len(x) == 0 or x.shape[1] == 0 or x.shape[2] == 0:
            raise ValueError(f"chunks has shape {list(x.shape)}: fitting needs at least one non-empty chunk")
        check_positive("vocab_size", vocab_size)
        check_positive("scale", scale)
        ints = dct_ints(x, scale)
        low, high = min(int(ints.min()), 0), max(int(ints.max()), 0)
        if full_range:
            bound = int(np.ceil(scale * np.sqrt(x.shape[1])))
            low, high = min(low, -bound), max(high, bound)
        config = FASTConfig(horizon=x.shape[1], dim=x.shape[2], scale=float(scale), min_int=low, max_int=high)
        if vocab_size < config.alphabet_size:
            raise ValueError(
                f"got vocab_size={vocab_size}, smaller than the alphabet of {config.alphabet_size} integers "
                f"({config.min_int}..{config.max_int}) at scale={scale}; raise vocab_size or lower scale"
            )
        alphabet = [chr(_CHAR_BASE + k) for k in range(config.alphabet_size)]
        bpe = Tokenizer(models.BPE())  # no normaliser, no pre-tokeniser: each chunk is one "word"
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
            initial_alphabet=alphabet, limit_alphabet=config.alphabet_size, special_tokens=[],
        )  # fmt: skip
        bpe.train_from_iterator(cls._ints_to_strings(ints, config.min_int), trainer=trainer)
        return cls(config, bpe)

    @staticmethod
    def _ints_to_strings(ints: np.ndarray, min_int: int) -> list[str]:
        codes = ints - min_int + _CHAR_BASE
        return ["".join(map(chr, row)) for row in codes.tolist()]

    # ---- encode / decode -----------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids; every id lies in [0, vocab_size)."""
        return self._bpe.get_vocab_size()

    def to_ints(self, chunks) -> np.ndarray:
        """chunks [N, T, D] -> [N, T * D] rounded scaled DCT coefficients, checked against the alphabet."""
        cfg = self.config
        hint = f" (the tokenizer was fitted on T={cfg.horizon}, D={cfg.dim})"
        x = _as_array("chunks", chunks, (None, cfg.horizon, cfg.dim), hint)
        ints = dct_ints(x, cfg.scale)
        bad = (ints < cfg.min_int) | (ints > cfg.max_int)
        if bad.any():
            n, j = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"chunk {n}: coefficient {ints[n, j]} (frequency {j // cfg.dim}, dim {j % cfg.dim}) lies outside "
                f"the fitted alphabet {cfg.min_int}..{cfg.max_int}; refit on data covering it"
            )
        return ints

    def encode(self, chunks) -> list[list[int]]:
        """chunks [N, T, D] (clipped to [-1, 1]) -> N lists of token ids (lengths vary with smoothness)."""
        strings = self._ints_to_strings(self.to_ints(chunks), self.config.min_int)
        return [enc.ids for enc in self._bpe.encode_batch(strings)]

    def decode(
        self,
        token_lists: list[list[int]],
        horizon: int | None = None,
        dim: int | None = None,
        on_error: str = "raise",
    ) -> FASTDecoded:
        """N lists of token ids -> FASTDecoded(actions [N, T, D], valid [N]).

        A list that decodes to a number of integers other than T * D raises a ValueError naming it when
        on_error="raise"; with on_error="pad" its integers are zero-padded or truncated (a missing
        coefficient means "no energy at that frequency") and valid is False for it. Ids outside
        [0, vocab_size) always raise: no sensible chunk can be guessed from them.
        """
        check_choice("on_error", on_error, _ON_ERROR)
        horizon = self.config.horizon if horizon is None else horizon
        dim = self.config.dim if dim is None else dim
        check_positive("horizon", horizon)
        check_positive("dim", dim)
        length = horizon * dim
        ints = np.zeros((len(token_lists), length), np.int64)
        valid = np.ones(len(token_lists), bool)
        for n, ids in enumerate(token_lists):
            row = self.ids_to_ints(ids, index=n)
            if len(row) != length:
                if on_error == "raise":
                    raise ValueError(
                        f"sequence {n} decodes to {len(row)} integers, expected horizon * dim = "
                        f"{horizon} * {dim} = {length} (use on_error='pad' to pad or truncate)"
                    )
                valid[n] = False
                row = row[:length]
            ints[n, : len(row)] = row
        actions = ints_to_chunks(ints, horizon, dim, self.config.scale)
        return FASTDecoded(torch.from_numpy(actions).float(), torch.from_numpy(valid))

    def ids_to_ints(self, ids, index: int = 0) -> np.ndarray:
        """One list of token ids -> its integers [L] (L = T * D when well formed); index names it in errors."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"sequence {index} holds token id {bad[0]} outside [0, {self.vocab_size})")
        if not ids:
            return np.zeros(0, np.int64)
        return np.concatenate([self._id_to_ints[i] for i in ids])

    # ---- persistence ---------------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write fast_config.json and fast_bpe.json (the tokenizers library's own format) into directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / _CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))
        self._bpe.save(str(directory / _BPE_FILE))

    @classmethod
    def load(cls, directory: str | Path) -> "FASTTokenizer":
        """Read what save() wrote; local files only, nothing is fetched."""
        directory = Path(directory)
        for name in (_CONFIG_FILE, _BPE_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found: not a directory written by FASTTokenizer.save")
        config = FASTConfig(**json.loads((directory / _CONFIG_FILE).read_text()))
        return cls(config, Tokenizer.from_file(str(directory / _BPE_FILE)))

    def __repr__(self) -> str:
        c = self.config
        return (f"FASTTokenizer(T={c.horizon}, D={c.dim}, scale={c.scale}, vocab_size={self.vocab_size}, "
                f"alphabet={c.min_int}..{c.max_int})")  # fmt: skip
