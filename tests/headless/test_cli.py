"""`ip2p edit` and `ip2p convert`, run in-process through ``main(argv)`` (one subprocess test).

User errors exit 2 with one line on stderr that names the problem and the fix, no traceback,
and no output file.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ip2p import cli
from ip2p.formats.hashing import model_hash
from ip2p.headless import editor
from ip2p.images import read_metadata

REPO = Path(__file__).resolve().parents[2]
FAST = ["--steps", "2", "--max-side", "64", "--sampler", "euler"]
EXPECTED_METADATA = {
    "instruction",
    "negative",
    "seed",
    "text_cfg",
    "image_cfg",
    "sampler",
    "scheduler",
    "steps",
    "resize",
    "max_side",
    "dtype",
    "device",
    "model_hash",
}


def _write_image(path: Path, width: int = 64, height: int = 64, mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    if mode == "RGBA":
        image = Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (height, width), dtype=np.uint8)]), "RGBA")
    elif mode == "L":
        image = image.convert("L")
    elif mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    elif mode == "P":
        image = image.convert("P")
    image.save(path)
    return path


def _edit_args(model, image, out, *extra: str, instruction: str = "make it red") -> list[str]:
    return [
        "edit",
        "--model",
        str(model),
        "--image",
        str(image),
        "--instruction",
        instruction,
        "--out",
        str(out),
        *FAST,
        *extra,
    ]


def _expect_user_error(capsys, argv: list[str], out: Path, *words: str) -> str:
    """Run ``argv``; check exit 2, one ``error:`` line naming ``words``, no traceback, nothing written."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    for word in words:
        assert word.lower() in errors[0].lower(), errors[0]
    assert not out.exists()
    assert not out.parent.exists() or not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    return errors[0]


@pytest.fixture(scope="module")
def base_single_file(tiny_base_model, tmp_path_factory):
    from ip2p.headless.export import save_single_file

    return save_single_file(tiny_base_model, tmp_path_factory.mktemp("base") / "tiny-base.safetensors")


# -- what it writes --------------------------------------------------------------------------


def test_edit_writes_a_png_recording_the_settings_and_model_hash(tiny_single_file, tmp_path, capsys):
    image, out = _write_image(tmp_path / "in.png"), tmp_path / "out.png"
    argv = _edit_args(tiny_single_file, image, out, "--seed", "7", "--text-cfg", "6", "--image-cfg", "1.2")
    assert cli.main([*argv, "--negative", "blurry"]) == 0
    assert Image.open(out).size == (64, 64)
    metadata = read_metadata(out)
    assert EXPECTED_METADATA <= set(metadata)
    assert metadata["model_hash"] == model_hash(tiny_single_file) and len(metadata["model_hash"]) == 12
    assert (metadata["instruction"], metadata["negative"], metadata["seed"]) == ("make it red", "blurry", 7)
    assert (metadata["text_cfg"], metadata["image_cfg"], metadata["steps"]) == (6.0, 1.2, 2)
    assert (metadata["sampler"], metadata["scheduler"], metadata["resize"]) == ("euler", "normal", "paper")
    assert (metadata["max_side"], metadata["dtype"], metadata["device"]) == (64, "float32", "cpu")
    assert "ip2p edit" in capsys.readouterr().err  # the progress bar


def test_edit_loads_a_diffusers_folder(tiny_diffusers_dir, tmp_path):
    image, out = _write_image(tmp_path / "in.png"), tmp_path / "sub" / "out.png"
    assert cli.main(_edit_args(tiny_diffusers_dir, image, out)) == 0
    assert read_metadata(out)["model_hash"] == model_hash(tiny_diffusers_dir)


def test_an_empty_instruction_writes_the_input_unchanged(tiny_single_file, tmp_path):
    image, out = _write_image(tmp_path / "in.png", 72, 40), tmp_path / "out.png"
    assert cli.main(_edit_args(tiny_single_file, image, out, instruction="")) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(image)))


