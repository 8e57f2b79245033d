"""The data engine's CLIP filter: the paper's four similarities, its keep rule, and a local CLIP scorer."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ip2p.clip_filter import (
    RANK,
    ClipScorer,
    ClipScores,
    FilterThresholds,
    check_clip_folder,
    clip_scores,
    count_rejections,
    select_samples,
)
from ip2p.errors import IP2PError
from ip2p.headless.random_model import CLIP_MEAN, CLIP_STD, TINY_CLIP_IMAGE, clip_preprocessor_config, save_random_clip

R2 = math.sqrt(2.0)


def vectors(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def scores(sim_0, sim_1, sim_dir, sim_image) -> ClipScores:
    return ClipScores(*(torch.tensor(v, dtype=torch.float32) for v in (sim_0, sim_1, sim_dir, sim_image)))


def good(n: int, sim_dir) -> ClipScores:
    """n samples that pass every default threshold, with the given sim_dir values."""
    return scores([0.3] * n, [0.3] * n, sim_dir, [0.9] * n)


# ------------------------------------------------------------------------------------------- metrics


def test_similarities_equal_a_hand_computation():
    # Unit directions: x_0 = (1,0,0), x_1 = (1,1,0)/√2, c_0 = (1,0,1)/√2, c_1 = (0,1,0).
    s = clip_scores(vectors([2, 0, 0]), vectors([3, 3, 0]), vectors([1, 0, 1]), vectors([0, 4, 0]))
    # x_1 − x_0 = (1/√2 − 1, 1/√2, 0), |.|² = 2 − √2; c_1 − c_0 = (−1/√2, 1, −1/√2), |.|² = 2; dot = √2 − 1/2.
    expected_dir = (R2 - 0.5) / math.sqrt(2 * (2 - R2))
    assert s.sim_0.tolist() == pytest.approx([1 / R2])
    assert s.sim_1.tolist() == pytest.approx([1 / R2])
    assert s.sim_image.tolist() == pytest.approx([1 / R2])
    assert s.sim_dir.tolist() == pytest.approx([expected_dir])  # 0.8446


def test_sim_dir_compares_differences_of_normalised_embeddings():
    # x_0 = (1,0,0), x_1 = (10,10,0): the unit difference is (1/√2 − 1, 1/√2, 0); the caption's is (−1, 1, 0).
    s = clip_scores(vectors([1, 0, 0]), vectors([10, 10, 0]), vectors([1, 0, 0]), vectors([0, 1, 0]))
    assert s.sim_dir.item() == pytest.approx(1 / (math.sqrt(2 - R2) * R2))  # 0.924
    raw = F.cosine_similarity(vectors([9, 10, 0]), vectors([-1, 1, 0]))  # differences of raw embeddings: 0.053
    assert abs(s.sim_dir.item() - raw.item()) > 0.5


@pytest.mark.numerics
def test_scores_do_not_depend_on_embedding_lengths():
    g = torch.Generator().manual_seed(0)
    img_0, img_1, cap_0, cap_1 = (torch.randn(5, 8, generator=g) for _ in range(4))
    a = clip_scores(img_0, img_1, cap_0, cap_1)
    b = clip_scores(img_0 * 7, img_1 * 0.1, cap_0 * 3, cap_1 * 20)
    # scaled inputs round otherwise; clip_scores works in float32 by design. Measured 1.2e-7 within a kernel setting,
    # 2.4e-7 across settings: torch's float32 defaults (1e-5 + 1.3e-6 relative) keep 40x
    for name in ("sim_0", "sim_1", "sim_dir", "sim_image"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))


@pytest.mark.numerics
def test_one_caption_embedding_is_shared_by_every_sample():
    g = torch.Generator().manual_seed(1)
    img_0, img_1 = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    cap_0, cap_1 = torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g)
    shared = clip_scores(img_0, img_1, cap_0, cap_1)
    repeated = clip_scores(img_0, img_1, cap_0.repeat(3, 1), cap_1.repeat(3, 1))
    assert len(shared) == 3
    # broadcast against repeated, float32: 0 within every kernel setting, 2e-7 across; the float32 defaults keep 50x
    for name in ("sim_0", "sim_1", "sim_dir", "sim_image"):
        torch.testing.assert_close(getattr(shared, name), getattr(repeated, name))


@pytest.mark.parametrize(
    "shapes",
    [((2, 4), (3, 4), (2, 4), (2, 4)), ((2, 4), (2, 4), (2, 5), (2, 4)), ((2, 4), (2, 4), (3, 4), (2, 4)), ((4,),) * 4],
    ids=["image-batches", "widths", "caption-batch", "not-2d"],
)
def test_mismatched_embeddings_are_refused(shapes):
    with pytest.raises(IP2PError, match="mismatched shapes.*B×D"):
        clip_scores(*(torch.zeros(shape) for shape in shapes))


def test_scores_convert_to_the_papers_metadata_keys():
    rows = scores([0.25, 0.5], [0.3, 0.1], [0.4, -0.2], [0.8, 0.9]).as_dicts()
    assert rows == [
        pytest.approx({"clip_sim_0": 0.25, "clip_sim_1": 0.3, "clip_sim_dir": 0.4, "clip_sim_image": 0.8}),
        pytest.approx({"clip_sim_0": 0.5, "clip_sim_1": 0.1, "clip_sim_dir": -0.2, "clip_sim_image": 0.9}),
    ]


# -------------------------------------------------------------------------------------------- filter


def test_default_thresholds_are_the_papers():
    assert FilterThresholds() == FilterThresholds(sim_0=0.2, sim_1=0.2, sim_dir=0.2, sim_image=0.75, keep=4)


def test_samples_passing_every_threshold_are_kept_best_sim_dir_first():
    result = select_samples(good(3, [0.3, 0.9, 0.5]))
    assert result.kept == (1, 2, 0)
    assert result.rejected == {}


def test_each_rejected_sample_names_the_first_threshold_it_missed():
    result = select_samples(
        scores(
            sim_0=[0.1, 0.3, 0.3, 0.3, 0.1, 0.3],
            sim_1=[0.3, 0.1, 0.3, 0.3, 0.1, 0.3],
            sim_dir=[0.3, 0.3, 0.1, 0.3, 0.1, 0.3],
            sim_image=[0.9, 0.9, 0.9, 0.5, 0.5, 0.9],
        )
    )
    assert result.kept == (5,)
    assert result.rejected == {
        0: "clip_sim_0",
        1: "clip_sim_1",
        2: "clip_sim_dir",
        3: "clip_sim_image",
        4: "clip_sim_0",  # misses all four: the first in the order sim_0, sim_1, sim_dir, sim_image
    }


def test_a_score_equal_to_its_threshold_passes():
    t = FilterThresholds(sim_0=0.25, sim_1=0.5, sim_dir=0.125, sim_image=0.75)  # exact in float32
    assert select_samples(scores([0.25], [0.5], [0.125], [0.75]), t).kept == (0,)


def test_only_the_best_keep_by_sim_dir_stay_and_the_rest_are_rejected_by_rank():
    result = select_samples(good(6, [0.3, 0.8, 0.25, 0.9, 0.6, 0.7]))
    assert result.kept == (3, 1, 5, 4)
    assert result.rejected == {0: RANK, 2: RANK}


def test_equal_sim_dir_is_ranked_by_index():
    result = select_samples(good(5, [0.5, 0.7, 0.5, 0.5, 0.5]), FilterThresholds(keep=3))
    assert result.kept == (1, 0, 2)
    assert result.rejected == {3: "rank", 4: "rank"}


def test_fewer_survivors_than_keep_are_all_kept():
    result = select_samples(scores([0.3, 0.1, 0.3], [0.3, 0.3, 0.3], [0.4, 0.9, 0.5], [0.9, 0.9, 0.9]))
    assert result.kept == (2, 0)
    assert result.rejected == {1: "clip_sim_0"}


def test_a_nan_score_misses_its_threshold():
    result = select_samples(scores([0.3, 0.3], [0.3, 0.3], [float("nan"), 0.4], [0.9, 0.9]))
    assert result.kept == (1,)
    assert result.rejected == {0: "clip_sim_dir"}


def test_every_threshold_and_keep_can_be_set():
    s = scores([0.3, 0.6, 0.6], [0.6, 0.6, 0.6], [0.6, 0.6, 0.7], [0.6, 0.6, 0.6])
    strict = FilterThresholds(sim_0=0.5, sim_1=0.5, sim_dir=0.5, sim_image=0.5, keep=1)
    assert select_samples(s, strict).kept == (2,)
    assert select_samples(s, strict).rejected == {0: "clip_sim_0", 1: "rank"}
    assert select_samples(s).kept == ()  # the default sim_image of 0.75 rejects all three


@pytest.mark.parametrize(
    "bad", [{"sim_0": 1.5}, {"sim_image": float("nan")}, {"sim_dir": "0.2"}, {"keep": 0}, {"keep": 2.0}, {"keep": True}]
)
def test_impossible_thresholds_are_refused(bad):
    with pytest.raises(IP2PError, match=next(iter(bad))):
        FilterThresholds(**bad)


def test_rejections_are_counted_over_prompts():
    first = select_samples(scores([0.1, 0.3], [0.3, 0.3], [0.3, 0.3], [0.9, 0.5]))
    second = select_samples(good(6, [0.5] * 6))
    assert count_rejections([first, second]) == Counter({"clip_sim_0": 1, "clip_sim_image": 1, "rank": 2})


# -------------------------------------------------------------------------------- the model (tiny)

IMAGE_SIZE = TINY_CLIP_IMAGE
MEAN, STD = list(CLIP_MEAN), list(CLIP_STD)


def preprocessor_config(size: int = IMAGE_SIZE) -> dict:
    return clip_preprocessor_config(size)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A random-weight CLIPModel saved like a downloaded one: weights, config, tokenizer, image processor."""
    pytest.importorskip("transformers")
    return save_random_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def scorer(tiny_clip_dir):
    return ClipScorer.from_folder(tiny_clip_dir, device="cpu", dtype="float32")


