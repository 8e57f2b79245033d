"""Each quality metric equals its formula on fixed embeddings and images, and the identities hold."""

from __future__ import annotations

import math

import pytest
import torch

from ip2p.clip_filter import clip_scores
from ip2p.errors import IP2PError
from ip2p.quality import metrics as m


def test_cosine_is_the_normalised_dot_product():
    a, b = torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([[4.0, 3.0], [0.0, 2.0]])
    assert m.cosine(a, b).tolist() == pytest.approx([24 / 25, 0.0])


def test_a_one_row_side_is_shared_by_every_row():
    a, b = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    assert m.cosine(a, b).tolist() == pytest.approx([1 / math.sqrt(2)] * 2)


def test_directional_similarity_is_the_clip_filters():
    generator = torch.Generator().manual_seed(0)
    x, e, c0, c1 = (torch.randn(5, 8, generator=generator) for _ in range(4))
    assert m.directional(x, e, c0, c1).tolist() == pytest.approx(clip_scores(x, e, c0, c1).sim_dir.tolist(), abs=1e-6)


def test_l1_and_l2_are_the_mean_absolute_and_squared_differences():
    edit = torch.zeros(1, 3, 2, 2)
    target = torch.tensor([0.5, 0.0, 0.0, 1.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    distances = m.pixel_distances(edit, target)
    assert distances["l1"].item() == pytest.approx(1.5 / 4)
    assert distances["l2"].item() == pytest.approx(1.25 / 4)  # the mean squared error, not its root


def test_an_edit_equal_to_its_target_is_at_distance_zero_and_similarity_one():
    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    distances = m.pixel_distances(image, image.clone())
    assert distances["l1"].tolist() == [0.0, 0.0] and distances["l2"].tolist() == [0.0, 0.0]
    embedding = torch.randn(2, 16, generator=torch.Generator().manual_seed(2))
    assert m.cosine(embedding, embedding.clone()).tolist() == pytest.approx([1.0, 1.0])  # CLIP-I, DINO


def test_an_edit_of_another_size_is_compared_at_the_targets_size():
    edit, target = torch.full((1, 3, 16, 16), 0.25), torch.full((1, 3, 8, 8), 0.75)
    assert m.pixel_distances(edit, target)["l1"].item() == pytest.approx(0.5)


def test_mismatched_batches_are_refused():
    with pytest.raises(IP2PError, match="same B"):
        m.pixel_distances(torch.zeros(2, 3, 4, 4), torch.zeros(1, 3, 4, 4))


def test_the_bootstrap_interval_holds_the_mean_and_is_deterministic():
    values = [0.1, 0.4, 0.35, 0.2, 0.5, 0.3]
    low, high = m.bootstrap_interval(values)
    assert low < sum(values) / len(values) < high
    assert m.bootstrap_interval(values) == (low, high)
    assert m.bootstrap_interval([0.3]) is None


def test_a_summary_ignores_non_finite_values_and_counts_the_rest():
    summary = m.summarize([0.2, float("nan"), 0.4])
    assert summary["mean"] == pytest.approx(0.3) and summary["n"] == 2


def test_toy_distances_and_hit_rate_inside_and_outside_the_mask():
    source = torch.zeros(3, 2, 2)
    truth = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).expand(3, 2, 2)
    mask = torch.tensor([[True, True], [False, False]])
    perfect, half = truth.clone(), torch.tensor([[0.9, 0.2], [0.1, 0.0]]).expand(3, 2, 2)
    assert m.masked_distance(perfect, truth, mask) == 0.0 and m.hit_rate(perfect, source, truth, mask) == 1.0
    assert m.hit_rate(source, source, truth, mask) == 0.0  # an unchanged input
    assert m.hit_rate(half, source, truth, mask) == 0.5  # closer to the truth at one of the two masked pixels
    assert m.masked_distance(half, source, ~mask) == pytest.approx(0.05)  # the change outside the mask
    assert math.isnan(m.masked_distance(half, truth, torch.zeros(2, 2, dtype=torch.bool)))
