"""FAST tokens through the VLM's LM head: id mapping, teacher forcing, cached greedy generation (checked against
the full teacher-forced pass and against scripted logits), the residual FASTPolicy on top, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import driftkit.nets.expert  # noqa: F401  (registers the "expert" net)
from driftkit.backbones import Backbone
from driftkit.backbones import FASTHeadConfig, FASTLMHead
from driftkit.normalize import NormStats, Normalizer
from driftkit.policy import FASTPolicy, FASTPolicyConfig
from driftkit.tokenizers.fast import FASTTokenizer
from vlm_helpers import CAMERA, FAMILIES, images, vlm_obs

PROMPTS = ["pick up the red cube", "go", "open the drawer"]
T, D, N_FAST = 4, 2, 100




def chunks(n: int, seed: int = 0) -> torch.Tensor:
    """[n, T, D] smooth chunks in target units (centre 1, amplitude ~1.6): normalisation matters."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, T)[None, :, None]
    freq, phase = torch.rand(n, 1, D, generator=g), torch.rand(n, 1, D, generator=g)
    return 1.0 + 1.6 * torch.sin(2 * torch.pi * (freq * t + phase))


DATA = chunks(400)


def head_for(family: str = "qwen2_5_vl", mode: str = "frozen", **config) -> FASTLMHead:
    bb = Backbone.from_preset(f"{family}-tiny", num_query_tokens=2, mode=mode)
    return FASTLMHead.from_data(bb, DATA, config=FASTHeadConfig(**config), vocab_size=N_FAST, scale=5.0)


def batch(n: int = 3) -> dict:
    return {"images": images(n), "prompts": PROMPTS[:n], "target": DATA[:n]}


@pytest.mark.parametrize("end_token", ["eos", "extra"])
def test_vocabulary_mapping_round_trips_and_avoids_special_tokens(end_token):
    head = head_for(end_token=end_token)
    bb, n = head.backbone, head.num_fast
    assert n == N_FAST
    # tiny presets: 256 byte tokens, then pad/bos/eos and the image tokens, so the free top is ids 156..255
    assert head.vocab_ids[:n].tolist() == list(range(256 - n, 256))
    assert head.end_id == (bb.tokenizer.eos_token_id if end_token == "eos" else 256 - n - 1)
    fast = torch.arange(n + 1)
    assert torch.equal(head.to_fast(head.to_vocab(fast)), fast)
    reserved = set(bb.special_ids.values()) | set(bb.query_ids) | {bb.tokenizer.pad_token_id}
    assert not reserved & set(head.vocab_ids.tolist())
    with pytest.raises(ValueError, match=f"vocabulary id {bb.special_ids['image']} is not a FAST"):
        head.to_fast(torch.tensor([head.end_id, bb.special_ids["image"]]))
    with pytest.raises(ValueError, match=f"FAST id {n + 1} lies outside"):
        head.to_vocab(torch.tensor([n + 1]))


def test_teacher_forced_loss_is_finite_and_decreases():
    torch.manual_seed(0)
    head = head_for(mode="full")
    b = batch()
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(6):
        out = head.loss(b)
        assert torch.isfinite(out.loss) and out.metrics["fast_len"] > 1
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_training_on_a_fixed_batch_makes_generation_emit_its_tokens(mode):
    torch.manual_seed(0)
    head = head_for(mode=mode)
    b = batch()
    want = head.encode_target(b["target"])
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=3e-3 if mode == "full" else 1e-2)
    for _ in range(40):
        out = head.loss(b)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    gen = head.generate(b["images"], b["prompts"])
    assert gen.tokens == want and gen.ended.all() and gen.num_invalid == 0
    assert gen.nfe == max(len(t) for t in want) + 1
    reconstruction = head.decode(want).actions  # FAST's own round trip of the targets, in target units
    torch.testing.assert_close(gen.actions, reconstruction)


