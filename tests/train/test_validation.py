"""Validation grids during training (validation.*) and TensorBoard logging.

Two tiny 3-step runs share the module: one with a grid every 2 steps (so at steps 2 and 3, the last)
on the first two training examples at two scale pairs, one without validation. One sampling step
per edit keeps the grids fast; what a grid shows is the same at any step count.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from ip2p_train import checkpoints as ckpt
from ip2p_train import validation
from ip2p_train.config import ValidationConfig, load_config
from ip2p_train.loop import Trainer, train
from ip2p_train.model import EMA, load_base, model_for_export, trained_state
from PIL import Image

from ip2p import sizing
from ip2p.datasets.reader import open_dataset
from ip2p.errors import IP2PError
from ip2p.images import METADATA_KEY, to_rgb_array

RESOLUTION = 16  # the tiny runs' data.resolution (conftest)
VALIDATION = {
    "validation.every": 2,
    "validation.count": 2,
    "validation.steps": 1,
    "validation.text_cfg": "[5, 7.5]",
    "validation.image_cfg": "[1.5]",
}
RUN = {"max_steps": 3, "save_every": 100}  # one save, at the end
CELL = validation.cell_size(RESOLUTION)


@pytest.fixture(scope="module")
def validated_run(paper_dataset, tiny_overrides, tmp_path_factory):
    out = tmp_path_factory.mktemp("validated") / "run"
    train(load_config("toy", tiny_overrides(paper_dataset, out, **RUN, **VALIDATION)))
    return out


@pytest.fixture(scope="module")
def plain_run(paper_dataset, tiny_overrides, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "run"
    train(load_config("toy", tiny_overrides(paper_dataset, out, **RUN)))
    return out


def _grid(run, step: int) -> tuple[np.ndarray, dict]:
    with Image.open(validation.grid_path(run, step)) as image:
        return np.asarray(image.convert("RGB")), json.loads(image.text[METADATA_KEY])


def _cell(pixels: np.ndarray, row: int, col: int) -> np.ndarray:
    top, left = validation.LABEL_HEIGHT + row * CELL, validation.LABEL_WIDTH + col * CELL
    return pixels[top : top + CELL, left : left + CELL]


# ------------------------------------------------------------------------------------ whole runs


def test_grids_are_written_every_n_steps_and_at_the_last_step(validated_run):
    assert sorted(p.name for p in (validated_run / "validation").iterdir()) == ["step-2.png", "step-3.png"]


def test_a_grid_has_a_row_per_image_and_the_input_then_a_column_per_scale_pair(validated_run):
    pixels, metadata = _grid(validated_run, 2)
    rows, cols = 2, 1 + 2  # two examples; the input, then (5, 1.5) and (7.5, 1.5)
    assert CELL == 128  # 16 px cells are shown 8x, nearest neighbour
    assert pixels.shape == (validation.LABEL_HEIGHT + rows * CELL, validation.LABEL_WIDTH + cols * CELL, 3)
    assert metadata["step"] == 2 and metadata["text_cfg"] == [5.0, 7.5] and metadata["image_cfg"] == [1.5]
    assert (metadata["steps"], metadata["seed"], metadata["sampler"]) == (1, 0, "euler_ancestral")


def test_the_grid_labels_the_columns_and_the_rows(validated_run):
    pixels, _ = _grid(validated_run, 3)
    dark = pixels.max(axis=2) < 128
    for col in range(3):
        left = validation.LABEL_WIDTH + col * CELL
        assert dark[: validation.LABEL_HEIGHT, left : left + CELL].any(), f"column {col} has no label"
    for row in range(2):
        top = validation.LABEL_HEIGHT + row * CELL
        assert dark[top : top + CELL, : validation.LABEL_WIDTH].any(), f"row {row} has no instruction"


def test_by_default_the_first_training_examples_are_the_validation_images(validated_run, paper_dataset):
    pixels, metadata = _grid(validated_run, 3)
    dataset = open_dataset(paper_dataset)
    assert (
        metadata["instructions"]
        == [dataset[0].instruction, dataset[1].instruction]
        == [
            "make it color 0",
            "make it color 1",
        ]
    )
    for row in range(2):
        expected = torch.from_numpy(to_rgb_array(dataset[row].input_image)).permute(2, 0, 1)[None]
        expected = sizing.fit_crop(expected, (RESOLUTION, RESOLUTION)).clamp(0, 1)  # centre square
        expected = (expected[0].permute(1, 2, 0).numpy() * 255).round()
        shown = _cell(pixels, row, 0)[:: CELL // RESOLUTION, :: CELL // RESOLUTION]  # one pixel per enlarged block
        assert np.abs(shown.astype(float) - expected).max() <= 1


def test_the_edits_differ_from_the_input(validated_run):
    pixels, _ = _grid(validated_run, 3)
    assert not np.array_equal(_cell(pixels, 0, 0), _cell(pixels, 0, 1))


def test_training_losses_are_the_same_with_and_without_validation(validated_run, plain_run):
    def losses(run):
        return [(m["step"], m["loss"]) for m in ckpt.read_metrics(run)]

    assert losses(validated_run) == losses(plain_run)
    assert len(losses(plain_run)) == 3


def test_tensorboard_logs_the_metrics_and_every_grid(validated_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(validated_run / validation.LOGS))
    events.Reload()
    metrics = ckpt.read_metrics(validated_run)
    assert {"train/loss", "train/lr", "train/samples_per_s"} <= set(events.Tags()["scalars"])
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (m["step"], pytest.approx(m["loss"], rel=1e-6)) for m in metrics
    ]
    grids = events.Images("validation")
    assert [e.step for e in grids] == [2, 3]
    pixels, _ = _grid(validated_run, 3)
    assert (grids[-1].height, grids[-1].width) == pixels.shape[:2]


def test_without_tensorboard_one_info_line_says_how_to_enable_it(monkeypatch, tmp_path, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` of it raises ImportError
    with caplog.at_level("INFO", logger="ip2p.train"):
        assert validation.open_tensorboard(tmp_path) is None
    assert [r.getMessage() for r in caplog.records if "pip install tensorboard" in r.getMessage()]
    assert not (tmp_path / validation.LOGS).exists()


# ------------------------------------------------------------------------------ the validator alone


@pytest.fixture(scope="module")
def tiny_model():
    return load_base("config:tiny", seed=0)


def _one_image_validator(paper_dataset, **values) -> validation.Validator:
    config = ValidationConfig(every=1, count=1, steps=1, **values)
    return validation.Validator(config, RESOLUTION, open_dataset(paper_dataset))


def test_validation_leaves_the_trained_unet_and_the_random_state_untouched(tiny_model, paper_dataset, tmp_path):
    unet = tiny_model.unet
    ema = EMA(unet, 0.9)
    ema.shadow = [s + 0.01 for s in ema.shadow]  # EMA weights that differ from the trained ones
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    rng = torch.get_rng_state()
    path, _ = _one_image_validator(paper_dataset).run(
        model_for_export(tiny_model, unet, trained_state(unet, ema)), 5, tmp_path
    )
    assert path == tmp_path / "validation" / "step-5.png" and path.is_file()
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in unet.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_same_weights_give_the_same_grid_at_every_step(tiny_model, paper_dataset, tmp_path):
    validator = _one_image_validator(paper_dataset)
    model = model_for_export(tiny_model, tiny_model.unet, trained_state(tiny_model.unet, None))
    first, second = validator.run(model, 1, tmp_path)[1], validator.run(model, 2, tmp_path)[1]
    assert torch.equal(first, second)


def test_given_validation_images_are_centre_cropped_to_the_training_resolution(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((20, 40, 3), 200, dtype=np.uint8)).save(path)
    config = ValidationConfig(every=10, images=[str(path)], instructions=["make it red"])
    images, instructions = validation.validation_inputs(config, RESOLUTION, dataset=[])
    assert images.shape == (1, 3, RESOLUTION, RESOLUTION) and instructions == ["make it red"]
    assert images.sub(200 / 255).abs().max() < 1e-3


# -------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["validation.images=[a.png, b.png]", "validation.instructions=[make it red]"],
         r"validation\.images has 2 images but validation\.instructions has 1"),
        (["validation.instructions=[make it red]"], r"validation\.instructions .* validation\.images is empty"),
        (["validation.count=0"], r"validation\.count is 0"),
        (["validation.text_cfg=[]"], r"validation\.text_cfg is empty"),
        (["validation.image_cfg=[1.5, -1]"], r"validation\.image_cfg\[1\]"),
        (["validation.steps=0"], r"validation\.steps is 0"),
        (["validation.eval_count=-1"], r"validation\.eval_count is -1"),
    ],
)  # fmt: skip
def test_a_validation_config_that_cannot_work_is_refused_naming_the_keys(overrides, message):
    with pytest.raises(IP2PError, match=message):
        load_config("toy", ["validation.every=10", *overrides])


def test_a_negative_validation_interval_is_refused():
    with pytest.raises(IP2PError, match=r"validation\.every is -1"):
        load_config("toy", ["validation.every=-1"])


def test_a_missing_validation_image_stops_the_run_before_anything_is_written(paper_dataset, tiny_overrides, tmp_path):
    out = tmp_path / "run"
    extra = {"validation.every": 2, "validation.images": f"[{tmp_path / 'none.png'}]", "validation.instructions": "[x]"}
    trainer = Trainer(load_config("toy", tiny_overrides(paper_dataset, out, **extra)))
    with pytest.raises(IP2PError, match=r"validation\.images\[0\]"):
        trainer.setup()
    assert not out.exists()
