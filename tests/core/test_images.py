"""Image files in (every common mode, upright, RGB in [0, 1]) and PNGs out (atomic, with settings)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from ip2p import images
from ip2p.errors import IP2PError

EXIF_ORIENTATION = 0x0112


def _save(image: Image.Image, tmp_path, name: str = "in.png", **kwargs) -> str:
    path = tmp_path / name
    image.save(path, **kwargs)
    return str(path)


def _pixels(tensor: torch.Tensor) -> np.ndarray:
    """(H, W, 3) array of a loaded (1, 3, H, W) tensor."""
    assert tensor.shape[:2] == (1, 3) and tensor.dtype == torch.float32
    return tensor[0].permute(1, 2, 0).numpy()


def test_rgb_image_loads_as_its_pixels_over_255(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    loaded = images.load_image(_save(Image.fromarray(array), tmp_path))
    assert loaded.shape == (1, 3, 12, 20)
    np.testing.assert_allclose(_pixels(loaded), array / 255.0, atol=1e-6)


def test_rgba_is_composited_on_white(tmp_path):
    array = np.zeros((8, 8, 4), dtype=np.uint8)
    array[..., 0] = 200  # red channel
    array[:, :4, 3] = 0  # left half transparent
    array[:, 4:, 3] = 255  # right half opaque
    array[0, 4, 3] = 128  # one half-transparent pixel
    pixels = _pixels(images.load_image(_save(Image.fromarray(array, "RGBA"), tmp_path)))
    np.testing.assert_allclose(pixels[:, :4], 1.0)
    np.testing.assert_allclose(pixels[1, 5], [200 / 255, 0, 0], atol=1e-6)
    alpha = 128 / 255
    np.testing.assert_allclose(pixels[0, 4], [200 / 255 * alpha + 1 - alpha, 1 - alpha, 1 - alpha], atol=1e-6)


def test_greyscale_with_alpha_is_composited_on_white(tmp_path):
    array = np.stack([np.full((8, 8), 50, np.uint8), np.zeros((8, 8), np.uint8)], axis=-1)
    array[4:, :, 1] = 255
    pixels = _pixels(images.load_image(_save(Image.fromarray(array, "LA"), tmp_path)))
    np.testing.assert_allclose(pixels[:4], 1.0)
    np.testing.assert_allclose(pixels[4:], 50 / 255, atol=1e-6)


def test_greyscale_becomes_three_equal_channels(tmp_path):
    array = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    pixels = _pixels(images.load_image(_save(Image.fromarray(array, "L"), tmp_path)))
    for channel in range(3):
        np.testing.assert_allclose(pixels[..., channel], array / 255.0, atol=1e-6)


def test_16_bit_greyscale_is_scaled_by_its_full_range_not_clipped(tmp_path):
    array = np.array([[0, 257, 32768, 65535] * 2] * 8, dtype=np.uint16)
    image = Image.fromarray(array)
    assert image.mode.startswith("I;16")
    pixels = _pixels(images.load_image(_save(image, tmp_path)))
    np.testing.assert_allclose(pixels[0, :, 0], array[0] / 65535.0, atol=1e-6)


def test_palette_image_shows_its_palette_colours(tmp_path):
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    pixels = _pixels(images.load_image(_save(image, tmp_path)))
    np.testing.assert_allclose(pixels, np.broadcast_to([10 / 255, 200 / 255, 30 / 255], pixels.shape), atol=1e-6)


def test_palette_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    path = _save(image, tmp_path, transparency=1)
    np.testing.assert_allclose(_pixels(images.load_image(path)), 1.0)


def test_cmyk_is_converted_to_rgb(tmp_path):
    image = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # full magenta + yellow = red
    pixels = _pixels(images.load_image(_save(image, tmp_path, "in.jpg", quality=100)))
    assert pixels[..., 0].min() > 0.9 and pixels[..., 1:].max() < 0.1


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((10, 30, 3), dtype=np.uint8)
    array[:, :10] = 255  # a white left third
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90° clockwise to display"
    path = _save(image, tmp_path, exif=exif)
    loaded = _pixels(images.load_image(path))
    assert loaded.shape == (30, 10, 3)
    assert loaded[:10].min() == 1.0 and loaded[10:].max() == 0.0  # the white third is now on top
    assert images.image_size(path) == (10, 30)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(IP2PError, match="not found"):
        images.load_image(tmp_path / "nope.png")


def test_a_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello")
    assert not images.is_image_file(path)
    with pytest.raises(IP2PError, match="not an image"):
        images.load_image(path)


def test_truncated_image_is_a_clear_error(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / "cut.png"
    Image.fromarray(array).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(IP2PError, match="truncated or corrupt"):
        images.load_image(path)


def test_images_under_8_px_are_refused(tmp_path):
    with pytest.raises(IP2PError, match="at least 8 px"):
        images.load_image(_save(Image.new("RGB", (7, 64)), tmp_path))


def test_images_over_the_input_limit_are_refused(tmp_path):
    with pytest.raises(IP2PError, match="max-input-side"):
        images.load_image(_save(Image.new("RGB", (65, 16)), tmp_path), max_input_side=64)


def test_png_round_trips_pixels_and_settings(tmp_path):
    array = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    metadata = {"instruction": "make it snow ❄", "seed": 3, "text_cfg": 7.5, "model_hash": "0123456789ab"}
    path = images.save_png(tensor, tmp_path / "out.png", metadata)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), array)
    assert images.read_metadata(path) == metadata


def test_png_carries_a_human_readable_parameters_text(tmp_path):
    path = images.save_png(torch.zeros(3, 8, 8), tmp_path / "out.png", {"instruction": "add a hat", "seed": 7})
    text = Image.open(path).text["parameters"]
    assert text.splitlines()[0] == "add a hat" and "Seed: 7" in text


def test_float_pixels_are_rounded_to_the_nearest_8_bit_value(tmp_path):
    tensor = torch.full((3, 8, 8), 100.6 / 255)
    path = images.save_png(tensor, tmp_path / "out.png", {})
    assert np.asarray(Image.open(path)).max() == 101


def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half a file")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        images.save_png(torch.zeros(3, 8, 8), target, {"instruction": "x"})
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


# -- hostile files: one error naming the file, never a traceback or a hang ---------------------


def _huge_text_png(tmp_path) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)  # tiny compressed, huge inflated
    return _save(Image.new("RGB", (8, 8)), tmp_path, "bomb-text.png", pnginfo=info)


def test_an_oversized_text_chunk_is_one_error_naming_the_file(tmp_path):
    path = _huge_text_png(tmp_path)
    assert images.is_image_file(path)  # an image, refused when read: never skipped silently
    for read in (images.load_image, images.image_size, images.read_metadata):
        with pytest.raises(IP2PError, match=r"bomb-text\.png.*text chunk"):
            read(path)


@pytest.mark.parametrize("limit", [8 * 8 - 1, (8 * 8 - 1) // 2], ids=["warning", "error"])
def test_a_decompression_bomb_is_one_error_naming_the_file(tmp_path, monkeypatch, limit):
    path = _save(Image.new("RGB", (8, 8)), tmp_path, "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)  # 64 px over the limit: Pillow warns; over 2×: raises
    assert images.is_image_file(path)
    for read in (images.load_image, images.image_size, images.read_metadata):
        with pytest.raises(IP2PError, match=r"bomb\.png is too large to decode safely"):
            read(path)


def test_a_truncated_png_is_one_error_for_metadata_too(tmp_path):
    path = tmp_path / "cut.png"
    images.save_png(torch.rand(3, 64, 64), path, {"instruction": "x"})
    path.write_bytes(path.read_bytes()[:60])
    for read in (images.load_image, images.read_metadata):
        with pytest.raises(IP2PError, match=r"cut\.png"):
            read(path)


def test_metadata_that_is_not_json_is_one_error_naming_the_file(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text(images.METADATA_KEY, "{not json")
    path = _save(Image.new("RGB", (8, 8)), tmp_path, "odd.png", pnginfo=info)
    with pytest.raises(IP2PError, match=r"odd\.png.*not valid JSON"):
        images.read_metadata(path)


def test_a_fifo_is_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    assert not images.is_image_file(fifo)
    for read in (images.load_image, images.image_size, images.read_metadata):
        with pytest.raises(IP2PError, match=r"pipe\.png is not a regular file"):
            read(fifo)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_float_image_with_non_finite_pixels_is_refused(tmp_path, bad):
    pixels = np.full((8, 8), 0.5, dtype=np.float32)
    pixels[2, 3] = bad
    path = _save(Image.fromarray(pixels, "F"), tmp_path, "float.tif")
    with pytest.raises(IP2PError, match=r"float\.tif.*NaN or infinite"):
        images.load_image(path)


def test_a_finite_float_image_loads(tmp_path):
    path = _save(Image.fromarray(np.full((8, 8), 0.25, dtype=np.float32), "F"), tmp_path, "float.tif")
    np.testing.assert_allclose(_pixels(images.load_image(path)), 0.25, atol=1e-6)
