"""An offline tokenizer for randomly initialised presets: byte-level BPE with no merges.

Every UTF-8 string maps to one token per byte, so any prompt is covered without a download. Each family's
special tokens (image placeholders, BOS/EOS/PAD) are added with the same strings the real checkpoints use,
so the input-building code is identical for presets and for local checkpoints.
"""

from __future__ import annotations


def byte_level_tokenizer(special_tokens: list[str]):
    """-> PreTrainedTokenizerFast: 256 byte tokens, then <pad>, <bos>, <eos>, then `special_tokens` in order
    (ids are deterministic, so a preset rebuilds the same tokenizer every time)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    tok.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    return tok