def test_a_folder_is_edited_image_by_image_at_each_size(tiny_single_file, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    sizes = {"a.png": (64, 48), "b.jpg": (40, 72), "c.png": (64, 48)}
    for name, (width, height) in sizes.items():
        _write_image(folder / name, width, height)
    (folder / "notes.txt").write_text("not an image")
    assert cli.main(_edit_args(tiny_single_file, folder, out, "--resize", "keep")) == 0
    for name, size in sizes.items():
        assert Image.open(out / (Path(name).stem + ".png")).size == size
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    assert "notes.txt" in capsys.readouterr().err  # skipped with a warning


def test_keep_records_no_max_side_since_it_did_not_apply(tiny_single_file, tmp_path):
    image, out = _write_image(tmp_path / "in.png", 48, 40), tmp_path / "out.png"
    assert cli.main(_edit_args(tiny_single_file, image, out, "--resize", "keep")) == 0
    metadata = read_metadata(out)
    assert metadata["resize"] == "keep" and "max_side" not in metadata


def test_the_result_does_not_depend_on_batch(tiny_single_file, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(3):
        _write_image(folder / f"{index}.png", seed=index)
    ancestral = ["--sampler", "euler_ancestral"]  # per-step noise too
    assert cli.main(_edit_args(tiny_single_file, folder, tmp_path / "one", *ancestral, "--batch", "1", "-q")) == 0
    assert cli.main(_edit_args(tiny_single_file, folder, tmp_path / "three", *ancestral, "--batch", "3", "-q")) == 0
    for index in range(3):
        one = np.asarray(Image.open(tmp_path / "one" / f"{index}.png"), dtype=np.int16)
        three = np.asarray(Image.open(tmp_path / "three" / f"{index}.png"), dtype=np.int16)
        assert np.abs(one - three).max() <= 1  # 1/255
    assert read_metadata(tmp_path / "three" / "2.png")["batch_size"] == 3


def test_batch_groups_images_of_equal_size(tiny_single_file, tmp_path, monkeypatch):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for index, size in enumerate([(64, 64), (48, 64), (64, 64), (64, 64)]):
        _write_image(folder / f"{index}.png", *size, seed=index)
    batches: list[int] = []

    def recording_edit(model, images, settings, **kwargs):
        batches.append(images.shape[0])
        return real_edit(model, images, settings, **kwargs)

    real_edit = editor.edit
    monkeypatch.setattr(editor, "edit", recording_edit)
    assert cli.main(_edit_args(tiny_single_file, folder, out, "--batch", "2", "--resize", "keep")) == 0
    assert sorted(batches) == [1, 1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png", "2.png", "3.png"]
    assert read_metadata(out / "2.png")["batch_size"] == 2


def test_rgba_greyscale_16_bit_and_palette_images_are_converted_and_edited(tiny_single_file, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    modes = {"rgba": "RGBA", "grey": "L", "deep": "I;16", "palette": "P"}
    for name, mode in modes.items():
        _write_image(folder / f"{name}.png", mode=mode)
    assert cli.main(_edit_args(tiny_single_file, folder, out, "--batch", "4")) == 0
    for name in modes:
        assert Image.open(out / f"{name}.png").mode == "RGB"


# -- bad input -------------------------------------------------------------------------------


def _pickle_that_runs_code(path: Path, marker: Path) -> Path:
    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save(
        {"state_dict": {"w": torch.zeros(2)}, "callback": RunsCode()}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL
    )
    return path


def test_a_four_channel_model_is_refused(base_single_file, tmp_path, capsys):
    image, out = _write_image(tmp_path / "in.png"), tmp_path / "out.png"
    _expect_user_error(capsys, _edit_args(base_single_file, image, out), out, "not an InstructPix2Pix model", "Load")


def test_a_truncated_model_is_refused(tiny_single_file, tmp_path, capsys):
    model = tmp_path / "cut.safetensors"
    data = Path(tiny_single_file).read_bytes()
    model.write_bytes(data[: len(data) // 2])
    image, out = _write_image(tmp_path / "in.png"), tmp_path / "out.png"
    _expect_user_error(capsys, _edit_args(model, image, out), out, "cut.safetensors")


def test_a_corrupt_model_is_refused(tmp_path, capsys):
    model = tmp_path / "noise.safetensors"
    model.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    image, out = _write_image(tmp_path / "in.png"), tmp_path / "out.png"
    _expect_user_error(capsys, _edit_args(model, image, out), out, "noise.safetensors")


def test_a_diffusers_folder_missing_a_component_is_refused(tiny_diffusers_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_diffusers_dir, model)
    shutil.rmtree(model / "vae")
    image, out = _write_image(tmp_path / "in.png"), tmp_path / "out.png"
    _expect_user_error(capsys, _edit_args(model, image, out), out, "vae")


def test_a_ckpt_whose_pickle_would_run_code_is_refused_and_the_code_never_runs(tmp_path, capsys):
    marker = tmp_path / "ran"
    model = _pickle_that_runs_code(tmp_path / "evil.ckpt", marker)
    image, out = _write_image(tmp_path / "in.png"), tmp_path / "out.png"
    _expect_user_error(capsys, _edit_args(model, image, out), out, "evil.ckpt")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--text-cfg", "nan"], ["text_cfg", "finite"]),
        (["--text-cfg", "inf"], ["text_cfg", "finite"]),
        (["--text-cfg", "-1"], ["text_cfg", "≥ 0"]),
        (["--image-cfg", "nan"], ["image_cfg", "finite"]),
        (["--image-cfg", "-0.5"], ["image_cfg", "≥ 0"]),
        (["--steps", "0"], ["steps is 0", "from 1 to 1000"]),
        (["--steps", "1001"], ["steps is 1001", "from 1 to 1000"]),
        (["--steps", "1000"], ["steps is 1000", "'normal'", "at most 999 steps"]),
        (["--max-side", "4097"], ["max_side is 4097", "at most 4096"]),
        (["--max-input-side", "16385"], ["max_input_side is 16385", "16384"]),
        (["--batch", "65"], ["--batch is 65", "from 1 to 64"]),
        (["--sampler", "dpmpp_2m_karras"], ["--sampler dpmpp_2m --scheduler karras"]),
        (["--scheduler", "karas"], ["Unknown scheduler 'karas'", "did you mean 'karras'"]),
        (["--device", "meta"], ["'meta' device cannot run"]),
        (["--device", "xla"], ["'xla' device cannot run"]),
        (["--sampler", "k_euler"], ["Unknown sampler 'k_euler'", "euler_ancestral"]),
        (["--scheduler", "cosine"], ["Unknown scheduler 'cosine'", "karras"]),
        (["--resize", "stretch"], ["invalid choice", "paper"]),
        (["--batch", "0"], ["--batch is 0", "from 1 to 64"]),
        (["--steps", "two"], ["invalid int value"]),
        (["--device", "cuda:99"], ["cuda:99"]),
    ],
)
def test_bad_settings_are_refused_before_loading_anything(tmp_path, capsys, extra, words):
    image, out = _write_image(tmp_path / "in.png"), tmp_path / "out.png"
    _expect_user_error(capsys, _edit_args(tmp_path / "no-model.safetensors", image, out, *extra), out, *words)


def test_a_missing_model_is_refused(tmp_path, capsys):
    image, out = _write_image(tmp_path / "in.png"), tmp_path / "out.png"
    _expect_user_error(capsys, _edit_args(tmp_path / "nope.safetensors", image, out), out, "not found", "nope")


def test_a_missing_image_is_refused(tiny_single_file, tmp_path, capsys):
    out = tmp_path / "out.png"
    _expect_user_error(capsys, _edit_args(tiny_single_file, tmp_path / "nope.png", out), out, "not found", "nope.png")


def test_a_file_that_is_not_an_image_is_refused(tiny_single_file, tmp_path, capsys):
    image, out = tmp_path / "in.png", tmp_path / "out.png"
    image.write_text("hello")
    _expect_user_error(capsys, _edit_args(tiny_single_file, image, out), out, "not an image")


def test_an_image_under_8_px_is_refused(tiny_single_file, tmp_path, capsys):
    image, out = _write_image(tmp_path / "in.png", 4, 4), tmp_path / "out.png"
    _expect_user_error(capsys, _edit_args(tiny_single_file, image, out), out, "4×4", "at least 8 px")


def test_an_image_over_the_input_limit_is_refused(tiny_single_file, tmp_path, capsys):
    image, out = _write_image(tmp_path / "in.png", 64, 40), tmp_path / "out.png"
    argv = _edit_args(tiny_single_file, image, out, "--max-input-side", "32")
    _expect_user_error(capsys, argv, out, "64×40", "--max-input-side")


def test_an_output_that_is_not_a_png_is_refused(tiny_single_file, tmp_path, capsys):
    image, out = _write_image(tmp_path / "in.png"), tmp_path / "out.jpg"
    _expect_user_error(capsys, _edit_args(tiny_single_file, image, out), out, ".png")


def test_the_output_never_overwrites_the_input(tiny_single_file, tmp_path, capsys):
    image = _write_image(tmp_path / "in.png")
    before = image.read_bytes()
    assert cli.main(_edit_args(tiny_single_file, image, image)) == 2
    assert "overwrite the input" in capsys.readouterr().err
    assert image.read_bytes() == before


# -- convert ---------------------------------------------------------------------------------


def test_convert_rewrites_a_ckpt_as_safetensors(tmp_path):
    from safetensors.torch import load_file

    weights = {"model.diffusion_model.w": torch.arange(6.0).reshape(2, 3)}
    torch.save({"state_dict": weights}, tmp_path / "model.ckpt")
    assert cli.main(["convert", "--ckpt", str(tmp_path / "model.ckpt"), "--out", str(tmp_path / "m.safetensors")]) == 0
    torch.testing.assert_close(load_file(tmp_path / "m.safetensors"), weights)


def test_convert_refuses_a_pickle_that_would_run_code(tmp_path, capsys):
    marker = tmp_path / "ran"
    source = _pickle_that_runs_code(tmp_path / "evil.ckpt", marker)
    _expect_user_error(capsys, ["convert", "--ckpt", str(source)], tmp_path / "evil.safetensors", "evil.ckpt")
    assert not marker.exists()


# -- the console entry -----------------------------------------------------------------------


def test_the_console_entry_exits_2_with_one_line_and_no_traceback(tmp_path):
    image = _write_image(tmp_path / "in.png")
    out = tmp_path / "out.png"
    code = "import sys; from ip2p.cli import main; sys.exit(main())"
    argv = _edit_args(tmp_path / "model.safetensors", image, out, "--steps", "0")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: steps is 0") and not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["-q", "convert", "--ckpt", "m.ckpt"],
        ["convert", "-q", "--ckpt", "m.ckpt"],
        ["convert", "--ckpt", "m.ckpt", "--quiet"],
    ],
)
def test_quiet_is_accepted_before_or_after_the_command(argv):
    assert cli.build_parser().parse_args(argv).quiet is True


def test_quiet_is_off_unless_given():
    assert cli.build_parser().parse_args(["convert", "--ckpt", "m.ckpt"]).quiet is False


def test_several_instructions_chain_each_editing_the_result_of_the_one_before(tiny_single_file, tmp_path):
    image = _write_image(tmp_path / "in.png")
    chained, first, second = tmp_path / "chained.png", tmp_path / "first.png", tmp_path / "second.png"
    two = ["--instruction", "make it blue", "--resize", "keep"]
    assert cli.main(_edit_args(tiny_single_file, image, chained, *two, instruction="make it red")) == 0
    assert cli.main(_edit_args(tiny_single_file, image, first, "--resize", "keep", instruction="make it red")) == 0
    assert cli.main(_edit_args(tiny_single_file, first, second, "--resize", "keep", instruction="make it blue")) == 0
    a, b = (np.asarray(Image.open(p), dtype=np.int16) for p in (chained, second))
    assert np.abs(a - b).max() <= 2  # the PNG between the turns rounds to 1/255 (measured: at most 1 here)
    assert read_metadata(chained)["instructions"] == ["make it red", "make it blue"]
