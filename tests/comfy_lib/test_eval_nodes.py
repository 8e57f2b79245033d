"""The quality nodes on ComfyUI's library: Evaluate (metrics of edits from anywhere in a graph), the DINO loader,
and Auto Guidance (a scored sweep, one setting kept by the core's rule).

Random images and tiny random CLIP and DINO models: the numbers mean nothing, but they must be the
core's numbers, and what is skipped must say why.
"""

from __future__ import annotations

import importlib

import pytest
import torch

SIZE = 32
CAPTIONS = ("a photo of a cat", "a photo of a red cat")


def _module(name):
    return importlib.import_module(f"comfyui_ip2p.nodes.{name}")


def _images(count: int, seed: int, size: int = SIZE) -> torch.Tensor:
    return torch.rand(count, size, size, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def clip_scorer(pack, comfy_host):
    from ip2p.headless.random_model import save_random_clip

    folder = comfy_host.folder("ip2p_clip") / "tiny-clip"
    if not (folder / "config.json").is_file():
        save_random_clip(folder)
    return _module("clip").IP2PCLIPLoader.execute("tiny-clip", "")[0]


@pytest.fixture(scope="module")
def dino_scorer(pack, tmp_path_factory):
    from ip2p.headless.random_model import save_random_dino

    folder = save_random_dino(tmp_path_factory.mktemp("dino") / "tiny-dino")
    return _module("dino").IP2PDINOLoader.execute("(use path)", str(folder))[0]


def _evaluate(clip_scorer, inputs, edits, captions=CAPTIONS, instruction="make it red", **optional):
    """(table, sheet); the node also shows the table on itself."""
    output = _module("evaluate").IP2PEvaluate.execute(clip_scorer, inputs, edits, *captions, instruction, **optional)
    assert output["ui"]["text"] == [output["result"][0]]
    return output["result"]


def _table_row(table: str, label: str) -> dict[str, float]:
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("edit ")).split()[1:]
    values = next(line for line in lines if line.split()[0] == label).split()[1:]
    return {name: float(value) for name, value in zip(header, values, strict=True)}


# --- Evaluate ---


def test_evaluate_reports_the_core_metrics_of_every_edit_and_their_mean(pack, clip_scorer, dino_scorer):
    inputs, edits, targets = _images(2, 0), _images(2, 1), _images(2, 2)
    table, _ = _evaluate(clip_scorer, inputs, edits, target_images=targets, dino_scorer=dino_scorer)
    assert table.splitlines()[0] == "instruction: make it red"
    assert "skipped" not in table  # every metric had what it needs
    first, second = _table_row(table, "#1"), _table_row(table, "#2")
    assert list(first) == ["sim_0", "sim_1", "directional", "image", "l1", "l2", "clip_i", "dino", "clip_t"]
    assert first["l1"] == pytest.approx(float((edits[0] - targets[0]).abs().mean()), abs=1e-4)
    scores = clip_scorer.scorer.score(inputs.movedim(-1, 1), edits.movedim(-1, 1), *CAPTIONS)
    assert first["directional"] == pytest.approx(float(scores.sim_dir[0]), abs=1e-4)
    assert second["image"] == pytest.approx(float(scores.sim_image[1]), abs=1e-4)
    assert _table_row(table, "mean")["l2"] == pytest.approx((first["l2"] + second["l2"]) / 2, abs=1e-4)


def test_metrics_without_their_inputs_are_listed_as_skipped_with_the_reason_never_as_0(pack, clip_scorer):
    table, _ = _evaluate(clip_scorer, _images(1, 0), _images(1, 1), captions=("a photo of a cat", ""))
    assert list(_table_row(table, "#1")) == ["sim_0", "image"]
    skipped = [line for line in table.splitlines() if line.startswith("skipped")]
    assert "skipped directional: no edited_caption typed" in skipped
    assert "skipped l1: no target_images connected" in skipped
    assert "skipped dino: no dino_scorer connected" in skipped
    assert not any("toy." in line for line in skipped)  # no graph carries an edit mask: not offered