def test_frozen_mode_trains_only_the_query_embeddings():
    head = head_for(mode="frozen")
    head.loss(batch(2)).loss.backward()
    grads = {n: p.grad for n, p in head.named_parameters() if p.grad is not None}
    assert list(grads) == ["backbone.query_embed"] and grads["backbone.query_embed"].abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_cached_generation_agrees_with_the_teacher_forced_pass(family, mode, monkeypatch):
    """Greedy tokens from the KV cache (left-padded prompts) are the argmax of one full pass over them."""
    head = head_for(family, mode)
    imgs = images(3)
    prefix = head.backbone.encode_prefix(imgs, PROMPTS)
    model, original, scores = head.backbone.model, head.backbone.model.forward, []

    def recording(*args, **kwargs):  # keep each generation pass's logits of the action ids and end
        out = original(*args, **kwargs)
        scores.append(out.logits[:, -1, head.vocab_ids])
        return out

    monkeypatch.setattr(model, "forward", recording)
    gen = head.generate_from_prefix(prefix, max_new_tokens=6)
    monkeypatch.undo()
    assert prefix.cache.get_seq_length() == prefix.inputs.prefix_len  # cropped back to the prefix
    assert gen.actions.shape == (3, T, D) and torch.isfinite(gen.actions).all()
    assert gen.valid.dtype == torch.bool and gen.valid.shape == (3,) and gen.ended.shape == (3,)
    assert gen.nfe == max(len(t) + int(e) for t, e in zip(gen.tokens, gen.ended.tolist())) <= 6
    torch.testing.assert_close(gen.actions, head.decode(gen.tokens).actions)
    with torch.no_grad():
        tf = head.teacher_forced_tokens(imgs, PROMPTS, gen.tokens)
        feats = head.backbone.encode(imgs, PROMPTS)
    # every pass's logits, not only their argmax: positions, masks and the cache must all agree
    scores = torch.stack(scores, 1)  # [B, nfe, N + 1]
    for i, (tokens, predicted, ended) in enumerate(zip(gen.tokens, tf.predicted, gen.ended.tolist())):
        k = len(tokens) + int(ended)  # passes that chose this row's tokens (later ones fed end, unmasked)
        torch.testing.assert_close(scores[i, :k], tf.scores[i, :k], atol=1e-4, rtol=0)
        assert predicted[: len(tokens)] == tokens
        assert (predicted == tokens) == ended  # an ended row's next prediction is the end token
    torch.testing.assert_close(tf.features.query, feats.query, atol=1e-5, rtol=0)
    torch.testing.assert_close(gen.features.query, feats.query, atol=1e-5, rtol=0)


