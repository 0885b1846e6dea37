"""Static shapes and compiled sampling (driftkit.backbones.static, VLMPolicy.compile).

Padding to the buckets must not change outputs; compiled and eager sampling give the same actions for the same
noise (float32 on the CPU: within 1e-4 absolute); the options round-trip through save/load. Each test names, in
its docstring, the mutation of src/ it catches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from driftkit import make_decoder
from driftkit.backbones import Backbone
from driftkit.backbones.static import compile_nets, compile_unavailable
from driftkit.normalize import NormStats
from driftkit.policy import VLMPolicy, VLMPolicyConfig, load_policy
from vlm_helpers import CAMERA, vlm_obs

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
needs_compile = pytest.mark.skipif(compile_unavailable() is not None, reason=f"{compile_unavailable()}")

PROMPTS = ["pick up the red cube", "go"]
T, D, S = 2, 2, 3


def images(n: int, side: int = 64, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]


def pair(family: str, **options) -> tuple[Backbone, Backbone]:
    plain = Backbone.from_preset(f"{family}-tiny", num_query_tokens=3).eval()
    static = Backbone.from_preset(f"{family}-tiny", num_query_tokens=3, **options).eval()
    static.load_state_dict(plain.state_dict())
    return plain, static


def cached(bb: Backbone, ims: list, prompts: list[str]):
    with torch.no_grad():
        return bb.encode_queries(bb.encode_prefix(ims, prompts))


@pytest.mark.parametrize("family", ["smolvlm", "qwen2_5_vl", "paligemma"])
def test_padding_to_the_prefix_length_does_not_change_outputs(family):
    """Mutations: pad columns marked real, positions of real tokens shifted by the padding, the StaticCache
    not reset between calls (the second call would read the first call's keys), or not rewound after the
    query pass."""
    plain, static = pair(family, static_prefix_len=120)
    for prompts in (PROMPTS, ["a different and somewhat longer instruction", "stop"]):
        want = cached(plain, images(2), prompts)
        got = cached(static, images(2), prompts)
        assert static.encode_prefix(images(2), prompts).inputs.prefix_len == 120
        torch.testing.assert_close(got.query, want.query, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.prefix[:, -want.prefix.shape[1]:], want.prefix, atol=1e-5, rtol=1e-5)
        assert got.prefix_mask.sum() == want.prefix_mask.sum()
    again = cached(static, images(2, seed=1), PROMPTS)  # the reused cache, refilled
    torch.testing.assert_close(again.query, cached(plain, images(2, seed=1), PROMPTS).query, atol=1e-5, rtol=1e-5)


def test_batch_buckets_pad_rows_and_slice_them_off():
    """Mutations: the padded rows returned to the caller, or the real rows replaced by padding copies."""
    plain, static = pair("smolvlm", batch_buckets=(1, 4), static_prefix_len=80)
    want = cached(plain, images(2), PROMPTS)
    got = cached(static, images(2), PROMPTS)
    assert got.query.shape[0] == 2 and static.static_caches.caches.keys() == {4}
    torch.testing.assert_close(got.query, want.query, atol=1e-5, rtol=1e-5)


def test_static_shape_errors_name_the_value():
    """Mutations: a prefix longer than static_prefix_len silently truncated, a batch over every bucket run
    anyway, a StaticCache asked to repeat its rows."""
    _, static = pair("smolvlm", static_prefix_len=5, batch_buckets=(2,))
    with pytest.raises(ValueError, match="static_prefix_len=5"):
        cached(static, images(1), ["go"])
    _, static = pair("smolvlm", static_prefix_len=80, batch_buckets=(2,))
    with pytest.raises(ValueError, match="batch of 3 rows"):
        cached(static, images(3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="repeats=2"):
        static.encode_queries(static.encode_prefix(images(1), ["go"]), repeats=2)


def policy_config(**kw) -> VLMPolicyConfig:
    return VLMPolicyConfig(backbone="smolvlm-tiny", num_query_tokens=4, cond="context", decoder=kw.pop("decoder", "flow"),
                           decoder_options={"hidden_dim": 32, "depth": 1}, horizon=T, action_dim=D, state_dim=S,
                           cameras=(CAMERA,), image_shape=(3, 64, 64), **kw)


def with_stats(policy: VLMPolicy) -> VLMPolicy:
    g = torch.Generator().manual_seed(3)
    policy.set_stats({"action": NormStats.from_data(torch.randn(64, T, D, generator=g)),
                      "observation.state": NormStats.from_data(torch.randn(64, S, generator=g))})
    return policy.eval()


def test_options_round_trip_through_save_and_load(tmp_path):
    """Mutations: static shapes or visual_keep dropped from the saved backbone config, the compile field lost,
    or a loaded compile policy left uncompiled."""
    options = {"static_prefix_len": 80, "batch_buckets": [1, 2], "visual_keep": 0.5, "visual_merged": 1}
    policy = with_stats(VLMPolicy(policy_config(backbone_options=options)))
    obs = vlm_obs(PROMPTS, state_dim=S)
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    want = policy.predict(obs, num_samples=2, generator=gen())
    policy.save_pretrained(tmp_path / "static")
    loaded = load_policy(tmp_path / "static")
    assert loaded.config == policy.config and loaded.backbone.config.batch_buckets == (1, 2)
    assert loaded.backbone.config.static_prefix_len == 80 and loaded.backbone.reduction.keep == 0.5
    assert torch.equal(loaded.predict(obs, num_samples=2, generator=gen()), want)
    VLMPolicy(policy_config(compile="default")).save_pretrained(tmp_path / "compiled")
    loaded = load_policy(tmp_path / "compiled")  # compiled lazily: nothing runs until the first call
    assert loaded.config.compile == "default" and loaded.decoder.net._compiled_call_impl is not None
    with pytest.raises(ValueError, match="compile='fast'"):
        policy_config(compile="fast")


@pytest.mark.slow
@needs_compile
def test_compiled_policy_samples_the_eager_actions():
    """The compiled LM (StaticCache, padded prefix) and the compiled net of a 10-step flow give the eager
    actions for the same noise, on two batches of different prompts (one graph serves both). Mutation: the
    compiled path reading a stale cache or the wrong prefix padding. ~30-50 s on a 2-core CPU."""
    torch.manual_seed(0)
    eager = with_stats(VLMPolicy(policy_config(backbone_options={"static_prefix_len": 64})))
    compiled = with_stats(VLMPolicy(policy_config(backbone_options={"static_prefix_len": 64})))
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_static("default")
    for prompts in (PROMPTS, ["place the peg", "open the drawer now"]):
        obs = vlm_obs(prompts, state_dim=S)
        gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
        with torch.no_grad():
            want = eager.predict(obs, num_samples=3, generator=gen())
            got = compiled.predict(obs, num_samples=3, generator=gen())
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@needs_compile
@pytest.mark.parametrize("decoder", ["drift"])
def test_compiled_one_step_generator_matches_eager(decoder):
    """The one-step generator's net compiled alone (compile_nets) gives the eager samples. Mutation:
    compile_nets missing the decoder's net (nothing would be compiled: counted) or changing its outputs."""
    dec = make_decoder(decoder, cond_dim=16, target_shape=(T, D), net="expert", hidden_dim=32, depth=1).eval()
    dec.fit_normalizer(torch.randn(64, T, D, generator=torch.Generator().manual_seed(0)))
    cond = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = dec.sample(cond, num_samples=4, generator=torch.Generator().manual_seed(2))
        assert compile_nets(dec, "default") >= 1
        got = dec.sample(cond, num_samples=4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