def smooth_images(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    """n photo-like (low-frequency) RGB images, B×3×H×W in [0, 1], on the 8-bit grid."""
    coarse = torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    return (F.interpolate(coarse, size=(height, width), mode="bilinear") * 255).round() / 255


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    arrays = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]


@pytest.mark.numerics
def test_scores_equal_clip_features_computed_directly(scorer, tiny_clip_dir):
    transformers = pytest.importorskip("transformers")
    model = transformers.CLIPModel.from_pretrained(tiny_clip_dir, local_files_only=True).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(tiny_clip_dir, local_files_only=True)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tiny_clip_dir, local_files_only=True)
    images_0, images_1 = to_pil(smooth_images(3, 40, 48, seed=1)), to_pil(smooth_images(3, 40, 48, seed=2))
    captions_0 = ["a photo of a cat", "a dog", "a house in summer"]
    captions_1 = ["a painting of a cat", "a red dog", "a house in winter"]

    def image_features(images):
        out = model.get_image_features(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
        return F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)

    def text_features(captions):
        out = model.get_text_features(**tokenizer(captions, padding=True, return_tensors="pt"))
        return F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)

    with torch.no_grad():
        x_0, x_1 = image_features(images_0), image_features(images_1)
        c_0, c_1 = text_features(captions_0), text_features(captions_1)
    got = scorer.score(images_0, images_1, captions_0, captions_1)
    # the scorer against the same transformers calls by hand, float32: 0 within every kernel setting, at most
    # 9.8e-7 across settings; 1e-5 keeps 10x
    torch.testing.assert_close(got.sim_0, F.cosine_similarity(x_0, c_0), rtol=0, atol=1e-5)
    torch.testing.assert_close(got.sim_1, F.cosine_similarity(x_1, c_1), rtol=0, atol=1e-5)
    torch.testing.assert_close(got.sim_dir, F.cosine_similarity(x_1 - x_0, c_1 - c_0), rtol=0, atol=1e-5)
    torch.testing.assert_close(got.sim_image, F.cosine_similarity(x_0, x_1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("height, width", [(41, 57), (27, 20), (64, 96)], ids=["down", "up", "integer-down"])
def test_tensor_images_are_preprocessed_like_the_image_processor(scorer, height, width):
    # Tolerance, in normalised units (1/255 of brightness is about 0.015 there): PIL resizes in two
    # 8-bit passes and rounds each, torch in float, so photo-like images differ by ≤ 0.02 per pixel
    # (about 1.3/255) and ≤ 0.006 on average.
    images = smooth_images(2, height, width, seed=3)
    reference = scorer.pixel_values(to_pil(images))
    ours = scorer.pixel_values(images)
    assert ours.shape == reference.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert (ours - reference).abs().max() <= 0.02
    assert (ours - reference).abs().mean() <= 0.006


def test_resizing_a_sharp_edge_stays_within_the_8_bit_range(scorer):
    images = torch.zeros(1, 3, 45, 60)
    images[..., :, 31:] = 1.0  # black | white: bicubic overshoots here unless clamped, as 8-bit images are
    pixels = scorer.pixel_values(images) * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_images_in_comfyuis_channel_last_layout_are_refused_with_the_fix(scorer):
    with pytest.raises(IP2PError, match=r"B×3×H×W.*movedim"):
        scorer.embed_images(torch.rand(1, 32, 32, 3))


@pytest.mark.numerics
def test_one_caption_string_applies_to_every_pair(scorer):
    images_0, images_1 = smooth_images(2, 32, 32, seed=4), smooth_images(2, 32, 32, seed=5)
    shared = scorer.score(images_0, images_1, "a photo of a cat", "a photo of a dog")
    listed = scorer.score(images_0, images_1, ["a photo of a cat"] * 2, ["a photo of a dog"] * 2)
    assert len(shared) == 2
    # one caption encoded once against twice (another text-encoder batch), float32: measured 3e-7 within a kernel
    # setting, 8.6e-7 across settings (1e-6 allowed before: 1.2x); 1e-5 keeps 11x (another caption moves it ~0.1)
    torch.testing.assert_close(shared.sim_dir, listed.sim_dir, rtol=0, atol=1e-5)


@pytest.mark.numerics
def test_the_model_runs_in_the_requested_dtype(tiny_clip_dir, scorer):
    double = ClipScorer.from_folder(tiny_clip_dir, device="cpu", dtype=torch.float64)
    assert double.dtype == torch.float64 and double.device.type == "cpu"
    images = smooth_images(1, 32, 32, seed=6)
    # float64 against float32, i.e. float32's own rounding: measured 4.5e-7 within a kernel setting, 9.5e-7 across
    # settings; 1e-5 keeps 10x
    torch.testing.assert_close(double.embed_images(images), scorer.embed_images(images), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "removed, named",
    [
        ("config.json", "config.json"),
        ("model.safetensors", "model.safetensors or pytorch_model.bin"),
        ("vocab.json", "vocab.json and merges.txt"),
        ("preprocessor_config.json", "preprocessor_config.json"),
    ],
)
def test_a_folder_lacking_a_needed_file_is_refused_naming_it(tiny_clip_dir, tmp_path, removed, named):
    for path in tiny_clip_dir.iterdir():
        if path.name != removed:
            (tmp_path / path.name).write_bytes(path.read_bytes())
    with pytest.raises(IP2PError, match=rf"lacks {named}.*A CLIP folder is .*preprocessor_config.json"):
        ClipScorer.from_folder(tmp_path, device="cpu")


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(IP2PError, match="CLIP model folder not found.*config.json"):
        check_clip_folder(tmp_path / "nowhere")


def test_a_vision_only_model_is_refused(tiny_clip_dir, tmp_path):
    for path in tiny_clip_dir.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}), encoding="utf-8")
    with pytest.raises(IP2PError, match="'clip_vision_model' model, not a CLIP dual encoder"):
        check_clip_folder(tmp_path)
