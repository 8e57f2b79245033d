"""Automatic guidance: the rule that picks one (text_cfg, image_cfg) of a scored sweep, and ``ip2p edit --auto-cfg``.

The rule's tests use fixed scores; the command runs a tiny random model and a random CLIP, so its
numbers mean nothing: what it writes, records and refuses does.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from ip2p import cli
from ip2p.errors import IP2PError
from ip2p.headless.random_model import save_random_clip
from ip2p.images import read_metadata
from ip2p.plot import TradeoffPoint
from ip2p.quality.auto_cfg import choose_guidance

FAST = ["--steps", "1", "--sampler", "euler", "--resize", "keep", "-q"]  # 16 px in, 16 px worked on: fast
CAPTIONS = ["--input-caption", "a photo of a house", "--edited-caption", "a photo of a house in winter"]


def _point(text_cfg, image_cfg, directional, image_similarity) -> TradeoffPoint:
    return TradeoffPoint(
        image_cfg=image_cfg, text_cfg=text_cfg, directional=directional, image_similarity=image_similarity
    )


def _scales(point: TradeoffPoint) -> tuple[float, float]:
    return point.text_cfg, point.image_cfg


# --- the rule ---


def test_the_highest_directional_similarity_at_or_above_the_floor_is_chosen():
    points = [_point(5, 1.2, 0.10, 0.90), _point(7.5, 1.5, 0.25, 0.75), _point(10, 1.8, 0.20, 0.80)]
    choice = choose_guidance(points, 0.75)
    assert _scales(choice.chosen) == (7.5, 1.5)  # exactly at the floor counts
    assert choice.reached_floor
    assert "highest directional similarity (0.2500) of the 3 of 3 settings" in choice.reason


def test_a_setting_below_the_floor_is_not_chosen_however_far_it_follows_the_instruction():
    points = [_point(5, 1.2, 0.10, 0.90), _point(10, 1.2, 0.90, 0.60)]
    assert _scales(choose_guidance(points, 0.75).chosen) == (5, 1.2)


def test_when_no_setting_reaches_the_floor_the_one_keeping_most_of_the_input_is_chosen_and_the_reason_says_so():
    points = [_point(5, 1.2, 0.30, 0.60), _point(5, 1.8, 0.10, 0.70), _point(10, 1.2, 0.40, 0.50)]
    choice = choose_guidance(points, 0.75)
    assert _scales(choice.chosen) == (5, 1.8)
    assert not choice.reached_floor
    assert choice.reason.startswith("No setting keeps an image similarity of 0.75")


def test_equal_scores_go_to_the_smaller_text_cfg_then_the_smaller_image_cfg():
    tied = [_point(10, 1.2, 0.2, 0.8), _point(7.5, 1.8, 0.2, 0.8), _point(7.5, 1.5, 0.2, 0.8)]
    assert _scales(choose_guidance(tied).chosen) == (7.5, 1.5)
    assert _scales(choose_guidance([_point(p.text_cfg, p.image_cfg, 0.2, 0.5) for p in tied]).chosen) == (7.5, 1.5)


def test_a_setting_with_non_finite_scores_is_never_chosen_and_all_non_finite_is_an_error():
    points = [_point(5, 1.2, math.nan, 0.9), _point(7.5, 1.5, 0.1, 0.8), _point(10, 1.5, math.inf, 0.8)]
    assert _scales(choose_guidance(points).chosen) == (7.5, 1.5)
    with pytest.raises(IP2PError, match="scored NaN or infinite"):
        choose_guidance([_point(5, 1.2, math.nan, math.nan)])


@pytest.mark.parametrize("floor", [1.5, -2.0, True])
def test_a_floor_that_is_not_a_cosine_similarity_is_refused(floor):
    with pytest.raises(IP2PError, match=r"lies in \[-1, 1\]"):
        choose_guidance([_point(7.5, 1.5, 0.1, 0.8)], floor)


def test_the_table_lists_every_setting_in_order_and_marks_the_choice():
    points = [_point(5, 1.2, 0.1, 0.9), _point(7.5, 1.5, 0.3, 0.8)]
    choice = choose_guidance(points)
    lines = choice.table().splitlines()
    assert lines[0].split() == ["text_cfg", "image_cfg", "directional", "image"]
    assert lines[1].split() == ["5", "1.2", "0.1000", "0.9000"]
    assert lines[2].split() == ["7.5", "1.5", "0.3000", "0.8000", "<-", "chosen"]
    assert lines[3] == choice.reason
    assert [row["text_cfg"] for row in choice.record()["sweep"]] == [5, 7.5]


# --- ip2p edit --auto-cfg ---


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_random_clip(tmp_path_factory.mktemp("auto-cfg") / "clip")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("auto-cfg-input") / "house.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def _edit(model, image, out, *extra) -> list[str]:
    return ["edit", "--model", str(model), "--image", str(image), "--instruction", "make it winter",
            "--out", str(out), *FAST, *extra]  # fmt: skip


def test_auto_cfg_writes_the_chosen_edit_and_records_the_scales_and_the_sweep(
    tiny_single_file, clip_dir, image, tmp_path
):
    out = tmp_path / "auto.png"
    argv = _edit(tiny_single_file, image, out, "--auto-cfg", "--clip", str(clip_dir), *CAPTIONS,
                 "--auto-text-cfg", "5,10", "--auto-image-cfg", "1.5", "--min-image-similarity", "0.5")  # fmt: skip
    assert cli.main(argv) == 0
    metadata = read_metadata(out)
    record = metadata["auto_cfg"]
    assert [(c["text_cfg"], c["image_cfg"]) for c in record["sweep"]] == [(5, 1.5), (10, 1.5)]
    assert record["min_image_similarity"] == 0.5 and len(record["clip_hash"]) == 12
    again = choose_guidance([TradeoffPoint(**cell) for cell in record["sweep"]], 0.5)
    assert (metadata["text_cfg"], metadata["image_cfg"]) == _scales(again.chosen)
    assert record["reason"] == again.reason
    plain = tmp_path / "plain.png"  # the same edit made at the chosen scales by hand
    scales = ["--text-cfg", str(metadata["text_cfg"]), "--image-cfg", str(metadata["image_cfg"])]
    assert cli.main(_edit(tiny_single_file, image, plain, *scales)) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(plain)))


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--auto-cfg", *CAPTIONS], "add --clip DIR"),
        (["--auto-cfg", "--clip", "CLIP"], "add --input-caption TEXT and --edited-caption TEXT"),
        (["--clip", "CLIP", *CAPTIONS], "apply only with --auto-cfg"),
        (["--auto-cfg", "--clip", "CLIP", *CAPTIONS, "--instruction", "and snow"], "given 2 times"),
        (["--auto-cfg", "--clip", "CLIP", *CAPTIONS, "--min-image-similarity", "2"], r"lies in [-1, 1]"),
    ],
)
def test_auto_cfg_without_what_it_needs_is_refused_before_the_model_loads_naming_the_fix(
    clip_dir, image, tmp_path, capsys, extra, words
):
    out = tmp_path / "out.png"
    argv = _edit(tmp_path / "no-model.safetensors", image, out, *[str(clip_dir) if a == "CLIP" else a for a in extra])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not out.exists()