def test_the_sheet_has_a_row_per_edit_with_input_edit_and_target_columns(pack, clip_scorer):
    evaluate = _module("evaluate")
    _, sheet = _evaluate(clip_scorer, _images(2, 0), _images(2, 1), target_images=_images(2, 2, size=48))
    cell = SIZE * -(-evaluate.SHEET_MIN_HEIGHT // SIZE)  # enlarged by a whole factor so the labels fit
    layout = pack.ip2p.grid
    assert sheet.shape == (1, layout.LABEL_HEIGHT + 2 * cell, evaluate.SHEET_LABEL_WIDTH + 3 * cell, 3)
    _, no_target = _evaluate(clip_scorer, _images(2, 0), _images(2, 1))
    assert no_target.shape[2] == evaluate.SHEET_LABEL_WIDTH + 2 * cell


def test_an_input_of_another_shape_is_scored_as_the_edit_frames_it(pack, clip_scorer):
    wide, edits = _images(1, 0, size=48)[:, :SIZE], _images(1, 1)  # 48 wide, 32 high; the edit 32 × 32
    table, _ = _evaluate(clip_scorer, wide, edits)
    cropped = wide[:, :, 8:40]  # the paper policy's centre crop: what a 32 × 32 edit of it was made from
    scores = clip_scorer.scorer.score(cropped.movedim(-1, 1), edits.movedim(-1, 1), *CAPTIONS)
    assert _table_row(table, "#1")["image"] == pytest.approx(float(scores.sim_image[0]), abs=1e-4)


def test_one_input_image_is_shared_by_every_edit_and_other_counts_are_refused(pack, clip_scorer):
    shared, _ = _evaluate(clip_scorer, _images(1, 0), _images(3, 1))
    assert [line.split()[0] for line in shared.splitlines()[2:5]] == ["#1", "#2", "#3"]
    with pytest.raises(pack.ip2p.errors.IP2PError, match="2 input_images for 3 edited image"):
        _evaluate(clip_scorer, _images(2, 0), _images(3, 1))


def test_a_missing_dino_model_says_where_to_put_one(pack):
    loader = _module("dino").IP2PDINOLoader
    with pytest.raises(pack.ip2p.errors.IP2PError, match="models/ip2p_dino"):
        loader.execute("(use path)", "")
    with pytest.raises(pack.ip2p.errors.IP2PError, match="DINO model folder not found"):
        loader.execute("(use path)", "/nonexistent/dino")


# --- Auto Guidance ---


def test_auto_guidance_returns_the_edit_and_the_scales_the_rule_keeps(pack, sd15_ip2p_checkpoint, clip_scorer):
    model, clip, vae = pack.nodes.IP2PCheckpointLoader.execute(sd15_ip2p_checkpoint.name)
    image = _images(1, 3, size=64)
    encode = _module("conditioning").encode_text
    conditioning = {"positive": encode(clip, "make it red"), "negative_conditioning": encode(clip, "")}  # once for all
    edit, text_cfg, image_cfg, scores = _module("auto_guidance").IP2PAutoGuidance.execute(
        model, vae, image, clip_scorer, "make it red", *CAPTIONS, 0, 1, "5, 7.5", "1.0", -1.0, "euler", "normal",
        "keep", 512, **conditioning,
    )  # fmt: skip
    rows = [line.split() for line in scores.splitlines()[1:3]]
    best = max(rows, key=lambda row: float(row[2]))  # floor -1: every setting qualifies, most directional wins
    assert (text_cfg, image_cfg) == (float(best[0]), float(best[1])) and best[-1] == "chosen"
    by_hand, _ = pack.nodes.IP2PKSampler.execute(
        model, vae, image, "make it red", "", 0, 1, text_cfg, image_cfg, "euler", "normal", 1.0, "keep", 512,
        **conditioning,
    )  # fmt: skip
    torch.testing.assert_close(edit, by_hand, rtol=0, atol=1e-5)


def test_auto_guidance_refuses_a_floor_outside_minus_one_to_one_before_any_edit(pack):
    node = _module("auto_guidance").IP2PAutoGuidance
    with pytest.raises(pack.ip2p.errors.IP2PError, match=r"lies in \[-1, 1\]"):
        node.execute(None, None, None, None, "make it red", *CAPTIONS, 0, 1, "7.5", "1.5", 1.5, "euler", "normal",
                     "keep", 512)  # fmt: skip
