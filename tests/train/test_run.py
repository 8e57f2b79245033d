"""Whole runs of ``ip2p train`` on the tiny random model: the run folder contract, export, resume, refusals.

Each run trains the tiny model at 16 px, batch 2, for a few steps (seconds on a CPU).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ip2p_train import checkpoints as ckpt
from ip2p_train.config import read_saved_config
from PIL import Image

from ip2p.cli.main import main
from ip2p.headless.loading import load_edit_model

RESUME_TOLERANCE = 1e-6  # relative; on one CPU the resumed losses are in fact bit-identical


@pytest.fixture(scope="module")
def run_a(paper_dataset, tiny_overrides, tmp_path_factory):
    """An uninterrupted 4-step run (checkpoints at steps 2 and 4), through the `ip2p train` command."""
    out = tmp_path_factory.mktemp("run-a") / "run"
    assert main(["train", "toy", *tiny_overrides(paper_dataset, out), "-q"]) == 0
    return out


def _losses(out) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in ckpt.read_metrics(out)}


def test_a_run_writes_every_file_of_the_run_folder_contract(run_a):
    config = read_saved_config(run_a / "config.yaml")
    assert config.max_steps == 4 and config.model.base == "config:tiny"
    metrics = ckpt.read_metrics(run_a)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all({"step", "loss", "lr", "samples_per_s", "peak_rss_gb"} <= set(m) for m in metrics)
    assert all(np.isfinite(m["loss"]) and m["samples_per_s"] > 0 and m["peak_rss_gb"] > 0.1 for m in metrics)
    assert [step for step, _ in ckpt.complete_checkpoints(run_a)] == [2, 4]
    for step in (2, 4):
        folder = ckpt.step_dir(run_a, step)
        assert (folder / "complete").is_file() and (folder / "config.yaml").is_file()
        assert json.loads((folder / "trainer_state.json").read_text())["step"] == step
    assert (run_a / "export" / "diffusers" / "model_index.json").is_file()
    assert (run_a / "export" / "model.safetensors").is_file()


def test_the_exported_single_file_loads_as_an_instructpix2pix_model_and_edits(run_a, tmp_path):
    exported = run_a / "export" / "model.safetensors"
    model = load_edit_model(exported)
    assert model.family.is_edit_model and model.unet.conv_in.in_channels == 8
    from_folder = load_edit_model(run_a / "export" / "diffusers")
    for key, value in from_folder.unet.state_dict().items():
        assert torch.equal(value, model.unet.state_dict()[key]), key
    image = tmp_path / "in.png"
    Image.fromarray(np.full((16, 16, 3), 128, dtype=np.uint8)).save(image)
    out = tmp_path / "out.png"
    argv = ["edit", "--model", str(exported), "--image", str(image), "--instruction", "make it red",
            "--out", str(out), "--steps", "2", "--resize", "keep", "-q"]  # fmt: skip
    assert main(argv) == 0 and out.is_file()


@pytest.mark.numerics
def test_a_resumed_run_continues_the_uninterrupted_loss_curve(run_a, paper_dataset, tiny_overrides, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "toy", *tiny_overrides(paper_dataset, out, max_steps=2), "-q"]) == 0
    # A save of step 3 cut short (no `complete` marker): --resume latest must ignore it.
    half = ckpt.step_dir(out, 3)
    shutil.copytree(ckpt.step_dir(out, 2), half)
    (half / "complete").unlink()
    (half / "trainer_state.json").write_text('{"step": 3}\n')
    assert main(["train", "toy", *tiny_overrides(paper_dataset, out), "--resume", "latest", "-q"]) == 0
    resumed, uninterrupted = _losses(out), _losses(run_a)
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=RESUME_TOLERANCE), step
    assert read_saved_config(out / "config.yaml").max_steps == 4


def _snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_folder_of_another_run_is_refused_and_left_as_it_was(run_a, paper_dataset, tiny_overrides, capsys):
    before = _snapshot(run_a)
    assert main(["train", "toy", *tiny_overrides(paper_dataset, run_a, **{"optim.lr": 0.5})]) == 2
    assert "holds another run" in capsys.readouterr().err
    assert _snapshot(run_a) == before


def test_starting_over_in_a_run_with_checkpoints_asks_for_resume(run_a, paper_dataset, tiny_overrides, capsys):
    assert main(["train", "toy", *tiny_overrides(paper_dataset, run_a)]) == 2
    assert "--resume latest" in capsys.readouterr().err


def test_resuming_with_an_incompatible_config_is_refused_and_nothing_is_overwritten(
    run_a, paper_dataset, tiny_overrides, capsys
):
    before = _snapshot(run_a)
    argv = ["train", "toy", *tiny_overrides(paper_dataset, run_a, seed=1, max_steps=6), "--resume", "latest"]
    assert main(argv) == 2
    assert "seed: 0 -> 1" in capsys.readouterr().err
    assert _snapshot(run_a) == before


def test_a_decaying_learning_rate_keeps_its_max_steps_on_resume(paper_dataset, tiny_overrides, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = tiny_overrides(paper_dataset, out, max_steps=2, **{"optim.lr_schedule": "cosine"})
    assert main(["train", "toy", *overrides, "-q"]) == 0
    before = _snapshot(out)
    longer = tiny_overrides(paper_dataset, out, max_steps=4, **{"optim.lr_schedule": "cosine"})
    assert main(["train", "toy", *longer, "--resume", "latest"]) == 2
    assert "decays its learning rate (cosine) to zero at max_steps=2" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_resuming_with_another_process_count_is_refused_and_nothing_is_overwritten(
    paper_dataset, tiny_overrides, tmp_path, capsys
):
    out = tmp_path / "run"
    assert main(["train", "toy", *tiny_overrides(paper_dataset, out, max_steps=2), "-q"]) == 0
    state = ckpt.step_dir(out, 2) / "trainer_state.json"
    assert json.loads(state.read_text()) == {"step": 2, "processes": 1}
    state.write_text('{"step": 2, "processes": 2}\n')  # as a two-process run writes it
    before = _snapshot(out)
    assert main(["train", "toy", *tiny_overrides(paper_dataset, out), "--resume", "latest"]) == 2
    assert "was written by 2 processes; this run has 1" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_resume_latest_picks_the_highest_complete_checkpoint_and_pruning_spares_incomplete_ones(tmp_path):
    for step, complete in ((2, True), (4, True), (6, True), (8, False)):
        folder = ckpt.step_dir(tmp_path, step)
        folder.mkdir(parents=True)
        if complete:
            (folder / "complete").write_text("done")
    assert ckpt.resolve_resume("latest", tmp_path) == ckpt.step_dir(tmp_path, 6)
    assert ckpt.prune(tmp_path, 2) == [ckpt.step_dir(tmp_path, 2)]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-4", "step-6", "step-8"]


def test_a_missing_base_model_is_one_line_error(paper_dataset, tiny_overrides, tmp_path, capsys):
    argv = ["train", "toy", *tiny_overrides(paper_dataset, tmp_path / "run", **{"model.base": tmp_path / "none"})]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_save_cut_short_by_a_full_disk_leaves_the_previous_checkpoint_and_export_intact(
    paper_dataset, tiny_overrides, tmp_path, monkeypatch
):
    import errno

    from accelerate import Accelerator
    from ip2p_train.config import load_config
    from ip2p_train.loop import train

    out = tmp_path / "run"
    real_save = Accelerator.save_state

    def save_then_fill_the_disk(self, output_dir=None, **kwargs):
        if output_dir.endswith("step-4"):
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_then_fill_the_disk)
    with pytest.raises(OSError, match="No space left"):
        train(load_config("toy", tiny_overrides(paper_dataset, out)))
    export_after = _snapshot(out / "export")
    assert ckpt.resolve_resume("latest", out) == ckpt.step_dir(out, 2)
    assert not ckpt.is_complete(ckpt.step_dir(out, 4))
    assert json.loads((ckpt.step_dir(out, 2) / "trainer_state.json").read_text())["step"] == 2
    model = load_edit_model(out / "export" / "model.safetensors")  # the step-2 export, whole
    assert model.family.is_edit_model and export_after == _snapshot(out / "export")
    monkeypatch.setattr(Accelerator, "save_state", real_save)
    assert main(["train", "toy", *tiny_overrides(paper_dataset, out), "--resume", "latest", "-q"]) == 0
    assert [step for step, _ in ckpt.complete_checkpoints(out)] == [2, 4]


def test_min_snr_weighting_trains_and_changes_the_loss(paper_dataset, tiny_overrides, tmp_path):
    losses = {}
    for gamma in ("5", "null"):  # toy.yaml's Min-SNR-γ, and plain MSE
        out = tmp_path / f"snr-{gamma}"
        assert (
            main(["train", "toy", *tiny_overrides(paper_dataset, out, max_steps=2), f"optim.snr_gamma={gamma}", "-q"])
            == 0
        )
        losses[gamma] = _losses(out)
    weighted, plain = losses["5"], losses["null"]
    assert weighted.keys() == {1, 2} and all(math.isfinite(v) for v in weighted.values())
    assert weighted[1] != pytest.approx(plain[1], rel=1e-3)  # same draws, other weights


def test_8_bit_adam_without_bitsandbytes_is_refused_with_the_install_line(
    paper_dataset, tiny_overrides, tmp_path, monkeypatch, capsys
):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails, as where it is not installed
    out = tmp_path / "run"
    assert main(["train", "toy", *tiny_overrides(paper_dataset, out, **{"optim.adam_8bit": True})]) == 2
    assert "pip install bitsandbytes" in capsys.readouterr().err
    assert not (out / "checkpoints").exists()


def test_8_bit_adam_uses_bitsandbytes_adamw8bit(paper_dataset, tiny_overrides, tmp_path, monkeypatch):
    import sys
    import types

    used = []

    class AdamW8bit(torch.optim.AdamW):  # stands in for bitsandbytes' (which needs its native library)
        def __init__(self, params, **settings):
            used.append(settings)
            super().__init__(params, **settings)

    fake = types.ModuleType("bitsandbytes")
    fake.optim = types.SimpleNamespace(AdamW8bit=AdamW8bit)
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    out = tmp_path / "run"
    assert (
        main(["train", "toy", *tiny_overrides(paper_dataset, out, **{"optim.adam_8bit": True}, max_steps=1), "-q"]) == 0
    )
    assert used == [{"lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 1e-2, "eps": 1e-8}]


def test_a_run_ends_with_a_line_naming_its_peak_memory(paper_dataset, tiny_overrides, tmp_path, capsys):
    assert main(["train", "toy", *tiny_overrides(paper_dataset, tmp_path / "run", max_steps=1)]) == 0
    assert "Trained to step 1; this process's peak memory: peak_rss_gb=" in capsys.readouterr().err
