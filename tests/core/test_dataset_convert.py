"""convert_dataset and dataset_stats: round trips between the paper layout and parquet keep every example."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from ip2p.datasets.convert import check_destination, convert_dataset
from ip2p.datasets.paper import PaperLayoutWriter
from ip2p.datasets.parquet_writer import ParquetLayoutWriter
from ip2p.datasets.reader import open_dataset
from ip2p.datasets.stats import dataset_stats
from ip2p.errors import IP2PError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

# A JPEG decoded, re-encoded at quality 95 and decoded again: on the 64x48 gradients below a pixel
# moved by at most 3 levels of 255 (0.11 on average), measured; the bounds leave room for other libjpegs.
JPEG_SIZE = (64, 48)
JPEG_MEAN_TOLERANCE = 0.5
JPEG_MAX_TOLERANCE = 8


def _image(value: int, size=(16, 12)) -> Image.Image:
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, value % 256)], -1)
    return Image.fromarray(pixels.astype(np.uint8))


def _metadata(seed: int) -> dict:
    return {
        "p2p_threshold": 0.1 + seed / 100,
        "cfg_scale": 7.5 + seed,
        "clip_sim_0": 0.21,
        "clip_sim_1": 0.22,
        "clip_sim_dir": 0.2 + seed / 100,
        "clip_sim_image": 0.8,
        "sampler": {"name": "euler_a", "steps": 20},
    }


@pytest.fixture
def paper(tmp_path):
    """Two prompts with two and three seeds, every metadata key, in the paper layout (PNG)."""
    root = tmp_path / "paper"
    writer = PaperLayoutWriter(root)
    for index, seeds in ((0, (3, 5)), (1, (2, 4, 6))):
        prompt = {"caption": f"a photo {index}", "edit": f"make it {index}", "output": f"an edited photo {index}"}
        for seed in seeds:
            writer.add(index, prompt, seed, _image(seed), _image(seed + 50), metadata=_metadata(seed))
    writer.finish()
    return root


def _examples(path):
    dataset = open_dataset(path)
    return [dataset[i] for i in range(len(dataset))]


def _same_content(a, b, *, ignore=("example_key",)) -> None:
    assert a.instruction == b.instruction
    assert {k: v for k, v in a.extra.items() if v is not None and k not in ignore} == {
        k: v for k, v in b.extra.items() if v is not None and k not in ignore
    }
    assert np.array_equal(np.asarray(a.input_image), np.asarray(b.input_image))
    assert np.array_equal(np.asarray(a.edited_image), np.asarray(b.edited_image))


def _unpacked(example):
    """extra with metadata_json unpacked, as the paper layout shows it."""
    import json

    extra = {k: v for k, v in example.extra.items() if v is not None and k != "example_key"}
    extra.update(json.loads(extra.pop("metadata_json", None) or "{}"))
    return extra


# ------------------------------------------------------------------------------------ round trips


def test_paper_to_parquet_to_paper_keeps_keys_instructions_pixels_and_metadata(paper, tmp_path):
    report = convert_dataset(open_dataset(paper), tmp_path / "pq", "parquet")
    assert (report.written, report.already, report.bad, report.dropped) == (5, 0, {}, {})
    convert_dataset(open_dataset(tmp_path / "pq"), tmp_path / "back", "paper")
    original, parquet, back = _examples(paper), _examples(tmp_path / "pq"), _examples(tmp_path / "back")
    assert [e.key for e in back] == [e.key for e in original], "contiguous folders come back with their names"
    assert [e.extra["example_key"] for e in parquet] == [e.key for e in original]
    for a, p, b in zip(original, parquet, back, strict=True):
        _same_content(a, b)
        assert _unpacked(p) == a.extra and p.instruction == a.instruction


def test_parquet_to_paper_to_parquet_keeps_instructions_pixels_and_metadata(tmp_path):
    with ParquetLayoutWriter(tmp_path / "pq") as writer:
        for i in range(4):
            prompt = {"caption": f"cap {i % 2}", "edit": f"edit {i % 2}", "output": f"out {i % 2}"}
            writer.add(f"k{i}", prompt, _image(i), _image(i + 9), {"seed": 100 + i, **_metadata(i)})
    convert_dataset(open_dataset(tmp_path / "pq"), tmp_path / "paper", "paper")
    convert_dataset(open_dataset(tmp_path / "paper"), tmp_path / "again", "parquet")
    assert [e.key for e in _examples(tmp_path / "paper")] == [
        "0000000/100",
        "0000000/102",
        "0000001/101",
        "0000001/103",
    ]
    first = {e.extra["seed"]: e for e in _examples(tmp_path / "pq")}
    again = {e.extra["seed"]: e for e in _examples(tmp_path / "again")}
    assert sorted(first) == sorted(again) == [100, 101, 102, 103]
    for seed, example in first.items():
        _same_content(example, again[seed])


def test_jpeg_pairs_keep_their_decoded_pixels_in_png_and_stay_close_in_jpg(tmp_path):
    writer = PaperLayoutWriter(tmp_path / "jpg", image_format="jpg")
    writer.add(0, {"caption": "a", "edit": "b", "output": "c"}, 1, _image(1, JPEG_SIZE), _image(200, JPEG_SIZE))
    writer.finish()
    convert_dataset(open_dataset(tmp_path / "jpg"), tmp_path / "png", "parquet")  # lossless: PNG of the decoded JPEG
    convert_dataset(open_dataset(tmp_path / "jpg"), tmp_path / "jpgpq", "parquet", image_format="jpg")
    (source,), (png,), (jpg,) = (_examples(tmp_path / name) for name in ("jpg", "png", "jpgpq"))
    for image in ("input_image", "edited_image"):
        decoded = np.asarray(getattr(source, image), dtype=int)
        assert np.array_equal(np.asarray(getattr(png, image), dtype=int), decoded)
        error = np.abs(np.asarray(getattr(jpg, image), dtype=int) - decoded)
        assert error.mean() <= JPEG_MEAN_TOLERANCE and error.max() <= JPEG_MAX_TOLERANCE


def _hub_parquet(path, rows: int) -> None:
    """A parquet file as diffusers' examples have it: the three columns and nothing else."""

    def cell(image):
        import io

        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "input_image": [cell(_image(i)) for i in range(rows)],
                "edit_prompt": ["same edit" if i < 2 else f"edit {i}" for i in range(rows)],
                "edited_image": [cell(_image(i + 1)) for i in range(rows)],
            }
        ),
        path,
    )


