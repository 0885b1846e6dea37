"""Training-free visual token reduction (driftkit.backbones.reduce, Backbone.reduce_visual).

Each test names, in its docstring, the mutation of src/ it catches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from driftkit.backbones import Backbone, BackboneConfig
from driftkit.backbones.reduce import TokenReduction

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

REDUCIBLE = [("qwen2_5_vl", 112), ("smolvlm", 128), ("qwen2_vl", 112), ("qwen3_vl", 128)]
PROMPTS = ["pick up the red cube", "go"]


def rows(side: int, cameras: int = 2, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(cameras)] for _ in PROMPTS]


def pair(family: str, side: int, **options) -> tuple[Backbone, Backbone]:
    """An unreduced backbone and one with the options, holding the same weights."""
    plain = Backbone.from_preset(f"{family}-tiny", num_query_tokens=3, image_size=side).eval()
    other = Backbone.from_preset(f"{family}-tiny", num_query_tokens=3, image_size=side, **options).eval()
    other.load_state_dict(plain.state_dict())
    return plain, other


def test_kept_tokens_are_the_dominant_ones_and_merged_ones_are_group_means():
    """Mutations: ranking ascending instead of descending; a target not joining its own group; the merged token
    a sum instead of a mean; kept features altered; the output not in raster order."""
    f = torch.zeros(10, 3)
    f[[2, 7], 0] = torch.tensor([9.0, 8.0])  # the two dominant tokens by norm
    f[[0, 1, 3], 1] = 1.0  # one cluster ...
    f[[4, 5, 6, 8, 9], 2] = torch.tensor([1.0, 1.1, 1.2, 1.3, 1.4])  # ... and another
    out = TokenReduction(keep=0.2, merged=2)(f)
    assert out.kept == 2 and len(out.index) == 4
    assert out.index.tolist() == [0, 2, 7, 9]  # targets: the first and last of the others, evenly spaced
    assert torch.equal(out.tokens[1], f[2]) and torch.equal(out.tokens[2], f[7])
    torch.testing.assert_close(out.tokens[0], f[[0, 1, 3]].mean(0))
    torch.testing.assert_close(out.tokens[3], f[[4, 5, 6, 8, 9]].mean(0))
    assert out.group.tolist() == [0, 0, 1, 0, 3, 3, 3, 2, 3, 3]


def test_other_features_of_the_same_tokens_are_reduced_with_the_same_groups():
    """Qwen3-VL's deepstack levels go the way of the main features. Mutations: apply() regrouping by the other
    features' own similarity, dropped tokens (merged=0) counted into a mean, rows not matched to the groups."""
    f = torch.zeros(10, 3)
    f[[2, 7], 0] = torch.tensor([9.0, 8.0])
    f[[0, 1, 3], 1] = 1.0
    f[[4, 5, 6, 8, 9], 2] = 1.0
    other = torch.randn(10, 5, generator=torch.Generator().manual_seed(0))
    out = TokenReduction(keep=0.2, merged=2)(f)
    want = torch.stack([other[[0, 1, 3]].mean(0), other[2], other[7], other[[4, 5, 6, 8, 9]].mean(0)])
    torch.testing.assert_close(out.apply(other), want)
    torch.testing.assert_close(out.apply(f), out.tokens)
    dropped = TokenReduction(keep=0.2, merged=0)(f)
    assert dropped.index.tolist() == [2, 7] and torch.equal(dropped.apply(other), other[[2, 7]])
    with pytest.raises(ValueError, match="got 9 feature rows for a reduction of 10 tokens"):
        out.apply(other[:9])


@pytest.mark.parametrize("keep,merged,n", [(0.5, 4, 16), (0.3, 2, 49), (0.01, 3, 10), (0.9, 5, 10)])
def test_counts_are_round_keep_n_plus_the_merged(keep, merged, n):
    """Mutations: k = floor/ceil instead of round (0.3 * 49 = 14.7), no floor of one kept token, more merged
    tokens than were left out."""
    out = TokenReduction(keep=keep, merged=merged)(torch.randn(n, 8, generator=torch.Generator().manual_seed(0)))
    k = max(1, round(keep * n))
    assert out.kept == k and len(out.index) == k + min(merged, n - k) == len(out.tokens)
    assert torch.equal(out.index, out.index.sort().values) and len(set(out.index.tolist())) == len(out.index)


