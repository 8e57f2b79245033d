"""Training tensors from edit pairs: the same crop and flip for both images, [-1, 1], a seeded sharded order."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from ip2p_train.data import ShardedPositions, epoch_permutation, pair_to_tensors
from PIL import Image


def _image(seed: int, size=(40, 30)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_both_images_get_the_same_crop_and_flip():
    image = _image(0)
    for seed in range(8):
        a, b = pair_to_tensors(image, image.copy(), 16, 0.5, torch.Generator().manual_seed(seed))
        assert a.shape == (3, 16, 16) and torch.equal(a, b)


def test_pixels_are_in_minus_one_to_one():
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[:, 8:] = 255  # black left half, white right half
    image = Image.fromarray(pixels)
    a, _ = pair_to_tensors(image, image, 16, 0.0, torch.Generator().manual_seed(0))
    assert a[:, :, :8].eq(-1).all() and a[:, :, 8:].eq(1).all()


def test_a_flip_of_one_mirrors_what_a_flip_of_zero_gives():
    kept, _ = pair_to_tensors(_image(3), _image(4), 16, 0.0, torch.Generator().manual_seed(5))
    flipped, _ = pair_to_tensors(_image(3), _image(4), 16, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(flipped, kept.flip(-1))


def test_two_processes_read_the_stream_one_process_with_twice_the_batch_reads():
    one = list(itertools.islice(iter(ShardedPositions(4, 0, 1)), 12))
    p0 = list(itertools.islice(iter(ShardedPositions(2, 0, 2)), 6))
    p1 = list(itertools.islice(iter(ShardedPositions(2, 1, 2)), 6))
    merged = [x for i in range(3) for x in p0[2 * i : 2 * i + 2] + p1[2 * i : 2 * i + 2]]
    assert merged == one == list(range(12))


def test_a_resumed_sampler_starts_where_the_run_stopped():
    assert next(iter(ShardedPositions(2, 1, 2, start_micro=3))) == 3 * 4 + 2


def test_the_data_order_is_a_seeded_permutation_per_epoch():
    assert sorted(epoch_permutation(0, 0, 10).tolist()) == list(range(10))
    assert torch.equal(epoch_permutation(0, 1, 10), epoch_permutation(0, 1, 10))
    assert not torch.equal(epoch_permutation(0, 0, 10), epoch_permutation(0, 1, 10))
