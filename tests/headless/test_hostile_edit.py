"""`ip2p edit` against hostile input: colliding names, odd files, NaN, unwritable outputs.

Each refusal is one `error:` line naming the file and the fix, exit 2, and nothing written; a
failure that can only show mid-run keeps what was finished and names the file that failed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ip2p import cli
from ip2p.cli.edit import output_names
from ip2p.headless import editor
from ip2p.images import read_metadata

FAST = ["--steps", "1", "--max-side", "64", "--sampler", "euler", "-q"]


def _image(path: Path, seed: int = 0, size: tuple[int, int] = (64, 64)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _argv(model, image, out, *extra: str, instruction: str = "make it red") -> list[str]:
    return ["edit", "--model", str(model), "--image", str(image), "--instruction", instruction, "--out", str(out)] + [
        *FAST,
        *extra,
    ]


def _one_error_line(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]


# -- output names ----------------------------------------------------------------------------


def test_colliding_output_names_each_get_their_own_file(tiny_single_file, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for seed, name in enumerate(["a.png", "a.jpg", "a_png.png"]):
        _image(folder / name, seed)
    assert cli.main(_argv(tiny_single_file, folder, out, instruction="")) == 0  # empty: written unchanged
    written = sorted(out.iterdir())
    assert len(written) == 3
    assert sorted(read_metadata(p)["source_image"] for p in written) == ["a.jpg", "a.png", "a_png.png"]
    for path in written:  # each output is its own input's pixels, so none overwrote another
        source = folder / read_metadata(path)["source_image"]
        if source.suffix == ".png":
            np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(source)))


def test_output_names_are_distinct_ignoring_case():
    inputs = [Path(n) for n in ["a.png", "a.jpg", "a_png.png", "b.PNG", "B.png", "a_png_2.png", "c"]]
    names = output_names(inputs)
    assert len({n.casefold() for n in names}) == len(inputs)
    assert names[2] == "a_png.png" and names[5] == "a_png_2.png" and names[6] == "c.png"  # own stems kept


def test_a_folder_input_with_a_png_out_is_refused(tiny_single_file, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    _image(folder / "a.png")
    line = _one_error_line(capsys, _argv(tiny_single_file, folder, tmp_path / "edited.png"))
    assert "edited.png" in line and "folder" in line
    assert not (tmp_path / "edited.png").exists()


# -- odd inputs ------------------------------------------------------------------------------


def test_a_fifo_as_image_is_refused_without_blocking(tiny_single_file, tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    line = _one_error_line(capsys, _argv(tiny_single_file, fifo, tmp_path / "out.png"))
    assert "pipe.png" in line and "not a regular file" in line


def test_a_fifo_in_a_folder_is_skipped_with_a_warning(tiny_single_file, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    _image(folder / "a.png")
    os.mkfifo(folder / "pipe.png")
    assert cli.main(_argv(tiny_single_file, folder, out, instruction="")) == 0
    assert [p.name for p in out.iterdir()] == ["a.png"]
    assert "pipe.png" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_float_tiff_with_non_finite_pixels_is_reported_and_the_others_are_edited(
    tiny_single_file, tmp_path, capsys, bad
):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    _image(folder / "a.png")
    pixels = np.full((64, 64), 0.5, dtype=np.float32)
    pixels[3, 4] = bad
    Image.fromarray(pixels, "F").save(folder / "b.tif")
    line = _one_error_line(capsys, _argv(tiny_single_file, folder, out))
    assert "b.tif" in line and "1 of the 2 images could not be edited" in line
    assert [p.name for p in out.iterdir()] == ["a.png"]


def _bad_images(folder: Path) -> list[str]:
    """Files named as images that cannot be edited: truncated, empty, text, too small."""
    _image(folder / "truncated.png")
    data = (folder / "truncated.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image at all")
    _image(folder / "tiny.png", size=(4, 64))
    return ["empty.png", "text.jpg", "tiny.png", "truncated.png"]


def test_a_folder_with_bad_images_edits_every_good_one_and_exits_non_zero_naming_the_bad(
    tiny_single_file, tmp_path, capsys
):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    good = [_image(folder / name, seed) for seed, name in enumerate(["a.png", "m.png", "z.png"])]
    bad = _bad_images(folder)
    assert cli.main(_argv(tiny_single_file, folder, out)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    assert "4 of the 7 images could not be edited" in errors[0] and "3 other edit(s) were written" in errors[0]
    assert all(name in errors[0] for name in bad)
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in good]
    assert "truncated.png" in err and "at least 8 px" in err  # each reason, as a warning


def test_a_folder_of_only_bad_images_writes_nothing(tiny_single_file, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    _bad_images(folder)
    line = _one_error_line(capsys, _argv(tiny_single_file, folder, out))
    assert "None of the 4 images could be read" in line
    assert not out.exists()


# -- outputs that exist already --------------------------------------------------------------


def test_an_existing_output_file_is_refused_and_left_as_it_was(tiny_single_file, tmp_path, capsys):
    image, out = _image(tmp_path / "in.png"), tmp_path / "out.png"
    out.write_bytes(b"someone's picture")
    line = _one_error_line(capsys, _argv(tiny_single_file, image, out))
    assert "already exists" in line and "--overwrite" in line
    assert out.read_bytes() == b"someone's picture"


def test_overwrite_replaces_an_existing_output(tiny_single_file, tmp_path):
    image, out = _image(tmp_path / "in.png"), tmp_path / "out.png"
    out.write_bytes(b"someone's picture")
    assert cli.main(_argv(tiny_single_file, image, out, "--overwrite")) == 0
    assert read_metadata(out)["instruction"] == "make it red"


def test_a_folder_edit_onto_existing_outputs_is_refused_before_anything_is_written(tiny_single_file, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for seed, name in enumerate(["a.png", "b.png"]):
        _image(folder / name, seed)
    out.mkdir()
    (out / "b.png").write_bytes(b"an earlier edit")
    line = _one_error_line(capsys, _argv(tiny_single_file, folder, out))
    assert "1 of the 2 outputs already exist (b.png)" in line and "--overwrite" in line
    assert [p.name for p in out.iterdir()] == ["b.png"] and (out / "b.png").read_bytes() == b"an earlier edit"
    assert cli.main(_argv(tiny_single_file, folder, out, "--overwrite")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"] and read_metadata(out / "b.png")


# -- results that cannot be written ----------------------------------------------------------


def _poison_third_edit(monkeypatch):
    """The third edit of the run runs on a model with a NaN weight (the editor then refuses it)."""
    real_edit, calls = editor.edit, []

    def edit(model, images, settings, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                model.unet.conv_in.weight[0, 0, 0, 0] = float("nan")
        return real_edit(model, images, settings, **kwargs)

    monkeypatch.setattr(editor, "edit", edit)


def test_a_nan_result_mid_run_stops_it_keeping_the_finished_images(tiny_single_file, tmp_path, capsys, monkeypatch):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for seed, name in enumerate(["a.png", "b.png", "c.png"]):
        _image(folder / name, seed)
    _poison_third_edit(monkeypatch)
    line = _one_error_line(capsys, _argv(tiny_single_file, folder, out))
    assert "c.png" in line and "NaN" in line and "2 edit(s) finished before it are kept" in line
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]


def test_an_out_under_a_file_is_refused_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file")
    out = tmp_path / "notes.txt" / "out.png"
    # The model does not exist: the error being about --out shows the check came first.
    line = _one_error_line(capsys, _argv(tmp_path / "missing.safetensors", _image(tmp_path / "in.png"), out))
    assert str(out) in line and "notes.txt is a file" in line


def test_an_unwritable_out_folder_is_refused_naming_the_users_path(tmp_path, capsys, monkeypatch):
    out = tmp_path / "locked" / "out.png"
    (tmp_path / "locked").mkdir()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked" / ".ip2p-write-check-x"))

    monkeypatch.setattr("tempfile.mkstemp", refuse)  # a read-only folder (root writes anywhere)
    line = _one_error_line(capsys, _argv(tmp_path / "missing.safetensors", _image(tmp_path / "in.png"), out))
    assert str(out) in line and "Permission denied" in line and "write-check" not in line


def test_an_existing_folder_as_the_out_of_one_image_is_refused(tmp_path, capsys):
    out = tmp_path / "result.png"
    out.mkdir()
    line = _one_error_line(capsys, _argv(tmp_path / "missing.safetensors", _image(tmp_path / "in.png"), out))
    assert "result.png is an existing folder" in line
    assert list(out.iterdir()) == []


def test_the_write_check_leaves_nothing_behind(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "out.png"
    _one_error_line(capsys, _argv(tmp_path / "missing.safetensors", _image(tmp_path / "in.png"), out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]