@pytest.mark.parametrize("family,side", REDUCIBLE)
def test_keep_one_through_the_reduction_path_equals_the_model_s_own_image_path(family, side):
    """keep = 1.0 run through reduce_visual (features placed by the backbone, inputs_embeds) equals the
    model's pixel_values path. Mutations: features scattered into the wrong columns or image order (camera 1
    before camera 0), query embeddings not swapped in, mask or positions regathered wrongly, Qwen3-VL's
    deepstack levels left out."""
    bb = Backbone.from_preset(f"{family}-tiny", num_query_tokens=3, image_size=side).eval()
    with torch.no_grad():
        want = bb.encode(rows(side), PROMPTS).query
        inputs = bb.reduce_visual(bb.prepare(rows(side), PROMPTS), TokenReduction(1.0))
        if bb.family.deepstack:  # Qwen3-VL: the model places features and deepstack levels itself
            assert list(inputs.vision) == ["mm_encoder_outputs"] and inputs.inputs_embeds is None
        else:
            assert inputs.vision == {} and inputs.inputs_embeds is not None
        out = bb.model(**inputs.full_kwargs(), output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(out[:, inputs.prefix_len:], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family,side", REDUCIBLE)
def test_reduced_layout_is_consistent_and_the_cached_path_matches_the_full_pass(family, side):
    """Shapes and masks: each image keeps k + m placeholders, the text and query tokens all stay, ids, mask,
    positions, embeddings and per-token extras share one length, and the cached prefix + query passes give
    the uncached full pass. Mutations: dropped placeholders left in input_ids, pads marked real, the extras
    (mm_token_type_ids) not regathered, prefix_len stale."""
    plain, bb = pair(family, side, visual_keep=0.5, visual_merged=2)
    full = plain.prepare(rows(side), PROMPTS)
    n = full.input_ids.eq(plain.special_ids["image"]).sum(1)[0].item() // 2  # tokens per image
    k, m = TokenReduction(0.5, 2).counts(n)
    with torch.no_grad():
        red = bb.reduce_visual(bb.prepare(rows(side), PROMPTS))
        cached = bb.encode_queries(bb.encode_prefix(rows(side), PROMPTS))
        uncached = bb.encode(rows(side), PROMPTS)
    image = red.input_ids.eq(bb.special_ids["image"])
    assert image.sum(1).tolist() == [2 * (k + m)] * 2
    dropped = 2 * (n - k - m)
    assert (red.attention_mask.sum(1) == full.attention_mask.sum(1) - dropped).all()
    width = red.input_ids.shape[1]
    assert red.attention_mask.shape == (2, width)
    if bb.family.deepstack:  # every level holds the output tokens of the 4 images, 2 * (k + m) per row
        image_out = red.vision["mm_encoder_outputs"]["image"]
        assert [len(f) for f in image_out.pooler_output] == [k + m] * 4
        assert all([len(f) for f in level] == [k + m] * 4 for level in image_out.deepstack_features)
    else:
        assert red.inputs_embeds.shape[:2] == (2, width)
    assert red.position_ids.shape[-1] == width and all(v.shape == (2, width) for v in red.extra.values())
    if "mm_token_type_ids" in red.extra:
        assert torch.equal(red.extra["mm_token_type_ids"].bool(), image)
    assert red.prefix_len == width - 3 and (red.input_ids[:, red.prefix_len:] == torch.tensor(bb.query_ids)).all()
    assert (red.attention_mask[:, 0] == 0).any() and red.attention_mask[:, -1].all()  # left-padded
    assert cached.query.shape == uncached.query.shape == (2, 3, bb.hidden_size)
    torch.testing.assert_close(cached.query, uncached.query, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_qwen_positions_of_kept_tokens_and_text_are_unchanged(family):
    """Qwen's 3-D (t, h, w) positions: every kept or merged image token keeps the position of the original
    token it stands at, and the text and query tokens keep theirs. Mutations: positions renumbered 1-D-style
    after the reduction, or taken from the wrong image's columns."""
    plain, bb = pair(family, 112, visual_keep=0.5, visual_merged=1)
    full = plain.prepare(rows(112), PROMPTS)
    with torch.no_grad():
        features = plain.family.visual_features(plain.model, full.vision)
        red = bb.reduce_visual(bb.prepare(rows(112), PROMPTS))
    image_id, per_row = bb.special_ids["image"], len(features) // 2
    for r in range(2):
        cols = full.input_ids[r].eq(image_id).nonzero().squeeze(-1).split([len(f) for f in features[r * per_row:][:per_row]])
        kept = torch.cat([c[bb.reduction(f).index] for c, f in zip(cols, features[r * per_row:][:per_row])])
        want = full.position_ids[:, r, kept]
        got = red.position_ids[:, r][:, red.input_ids[r].eq(image_id)]
        assert torch.equal(got, want)
        text_full = full.attention_mask[r].bool() & full.input_ids[r].ne(image_id)
        text_red = red.attention_mask[r].bool() & red.input_ids[r].ne(image_id)
        assert torch.equal(red.position_ids[:, r][:, text_red], full.position_ids[:, r][:, text_full])


def test_one_dimensional_positions_are_renumbered_contiguously():
    """SmolVLM's 1-D positions count the real tokens of the shortened row. Mutation: the full layout's
    positions gathered (gaps the LM never saw)."""
    _, bb = pair("smolvlm", 128, visual_keep=0.25, visual_merged=0)
    red = bb.reduce_visual(bb.prepare(rows(128), PROMPTS))
    want = (red.attention_mask.cumsum(-1) - 1).clamp_min(0)
    assert torch.equal(red.position_ids[red.attention_mask.bool()], want[red.attention_mask.bool()])


def test_fewer_tokens_change_the_features_and_keep_one_does_not():
    """Mutation: the config's visual_keep ignored (no reduction at 0.5), or applied at 1.0."""
    plain, half = pair("smolvlm", 128, visual_keep=0.5)
    one = Backbone.from_preset("smolvlm-tiny", num_query_tokens=3, image_size=128, visual_keep=1.0).eval()
    one.load_state_dict(plain.state_dict())
    with torch.no_grad():
        base = plain.encode(rows(128), PROMPTS).query
        assert torch.equal(one.encode(rows(128), PROMPTS).query, base)
        assert not torch.allclose(half.encode(rows(128), PROMPTS).query, base, atol=1e-3)


@pytest.mark.parametrize("family", ["paligemma"])
def test_unsupported_families_are_named(family):
    """Mutation: reduction silently skipped for a family without visual_features."""
    with pytest.raises(ValueError, match=f"not supported for family '{family}'"):
        Backbone.from_preset(f"{family}-tiny", visual_keep=0.5)


@pytest.mark.parametrize("kw,message", [({"visual_keep": 0.0}, "visual_keep=0.0"), ({"visual_keep": 1.5}, "1.5"),
                                        ({"visual_merged": -1}, "visual_merged=-1"),
                                        ({"visual_score": "cls"}, "cls")])
def test_config_errors_name_the_bad_value(kw, message):
    with pytest.raises(ValueError, match=message):
        BackboneConfig(source="smolvlm-tiny", **kw)


def test_attention_score_ranks_by_attention_received():
    """Mutation: the attention score averaged over keys (rows) instead of queries (columns): every row of a
    softmax sums to one, so that score would be constant."""
    f = torch.randn(12, 16, generator=torch.Generator().manual_seed(1))
    s = TokenReduction(0.5, score="attention").scores(f)
    assert s.std() > 0 and torch.isclose(s.sum(), torch.tensor(1.0))
