"""The embedded default job (`ip2p demo`): the toy model edits held-out toy examples and is scored.

The plumbing runs on the toy architecture with random weights (``toy_diffusers_dir``); the last test
checks the shipped model itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ip2p.cli import main
from ip2p.datasets.toy import render_example, toy_seeds
from ip2p.headless.toy_model import HELDOUT_RUN, SHIPPED_MODEL, TRAIN_RUN
from ip2p.images import read_metadata

SHIPPED_LIMIT_BYTES = 25 * 2**20


@pytest.fixture(scope="module")
def demo_out(toy_diffusers_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--model", str(toy_diffusers_dir), "--out", str(out), "--steps", "2", "--examples", "4"]) == 0
    return out


def test_the_demo_edits_the_first_held_out_example_through_ip2p_edit(demo_out):
    first = render_example(toy_seeds(HELDOUT_RUN, 1)[0])
    assert np.array_equal(np.asarray(Image.open(demo_out / "input.png")), np.asarray(first.input_image))
    edited = demo_out / "edited.png"
    assert Image.open(edited).size == (64, 64)  # the toy model's own size
    metadata = read_metadata(edited)
    assert metadata["instruction"] == first.instruction and metadata["steps"] == 2


def test_the_scores_compare_the_edits_with_the_truth_and_both_baselines(demo_out):
    scores = json.loads((demo_out / "scores.json").read_text())
    assert scores["examples"] == 4 and len(scores["per_example"]) == 4
    for key in ("inside.result_to_truth", "inside.input_to_truth", "inside.wrong_instruction_to_truth",
                "outside.result_to_input"):  # fmt: skip
        assert scores[key] == pytest.approx(np.mean([e[key] for e in scores["per_example"]]))
        assert 0 <= scores[key] <= 1
    assert scores["ratio.result_vs_input"] == pytest.approx(
        scores["inside.result_to_truth"] / scores["inside.input_to_truth"]
    )
    assert all(e["wrong_instruction"] != e["instruction"] for e in scores["per_example"])
    assert [e["seed"] for e in scores["per_example"]] == list(toy_seeds(HELDOUT_RUN, 4))


def test_the_report_shows_the_examples_above_a_guidance_sweep(demo_out):
    from ip2p.cli.demo import CELL, SWEEP_IMAGE_CFG

    report = Image.open(demo_out / "report.png")
    # 4 example rows and the sweep's rows of CELL px, each grid under a label row
    assert report.height > (4 + len(SWEEP_IMAGE_CFG)) * CELL
    assert report.width >= 2 * CELL + 4 * CELL


def test_quiet_passes_on_to_the_edit(toy_diffusers_dir, tmp_path, capsys):
    assert main(["demo", "--model", str(toy_diffusers_dir), "--out", str(tmp_path), "--steps", "1",
                 "--examples", "2", "-q"]) == 0  # fmt: skip
    assert "ip2p edit" not in capsys.readouterr().err  # no step bar


def test_held_out_examples_are_never_training_examples():
    assert HELDOUT_RUN != TRAIN_RUN
    held_out = {render_example(s).content_hash for s in toy_seeds(HELDOUT_RUN, 64)}
    trained = {render_example(s).content_hash for s in toy_seeds(TRAIN_RUN, 256)}
    assert not held_out & trained


def test_train_and_model_together_are_refused(toy_diffusers_dir, tmp_path, capsys):
    assert main(["demo", "--train", "--model", str(toy_diffusers_dir), "--out", str(tmp_path)]) == 2
    assert "--train trains its own model" in capsys.readouterr().err


def test_one_example_is_refused(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--examples", "1"]) == 2
    assert "--examples is 1" in capsys.readouterr().err


def test_bad_settings_are_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "0"]) == 2
    assert "steps is 0" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--examples", "2000000"]) == 2
    assert "--examples is 2000000" in capsys.readouterr().err
    assert not out.exists()


def test_the_shipped_toy_model_is_a_small_diffusers_folder_with_its_tokenizer():
    files = [p for p in SHIPPED_MODEL.rglob("*") if p.is_file()]
    assert (SHIPPED_MODEL / "model_index.json").is_file() and (SHIPPED_MODEL / "tokenizer").is_dir()
    assert sum(p.stat().st_size for p in files) <= SHIPPED_LIMIT_BYTES
    from ip2p.headless.loading import load_edit_model

    model = load_edit_model(SHIPPED_MODEL)
    assert model.family.is_edit_model and model.unet.config.sample_size * model.vae_scale_factor == 64