def test_a_source_without_captions_or_seeds_gets_empty_captions_and_row_index_seeds(tmp_path, caplog):
    _hub_parquet(tmp_path / "hub" / "train-00000-of-00001.parquet", rows=3)
    with caplog.at_level(logging.INFO, logger="ip2p"):
        report = convert_dataset(open_dataset(tmp_path / "hub"), tmp_path / "paper", "paper")
    assert (report.filled_captions, report.seeds_from_index) == (3, 3)
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Note:")]
    assert len(notes) == 2 and "empty" in notes[1] and "row's index" in notes[0]
    back = _examples(tmp_path / "paper")
    assert [e.key for e in back] == ["0000000/0", "0000000/1", "0000001/2"], "one folder per prompt"
    assert back[0].extra == {"input_caption": "", "output_caption": "", "seed": 0}


def test_rows_repeating_a_prompt_and_seed_go_to_another_folder_not_lost(tmp_path):
    with ParquetLayoutWriter(tmp_path / "pq") as writer:
        for i in range(3):
            writer.add(f"k{i}", {"edit": "same"}, _image(i), _image(i), {"seed": 7})
    convert_dataset(open_dataset(tmp_path / "pq"), tmp_path / "paper", "paper")
    assert [e.key for e in _examples(tmp_path / "paper")] == ["0000000/7", "0000001/7", "0000002/7"]


def test_an_interrupted_conversion_resumes_where_it_stopped(paper, tmp_path):
    def stop_at_the_fourth(_):
        stop_at_the_fourth.calls += 1
        if stop_at_the_fourth.calls == 4:
            raise RuntimeError("interrupted")

    for to in ("parquet", "paper"):
        stop_at_the_fourth.calls = 0
        with pytest.raises(RuntimeError):
            convert_dataset(open_dataset(paper), tmp_path / f"to-{to}", to, shard_rows=2, progress=stop_at_the_fourth)
        report = convert_dataset(open_dataset(paper), tmp_path / f"to-{to}", to, shard_rows=2)
        assert report.already >= 2 and report.already + report.written == 5, to
        for a, b in zip(_examples(paper), _examples(tmp_path / f"to-{to}"), strict=True):
            assert a.instruction == b.instruction and a.extra["seed"] == b.extra["seed"]


def test_unreadable_rows_are_counted_and_skipped(paper, tmp_path):
    (paper / "0000001" / "4_1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    source = open_dataset(paper, verify_images=False)
    report = convert_dataset(source, tmp_path / "pq", "parquet")
    assert (report.written, report.bad) == (4, {"corrupt image": 1})


# ------------------------------------------------------------------------------------ destinations


def test_the_destination_must_not_overlap_the_source(paper):
    for dst in (paper, paper / "out", paper.parent):
        with pytest.raises(IP2PError, match="overlaps the source"):
            check_destination(dst, "parquet", paper)


def test_a_destination_holding_other_files_is_refused(paper, tmp_path):
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "notes.txt").write_text("mine")
    for to in ("paper", "parquet"):
        with pytest.raises(IP2PError, match="notes.txt.*missing or empty folder"):
            check_destination(tmp_path / "dst", to, paper)
    with pytest.raises(IP2PError, match="0000000"):
        check_destination(paper, "parquet", tmp_path / "elsewhere")


# ------------------------------------------------------------------------------------ stats


def test_stats_count_pairs_prompts_skips_sizes_and_metadata_ranges(paper):
    Image.new("RGB", (4, 4)).save(paper / "0000001" / "6_1.png")  # sizes differ: skipped at open
    stats = dataset_stats(open_dataset(paper))
    assert (stats["layout"], stats["rows"], stats["pairs"], stats["prompts"]) == ("paper", 4, 4, 2)
    assert stats["skipped"] == {"size mismatch": 1} and stats["with_captions"] == 4
    assert stats["image_sizes"] == {"16x12": 4} and stats["width"] == [16, 16] and stats["height"] == [12, 12]
    cfg = stats["metadata"]["cfg_scale"]
    assert cfg == {"count": 4, "mean": pytest.approx(7.5 + (3 + 5 + 2 + 4) / 4), "min": 9.5, "max": 12.5}
    assert "seed" not in stats["metadata"] and "sampler" not in stats["metadata"]


def test_stats_read_metadata_json_in_parquet_and_honour_the_limit(paper, tmp_path):
    convert_dataset(open_dataset(paper), tmp_path / "pq", "parquet")
    stats = dataset_stats(open_dataset(tmp_path / "pq"), limit=2)
    assert (stats["examined"], stats["pairs"], stats["prompts"]) == (2, 2, 1)
    assert stats["metadata"]["clip_sim_image"]["mean"] == pytest.approx(0.8)
