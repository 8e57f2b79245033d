"""Prompt-to-Prompt controllers on random attention: which rows, layers and steps each edit touches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from numerics import FLOAT64_ATOL

from ip2p import p2p
from ip2p.errors import IP2PError
from ip2p.p2p import (
    COND,
    CROSS,
    SELF,
    UNCOND,
    LayerInfo,
    LocalBlend,
    OriginalP2P,
    PaperP2P,
    RowRoles,
    TokenMap,
)

SELF_LAYER = LayerInfo(SELF, "up_blocks.1.attentions.0.transformer_blocks.0.attn1", 4, "up")
CROSS_LAYER = LayerInfo(CROSS, "up_blocks.1.attentions.0.transformer_blocks.0.attn2", 5, "up")
MID_CROSS = LayerInfo(CROSS, "mid_block.attentions.0.transformer_blocks.0.attn2", 3, "mid")
HEADS, QUERIES = 2, 16


def random_probs(rows: RowRoles, queries: int = QUERIES, keys: int = QUERIES, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(len(rows), HEADS, queries, keys, generator=gen).softmax(-1)


# -- metadata ---------------------------------------------------------------------------------------


def test_step_fraction_is_the_papers_index_over_steps_minus_one():
    assert [p2p.step_fraction(i, 5) for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert p2p.step_fraction(0, 1) == 0.0


def test_grid_rows_are_branch_chunks_of_pairs_with_prompt_0_then_1():
    rows = RowRoles.grid(2)
    assert rows.branch == (COND,) * 4 + (UNCOND,) * 4
    assert rows.pair == (0, 0, 1, 1, 0, 0, 1, 1)
    assert rows.prompt == (0, 1, 0, 1, 0, 1, 0, 1)
    assert [rows.partner(r) for r in range(8)] == [0, 0, 2, 2, 4, 4, 6, 6]


def test_a_branch_order_from_the_host_is_kept():
    rows = RowRoles.grid(1, (UNCOND, COND))  # e.g. ComfyUI's cond_or_uncond == [1, 0]
    assert rows.branch == (UNCOND, UNCOND, COND, COND)


@pytest.mark.parametrize(
    ("pair", "prompt", "branch"),
    [
        ((0, 0), (0, 0), (COND, COND)),  # two prompt-0 rows, no prompt 1
        ((0,), (1,), (COND,)),  # a prompt-1 row without its prompt-0 partner
        ((0, 0), (0, 1), (COND, "neither")),
    ],
)
def test_row_roles_without_a_partner_for_every_row_are_refused(pair, prompt, branch):
    with pytest.raises(ValueError):
        RowRoles(pair, prompt, branch)


def test_a_fraction_outside_zero_to_one_is_refused():
    with pytest.raises(IP2PError, match="p2p_fraction"):
        PaperP2P([0.5, 1.5])


# -- the paper's variant ----------------------------------------------------------------------------


def test_paper_mode_replaces_prompt_1_self_attention_by_prompt_0_in_cond_and_uncond_rows():
    rows = RowRoles.grid(1)  # [cond p0, cond p1, uncond p0, uncond p1]
    probs = random_probs(rows)
    edited = PaperP2P([0.5]).edit(probs, SELF_LAYER, 0.25, rows)
    assert torch.equal(edited[1], probs[0]) and torch.equal(edited[3], probs[2])
    assert torch.equal(edited[0], probs[0]) and torch.equal(edited[2], probs[2])  # prompt 0 untouched


def test_paper_mode_leaves_cross_attention_alone():
    rows = RowRoles.grid(1)
    probs = random_probs(rows, keys=77)
    assert torch.equal(PaperP2P([1.0]).edit(probs, CROSS_LAYER, 0.0, rows), probs)


@pytest.mark.parametrize(("step", "tied"), [(0.0, True), (0.49, True), (0.5, False), (1.0, False)])
def test_paper_mode_ties_prompt_1_only_while_the_step_fraction_is_below_p(step, tied):
    rows = RowRoles.grid(1)
    probs = random_probs(rows)
    edited = PaperP2P([0.5]).edit(probs, SELF_LAYER, step, rows)
    assert torch.equal(edited[1], probs[0]) is tied
    assert torch.equal(edited[1], probs[1]) is not tied


def test_each_pair_of_a_batch_has_its_own_p():
    rows = RowRoles.grid(3)
    probs = random_probs(rows)
    edited = PaperP2P([0.9, 0.1, 0.5]).edit(probs, SELF_LAYER, 0.3, rows)
    # pair 0 (p 0.9) and pair 2 (p 0.5) are tied at 0.3, pair 1 (p 0.1) is not; in both branches.
    for cond_chunk in (0, 6):
        assert torch.equal(edited[cond_chunk + 1], probs[cond_chunk + 0])
        assert torch.equal(edited[cond_chunk + 3], probs[cond_chunk + 3])
        assert torch.equal(edited[cond_chunk + 5], probs[cond_chunk + 4])


def test_paper_mode_needs_a_fraction_for_every_pair():
    rows = RowRoles.grid(2)
    with pytest.raises(IP2PError, match="one per pair"):
        PaperP2P([0.5]).edit(random_probs(rows), SELF_LAYER, 0.0, rows)


def test_replacing_scores_is_replacing_probabilities():
    rows = RowRoles.grid(2)
    scores = torch.randn(len(rows), HEADS, QUERIES, QUERIES, generator=torch.Generator().manual_seed(3))
    controller = PaperP2P([0.7, 0.7])
    from_scores = controller.edit(scores, SELF_LAYER, 0.2, rows).softmax(-1)
    from_probs = controller.edit(scores.softmax(-1), SELF_LAYER, 0.2, rows)
    torch.testing.assert_close(from_scores, from_probs, rtol=0, atol=1e-7)


# -- attend: the call hosts make ----------------------------------------------------------------------


def qkv(rows: RowRoles, keys: int = QUERIES, seed: int = 1, scale: float = 3.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    shape = (len(rows), HEADS, QUERIES, 8)
    q = torch.randn(shape, generator=gen, dtype=dtype) * scale
    k = torch.randn(len(rows), HEADS, keys, 8, generator=gen, dtype=dtype) * scale
    v = torch.randn(len(rows), HEADS, keys, 8, generator=gen, dtype=dtype)
    return q, k, v


def explicit_attention(q, k, v, controller, layer, step, rows):
    probs = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
    return controller.edit(probs, layer, step, rows) @ v


def test_attend_without_an_edit_is_the_hosts_kernel_unchanged():
    rows = RowRoles.grid(2)
    q, k, v = qkv(rows)
    out = p2p.attend(q, k, v, PaperP2P([0.5, 0.5]), SELF_LAYER, 0.75, rows)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))


@pytest.mark.numerics
def test_attend_on_copied_queries_and_keys_equals_copying_the_probabilities():
    rows = RowRoles.grid(2)
    q, k, v = qkv(rows, dtype=torch.float64)
    controller = PaperP2P([0.9, 0.2])
    fast = p2p.attend(q, k, v, controller, SELF_LAYER, 0.5, rows)
    # the attention kernel against softmax(q·kᵀ)·v, float64 (float32: 7e-7 within a kernel setting, 5.5e-6 across)
    reference = explicit_attention(q, k, v, controller, SELF_LAYER, 0.5, rows)
    torch.testing.assert_close(fast, reference, rtol=0, atol=FLOAT64_ATOL)
    assert not torch.allclose(fast, F.scaled_dot_product_attention(q, k, v), atol=1e-3)  # the edit did something


@pytest.mark.numerics
def test_attend_hands_explicit_probabilities_to_the_controller_for_the_rows_it_edits():
    rows = RowRoles.grid(1)
    q, k, v = qkv(rows, keys=77)
    controller = OriginalP2P(p2p.replace_map([1, 2, 3], [1, 4, 3]))
    out = p2p.attend(q, k, v, controller, CROSS_LAYER, 0.1, rows)
    reference = explicit_attention(q, k, v, controller, CROSS_LAYER, 0.1, rows)
    # cond prompt 1: the edited probabilities. attend's explicit path is this op sequence in float32 (it casts to
    # float32, so float64 cannot apply): 0 within every kernel setting, 2.4e-6 across settings; 1e-5 keeps 4x
    torch.testing.assert_close(out[1], reference[1], rtol=0, atol=1e-5)
    assert torch.equal(out[[0, 2, 3]], F.scaled_dot_product_attention(q, k, v)[[0, 2, 3]])  # the rest: the kernel


def test_attend_refuses_a_batch_the_row_roles_do_not_describe():
    q, k, v = qkv(RowRoles.grid(2))
    with pytest.raises(ValueError, match="row roles"):
        p2p.attend(q, k, v, PaperP2P([0.5]), SELF_LAYER, 0.0, RowRoles.grid(1))


# -- Hertz et al.: word swap, refine, reweight ---------------------------------------------------------

# "a cat riding a bicycle" → "a black cat riding a red bicycle", one token per word, with start/end.
CAPTION_0 = ["<s>", "a", "cat", "riding", "a", "bicycle", "</s>"]
CAPTION_1 = ["<s>", "a", "black", "cat", "riding", "a", "red", "bicycle", "</s>"]


def test_word_swap_needs_equal_token_counts_and_points_to_refine():
    with pytest.raises(IP2PError, match="refine"):
        p2p.replace_map(CAPTION_0, CAPTION_1)


def test_word_swap_maps_every_token_to_the_same_position():
    token_map = p2p.replace_map(["<s>", "a", "cat", "</s>"], ["<s>", "a", "dog", "</s>"], length=8)
    assert token_map.index.tolist() == list(range(8)) and token_map.alphas.tolist() == [1.0] * 8


def test_refine_aligns_the_shared_words_and_marks_the_added_ones():
    assert p2p.align_tokens(CAPTION_0, CAPTION_1) == [0, 1, -1, 2, 3, 4, -1, 5, 6]
    token_map = p2p.refine_map(CAPTION_0, CAPTION_1, length=12)
    assert token_map.index.tolist() == [0, 1, 0, 2, 3, 4, 0, 5, 6, 7, 8, 9]  # padding follows each caption's end
    assert token_map.alphas.tolist() == [1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1]


def test_refine_gives_prompt_1_the_aligned_columns_of_prompt_0_and_keeps_its_own_for_added_words():
    length = 12
    rows = RowRoles.grid(1)
    probs = random_probs(rows, keys=length)
    controller = OriginalP2P.from_tokens(CAPTION_0, CAPTION_1, "refine", length=length)
    edited = controller.edit(probs, CROSS_LAYER, 0.5, rows)
    assert torch.equal(edited[1][..., 3], probs[0][..., 2])  # "cat" of prompt 1 ← "cat" of prompt 0
    assert torch.equal(edited[1][..., 7], probs[0][..., 5])  # "bicycle"
    assert torch.equal(edited[1][..., 2], probs[1][..., 2])  # "black" is new: its own attention
    assert torch.equal(edited[1][..., 6], probs[1][..., 6])  # "red"


def test_the_original_edit_changes_cond_rows_only_and_only_inside_its_window():
    rows = RowRoles.grid(1)
    probs = random_probs(rows, keys=8)
    controller = OriginalP2P(p2p.replace_map([0, 1, 2], [0, 3, 2], length=8), cross_window=(0.2, 0.6))
    edited = controller.edit(probs, CROSS_LAYER, 0.4, rows)
    assert torch.equal(edited[1], probs[0])  # cond prompt 1 ← cond prompt 0
    assert torch.equal(edited[3], probs[3])  # uncond untouched, as in Hertz et al.
    for outside in (0.1, 0.6, 0.9):
        assert torch.equal(controller.edit(probs, CROSS_LAYER, outside, rows), probs)


def test_reweight_scales_the_chosen_tokens_of_the_edited_attention():
    rows = RowRoles.grid(1)
    probs = random_probs(rows, keys=8)
    token_map = p2p.replace_map([0, 1, 2], [0, 1, 2], length=8)
    plain = OriginalP2P(token_map).edit(probs, CROSS_LAYER, 0.0, rows)
    scale = p2p.equalizer({2: 3.0, 1: 0.0}, length=8)
    weighted = OriginalP2P(token_map, reweight=scale).edit(probs, CROSS_LAYER, 0.0, rows)
    torch.testing.assert_close(weighted[1][..., 2], 3.0 * plain[1][..., 2], rtol=0, atol=0)
    assert torch.equal(weighted[1][..., 1], torch.zeros_like(plain[1][..., 1]))
    assert torch.equal(weighted[1][..., [0, 3, 4, 5, 6, 7]], plain[1][..., [0, 3, 4, 5, 6, 7]])
    assert torch.equal(weighted[0], probs[0])


def test_a_token_map_for_another_length_is_refused():
    token_map = TokenMap(torch.arange(8), torch.ones(8))
    with pytest.raises(IP2PError, match="length"):
        token_map.apply(torch.rand(1, 1, 4, 77), torch.rand(1, 1, 4, 77))


def test_word_positions_finds_every_occurrence_of_a_multi_token_word():
    assert p2p.word_positions([5, 1, 2, 7, 1, 2], [1, 2]) == [1, 2, 4, 5]
    assert p2p.word_positions([5, 1, 2], [9]) == []


def test_original_self_attention_replacement_follows_its_window_size_limit_and_branches():
    rows = RowRoles.grid(1)
    probs = random_probs(rows)
    controller = OriginalP2P(p2p.replace_map([0], [0], 8), self_window=(0.0, 0.4), self_max_queries=QUERIES)
    edited = controller.edit(probs, SELF_LAYER, 0.3, rows)
    assert torch.equal(edited[1], probs[0]) and torch.equal(edited[3], probs[3])  # cond only
    assert torch.equal(controller.edit(probs, SELF_LAYER, 0.4, rows), probs)  # window over
    large = OriginalP2P(p2p.replace_map([0], [0], 8), self_max_queries=QUERIES - 1)
    assert torch.equal(large.edit(probs, SELF_LAYER, 0.0, rows), probs)  # maps too large: theirs skip 64×64


def test_original_cross_layers_are_explicit_in_the_window_or_while_blending():
    rows = RowRoles.grid(1)
    token_map = p2p.replace_map([0], [0], 8)
    assert OriginalP2P(token_map, cross_window=(0, 0.5)).plan(CROSS_LAYER, 0.7, rows, QUERIES) is None
    assert OriginalP2P(token_map, cross_window=(0, 0.5)).plan(CROSS_LAYER, 0.2, rows, QUERIES).explicit
    blending = OriginalP2P(token_map, cross_window=(0, 0.5), blend=LocalBlend([1], [1]))
    assert blending.plan(CROSS_LAYER, 0.7, rows, QUERIES).explicit


# -- local blend --------------------------------------------------------------------------------------


def word_attention(rows: RowRoles, grid: int, hot: slice, word: int = 1, keys: int = 8) -> torch.Tensor:
    """Cross-attention where token ``word`` takes 0.9 of the attention inside the square ``hot``×``hot``
    of a ``grid``×``grid`` map and 0.01 elsewhere; the rest spreads over the other tokens."""
    spatial = torch.full((grid, grid), 0.01)
    spatial[hot, hot] = 0.9
    probs = torch.full((len(rows), HEADS, grid * grid, keys), 0.0)
    probs[..., word] = spatial.flatten()
    rest = (1 - probs[..., word : word + 1]) / (keys - 1)
    others = [k for k in range(keys) if k != word]
    probs[..., others] = rest.expand(*rest.shape[:-1], keys - 1)
    return probs


def test_local_blend_masks_where_the_words_attend_at_the_lowest_resolution():
    rows = RowRoles.grid(2)
    blend = LocalBlend([1], [1], threshold=0.3, dilate=0)
    blend.observe(word_attention(rows, 8, slice(0, 4)), CROSS_LAYER, rows)  # 8×8: top-left quarter
    blend.observe(word_attention(rows, 4, slice(2, 4)), CROSS_LAYER, rows)  # 4×4, the lowest: bottom-right
    mask = blend.mask((16, 16))
    assert mask.shape == (2, 1, 16, 16)
    expected = torch.zeros(16, 16)
    expected[8:, 8:] = 1
    assert torch.equal(mask[0, 0], expected) and torch.equal(mask[1, 0], expected)


def test_local_blend_ignores_uncond_rows_and_layers_outside_its_places():
    rows = RowRoles.grid(1)
    blend = LocalBlend([1], [1], dilate=0)
    probs = word_attention(rows, 4, slice(0, 2))
    probs[2:] = word_attention(RowRoles.grid(1, (UNCOND,)), 4, slice(2, 4))  # uncond rows elsewhere
    blend.observe(probs, CROSS_LAYER, rows)
    blend.observe(word_attention(rows, 2, slice(1, 2)), MID_CROSS, rows)  # lower, but mid
    mask = blend.mask((4, 4))[0, 0]
    assert mask[:2, :2].all() and not mask[2:, :].any() and not mask[:, 2:].any()


def test_local_blend_dilates_the_mask():
    rows = RowRoles.grid(1)
    blend = LocalBlend([1], [1], dilate=1)
    blend.observe(word_attention(rows, 8, slice(3, 5)), CROSS_LAYER, rows)
    mask = blend.mask((8, 8))[0, 0]
    assert mask[2:6, 2:6].all() and mask.sum() == 16


def test_local_blend_keeps_prompt_0_outside_the_mask_and_prompt_1_inside():
    rows, latent_rows = RowRoles.grid(1), RowRoles.latents(1)
    blend = LocalBlend([1], [], dilate=0, start=0.2)
    blend.observe(word_attention(rows, 4, slice(0, 2)), CROSS_LAYER, rows)
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    blended = blend(latents, 0.5, latent_rows)
    assert torch.equal(blended[0], latents[0])
    assert torch.equal(blended[1][:, :2, :2], latents[1][:, :2, :2])
    assert torch.equal(blended[1][:, 2:, :], latents[0][:, 2:, :]) and torch.equal(
        blended[1][:, :, 2:], latents[0][:, :, 2:]
    )
    assert torch.equal(blend(latents, 0.1, latent_rows), latents)  # before its start


def test_the_original_controller_blends_through_its_step_hook():
    rows, latent_rows = RowRoles.grid(1), RowRoles.latents(1)
    controller = OriginalP2P(p2p.replace_map([0, 1], [0, 1], 8), blend=LocalBlend([1], [1], start=0.0, dilate=0))
    controller.edit(word_attention(rows, 4, slice(0, 2)), CROSS_LAYER, 0.0, rows)  # the blend observes the maps
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    blended = controller.after_step(latents, 0.0, latent_rows)
    assert torch.equal(blended[1][:, 3, 3], latents[0][:, 3, 3]) and torch.equal(
        blended[1][:, 0, 0], latents[1][:, 0, 0]
    )
    controller.reset()
    assert torch.equal(controller.after_step(latents, 0.0, latent_rows), latents)  # no maps after a reset


def test_local_blend_needs_a_word():
    with pytest.raises(IP2PError, match="word"):
        LocalBlend([], [])
