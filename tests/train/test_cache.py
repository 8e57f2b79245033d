"""The latent cache (``data.cache=true``): the same training, the frozen encoders run once per example."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ip2p_train import checkpoints as ckpt
from PIL import Image

from ip2p.cli.main import main

# Uncached steps encode a micro-batch at a time, the cache 32 examples at a time: the same maths in
# other batch shapes (float32 sums in another order).
CACHE_TOLERANCE = 1e-5


def _square_dataset(root, pairs: int = 4):
    """Pairs already at the training size: the uncached random crop is the cache's centre crop."""
    rng = np.random.default_rng(1)
    for i in range(pairs):
        folder = root / f"{i:07d}"
        folder.mkdir(parents=True)
        prompt = {"input": f"a picture {i}", "edit": f"make it color {i % 2}", "output": f"a colored picture {i}"}
        (folder / "prompt.json").write_text(json.dumps(prompt), encoding="utf-8")
        for side in (0, 1):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}_{side}.png")
    return root


def _truncate(png) -> None:
    """Cut a PNG short: its header still reads (the reader opens the dataset), its pixels do not."""
    png.write_bytes(png.read_bytes()[:60])


def _losses(out) -> list[float]:
    return [m["loss"] for m in ckpt.read_metrics(out)]


@pytest.fixture(scope="module")
def square_data(tmp_path_factory):
    return _square_dataset(tmp_path_factory.mktemp("square") / "data")


def test_a_cached_run_trains_as_the_uncached_one_when_no_crop_is_random(square_data, tiny_overrides, tmp_path):
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    extra = {"data.flip": 0.0, "max_steps": 3, "save_every": 3}
    assert main(["train", "toy", *tiny_overrides(square_data, plain, **extra), "-q"]) == 0
    assert main(["train", "toy", *tiny_overrides(square_data, cached, **extra, **{"data.cache": True}), "-q"]) == 0
    assert _losses(cached) == pytest.approx(_losses(plain), rel=CACHE_TOLERANCE)


def test_a_resumed_cached_run_continues_the_uninterrupted_loss_curve(square_data, tiny_overrides, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    extra = {"data.cache": True, "data.flip": 0.5}
    assert main(["train", "toy", *tiny_overrides(square_data, whole, **extra), "-q"]) == 0
    assert main(["train", "toy", *tiny_overrides(square_data, resumed, **extra, max_steps=2), "-q"]) == 0
    assert main(["train", "toy", *tiny_overrides(square_data, resumed, **extra), "--resume", "latest", "-q"]) == 0
    assert _losses(resumed) == pytest.approx(_losses(whole), rel=1e-6)


def test_unusable_examples_are_skipped_while_caching_and_counted(square_data, tiny_overrides, tmp_path, caplog):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(square_data, data)
    _truncate(data / "0000001" / "1_1.png")
    out = tmp_path / "run"
    assert main(["train", "toy", *tiny_overrides(data, out, **{"data.cache": True}, max_steps=1), "-q"]) == 0
    assert "Skipped 1 of 4 examples while encoding: corrupt image: 1" in caplog.text


def test_unusable_examples_found_while_training_are_skipped(square_data, tiny_overrides, tmp_path, caplog):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(square_data, data)
    _truncate(data / "0000002" / "2_0.png")
    out = tmp_path / "run"
    assert main(["train", "toy", *tiny_overrides(data, out, max_steps=2), "-q"]) == 0
    assert "Skipping" in caplog.text and "corrupt image" in caplog.text
    assert len(ckpt.read_metrics(out)) == 2


def test_a_dataset_with_no_usable_example_is_refused(square_data, tiny_overrides, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(square_data, data)
    for png in data.rglob("*_0.png"):
        _truncate(png)
    out = tmp_path / "run"
    assert main(["train", "toy", *tiny_overrides(data, out, **{"data.cache": True}, max_steps=1)]) == 2
    assert "None of the dataset's 4 examples is usable" in capsys.readouterr().err
