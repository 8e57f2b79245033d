"""score_edits: every metric of a batch of edits, each skipped metric with its reason, the order kept."""

from __future__ import annotations

import pytest
import torch

from ip2p.quality import scoring
from ip2p.quality.metrics import ALL_METRICS, TOY_METRICS
from ip2p.quality.scoring import EditToScore, score_edits


@pytest.fixture(scope="module")
def clip_and_dino(tmp_path_factory):
    pytest.importorskip("transformers")
    from ip2p.clip_filter import ClipScorer
    from ip2p.headless.random_model import save_random_clip, save_random_dino
    from ip2p.quality.dino import DinoScorer

    root = tmp_path_factory.mktemp("scorers")
    clip = ClipScorer.from_folder(save_random_clip(root / "clip"), device="cpu", dtype="float32")
    return clip, DinoScorer.from_folder(save_random_dino(root / "dino"), device="cpu", dtype="float32")


def image(seed: int, height: int = 16, width: int = 16) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def full(seed: int = 0, **changes) -> EditToScore:
    """An item that lacks nothing: target, both captions, an edit mask and an edit under a wrong instruction."""
    fields = dict(
        input=image(seed),
        edit=image(seed + 1),
        target=image(seed + 2),
        input_caption="a red square",
        output_caption="a blue square",
        mask=torch.zeros(16, 16, dtype=torch.bool).index_fill_(0, torch.arange(4, 12), True),
        wrong_edit=image(seed + 3),
    )
    return EditToScore(**{**fields, **changes})


class MeanColour:
    """A duck-typed CLIP: images embed as their mean colour, captions by their length."""

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3)) + 0.1

    def embed_captions(self, captions: list[str]) -> torch.Tensor:
        return torch.tensor([[len(c), 1.0, 2.0] for c in captions])


def test_an_edit_equal_to_its_target_is_at_distance_zero_and_similarity_one(clip_and_dino):
    clip, dino = clip_and_dino
    target = image(5, 40, 40)
    (row,) = score_edits([full(edit=target, target=target, mask=None)], clip=clip, dino=dino)
    assert row["metrics"]["l1"] == row["metrics"]["l2"] == 0
    assert row["metrics"]["clip_i"] == pytest.approx(1, abs=1e-5)
    assert row["metrics"]["dino"] == pytest.approx(1, abs=1e-5)


def test_an_item_lacking_nothing_gets_every_metric(clip_and_dino):
    (row,) = score_edits([full()], clip=clip_and_dino[0], dino=clip_and_dino[1])
    assert set(row["metrics"]) == set(ALL_METRICS) and row["skipped"] == {}


def test_clip_t_is_sim_1_the_edit_against_the_target_caption():
    (row,) = score_edits([full()], clip=MeanColour())
    assert row["metrics"]["clip_t"] == row["metrics"]["sim_1"]


@pytest.mark.parametrize(
    ("item", "scorers", "expected"),
    [
        (full(), {}, {"sim_0": scoring.NO_CLIP, "image": scoring.NO_CLIP, "dino": scoring.NO_DINO}),
        (full(target=None), {"clip": MeanColour()}, {"l1": scoring.NO_TARGET, "clip_i": scoring.NO_TARGET}),
        (full(input_caption=None), {"clip": MeanColour()}, {"sim_0": scoring.NO_INPUT_CAPTION}),
        (full(output_caption=None), {"clip": MeanColour()}, {"clip_t": scoring.NO_OUTPUT_CAPTION}),
        (full(mask=None), {}, dict.fromkeys(TOY_METRICS, scoring.NO_MASK)),
        (full(wrong_edit=None), {}, {"toy.wrong_instruction_to_truth": scoring.NO_WRONG_EDIT}),
        (full(mask=torch.ones(8, 8, dtype=torch.bool)), {}, dict.fromkeys(TOY_METRICS, scoring.UNMATCHED_SIZES)),
    ],
    ids=[
        "no scorers",
        "no target",
        "no input caption",
        "no output caption",
        "no mask",
        "no wrong-instruction edit",
        "mask of another size",
    ],
)
def test_a_metric_whose_inputs_are_missing_is_skipped_with_the_reason(item, scorers, expected):
    (row,) = score_edits([item], **scorers)
    assert {name: row["skipped"].get(name) for name in expected} == expected
    assert not set(expected) & set(row["metrics"])  # skipped, never 0


def test_a_datasets_own_edit_is_not_compared_with_itself():
    (row,) = score_edits([full()], clip=MeanColour(), edit_is_target=True)
    assert {row["skipped"][name] for name in ("l1", "l2", "clip_i", *TOY_METRICS)} == {scoring.NO_MODEL}
    assert {"sim_0", "sim_1", "directional", "image", "clip_t"} <= set(row["metrics"])


def test_an_edit_of_another_size_is_brought_to_the_targets():
    target = torch.full((1, 3, 16, 16), 0.25)
    (row,) = score_edits([full(edit=torch.full((1, 3, 32, 32), 0.25), target=target)])
    assert row["metrics"]["l1"] == pytest.approx(0, abs=1e-6)


def test_the_wrong_instruction_baseline_is_its_edits_distance_to_the_truth_inside_the_mask():
    item = full()
    (row,) = score_edits([item])
    inside = item.mask
    expected = (item.wrong_edit[0] - item.target[0]).abs().mean(dim=0)[inside].mean()
    assert row["metrics"]["toy.wrong_instruction_to_truth"] == pytest.approx(float(expected))


def test_the_order_is_kept_and_each_item_scores_as_it_would_alone_whatever_the_sizes():
    items = [
        full(0),
        full(10, input=image(10, 24, 16), edit=image(11, 24, 16), target=image(12, 24, 16), mask=None),
        full(20, output_caption="a green circle"),
        full(30, target=None, input_caption=None),
    ]
    together = score_edits(items, clip=MeanColour())
    alone = [score_edits([item], clip=MeanColour())[0] for item in items]
    assert together == alone
    assert together[1]["metrics"]["l1"] != together[0]["metrics"]["l1"]