def scripted(head: FASTLMHead, monkeypatch, rows: list[list[int]]) -> None:
    """Make the LM's last logits pick rows[i][k] (FAST ids, N = end) at the k-th pass after the prefix."""
    model, original, calls = head.backbone.model, head.backbone.model.forward, []

    def forward(*args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # either name (cache_kwargs)
        after_prefix = cache is not None and cache.get_seq_length() > 0  # the prefix pass starts empty
        out = original(*args, **kwargs)
        if after_prefix:
            k = len(calls)  # passes since the prefix
            calls.append(k)
            want = torch.tensor([r[min(k, len(r) - 1)] for r in rows])
            logits = torch.full_like(out.logits, -1e4)
            logits[torch.arange(len(rows)), -1, head.to_vocab(want)] = 1e4
            out.logits = logits
        return out

    monkeypatch.setattr(model, "forward", forward)


def test_generation_decodes_exactly_a_scripted_sequence(monkeypatch):
    head = head_for()
    n, x = head.num_fast, DATA[10:12]
    a, b = head.encode_target(x)
    assert len(a) != len(b) and len(a) + len(b) > 4
    never_ends = [(a + b)[i % (len(a) + len(b))] for i in range(T * D + 1)]
    rows = [a + [n, 7, 7, 7], b + [n], a[:1] + [n], never_ends]  # after end anything may come: it is ignored
    scripted(head, monkeypatch, rows)
    gen = head.generate(images(4), ["a", "bb", "ccc", "dddd"])
    assert gen.tokens == [a, b, a[:1], never_ends]
    assert gen.ended.tolist() == [True, True, True, False]
    assert gen.nfe == T * D + 1  # the row that never ends runs to the default limit
    expected = head.normalizer.unnormalize(head.tokenizer.decode([a, b], on_error="raise").actions)
    torch.testing.assert_close(gen.actions[:2], expected, atol=1e-6, rtol=0)
    # FAST rounding: per coefficient <= 0.5 / scale in [-1, 1] units, times half the q01..q99 range
    half_range = (head.normalizer.q99 - head.normalizer.q01) / 2
    bound = 0.5 * np.sqrt(T) / head.tokenizer.config.scale * half_range
    assert ((gen.actions[:2] - x.clamp(head.normalizer.q01, head.normalizer.q99)).abs() <= bound + 1e-5).all()
    assert gen.valid.tolist()[:3] == [True, True, False] and gen.num_invalid >= 1


def fast_config(train_base: str = "teacher_forced", mode: str = "frozen", **kw) -> FASTPolicyConfig:
    options = {"net": "expert", "hidden_dim": 32, "depth": 1, "steps": 4, **kw.pop("decoder_options", {})}
    kw = {"horizon": T, "action_dim": D, **kw}
    return FASTPolicyConfig(backbone="qwen2_5_vl-tiny", num_query_tokens=2, mode=mode, cond="query",
                            decoder="residual_flow", decoder_options=options, fast_vocab_size=N_FAST, fast_scale=5.0,
                            train_base=train_base, state_dim=0, cameras=(CAMERA,), **kw)


def fitted_tokenizer(chunks: torch.Tensor = DATA) -> FASTTokenizer:
    """The FAST tokenizer head_for fits: on the chunks in [-1, 1] by their q01 / q99."""
    norm = Normalizer(chunks.shape[-1], "quantile")
    norm.set_stats(NormStats.from_data(chunks))
    return FASTTokenizer.fit(norm.normalize(chunks), vocab_size=N_FAST, scale=5.0)


def policy_for(train_base: str = "teacher_forced", mode: str = "frozen") -> FASTPolicy:
    policy = FASTPolicy(fast_config(train_base, mode), tokenizer=fitted_tokenizer())
    stats = NormStats.from_data(DATA)
    policy.set_stats({"action": stats})  # the refiner's statistics
    policy.head.set_stats(stats)  # the FAST tokens' quantiles, those the tokenizer was fitted with
    return policy


def policy_batch(n: int = 3) -> dict:
    return {**vlm_obs(PROMPTS[:n]), "action": DATA[:n]}


@pytest.mark.parametrize("train_base", ["teacher_forced", "generated"])
def test_residual_policy_trains_the_refiner_and_samples_around_the_fast_base(train_base, monkeypatch):
    torch.manual_seed(0)
    policy = policy_for(train_base)
    out = policy(policy_batch())
    assert torch.isfinite(out.loss)
    assert out.loss.item() == pytest.approx(out.metrics["fast_ce"] + out.metrics["refiner_loss"], rel=1e-5)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.decoder.parameters())
    assert policy.backbone.query_embed.grad.abs().sum() > 0
    obs = vlm_obs(PROMPTS[:2])
    # The removed FASTResidualPolicy.predict returned the base and its NFE; now the base is what the refiner
    # receives (recorded here) and the NFE is policy.nfe: at most T * D + 1 LM passes plus the refiner's steps.
    bases, original = [], policy.decoder.sample_with_base

    def recording(cond, base, *args, **kwargs):
        bases.append(base.clone())
        return original(cond, base, *args, **kwargs)

    monkeypatch.setattr(policy.decoder, "sample_with_base", recording)
    samples = policy.sample(obs, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (2, 3, T, D) and torch.isfinite(samples).all()
    images_, prompts, _ = policy.inputs(obs)
    generated = policy.head.generate(images_, prompts)
    torch.testing.assert_close(bases[0], generated.actions)
    assert policy.nfe() == T * D + 1 + 4 >= generated.nfe + 4 and policy.nfe(2) == T * D + 1 + 2
    assert (samples[:, 0] - samples[:, 1]).abs().max() > 0  # K different refinements of one base
    chunk = policy.predict(obs, num_samples=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(chunk, samples[:, 0])


def test_bad_input_names_the_values():
    head = head_for()
    with pytest.raises(ValueError, match=r"target has shape \[2, 5, 2\], expected \[\*, 4, 2\].*T=4, D=2"):
        head.loss({"images": images(2), "prompts": PROMPTS[:2], "target": torch.zeros(2, 5, 2)})
    x = torch.rand(64, T, D) * 2 - 1  # scale 100: an alphabet of hundreds of integers, more ids than fit
    big = FASTTokenizer.fit(x, vocab_size=600, scale=100.0, full_range=True)
    assert big.vocab_size > head.backbone.base_vocab
    with pytest.raises(ValueError, match=rf"vocab_size={big.vocab_size} does not fit .* 262 ids, of which 256 "):
        FASTLMHead(head.backbone, big)
    # The policy's horizon disagrees with the tokenizer's: the refiner is sized T=5, FAST was fitted on T=4.
    # FASTPolicy refuses it when built, naming both shapes.
    with pytest.raises(ValueError, match=r"fitted on \(T, D\) = \(4, 2\).*\(5, 2\)"):
        FASTPolicy(fast_config(horizon=5), tokenizer=fitted_tokenizer())
    # A refiner with its own base: the config refuses it (was: a hand-built decoder with base='regression').
    with pytest.raises(ValueError, match="base='regression'.*base='external'"):
        fast_config(decoder_options={"base": "regression"})
    with pytest.raises(ValueError, match=r"got decoder='flow', must be one of \['residual_drift', 'residual_flow'\]"):
        FASTPolicyConfig(decoder="flow")
    # The policy builds its head on its own backbone and sizes the refiner to it (were: "different backbone"
    # and "cond_dim=7" errors of hand-built parts, which can no longer be passed in).
    policy = policy_for()
    assert policy.head.backbone is policy.backbone
    assert policy.decoder.config.cond_dim == policy.backbone.hidden_size
    with pytest.raises(ValueError, match="needs a fitted FAST tokenizer"):
        FASTPolicy(fast_config())
    with pytest.raises(ValueError, match="got end_token='bos'"):
        FASTHeadConfig(end_token="bos")
    with pytest.raises(ValueError, match="got end_token='bos'"):
        fast_config(end_token="bos")
