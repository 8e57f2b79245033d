"""ParquetLayoutWriter: hub-style shards that `datasets` and open_dataset read; atomic, resumable, multi-process."""

from __future__ import annotations

import errno
import io
import json
import multiprocessing
import os

import numpy as np
import pytest
from PIL import Image

from ip2p.datasets.parquet_writer import COLUMNS, ParquetLayoutWriter
from ip2p.datasets.reader import open_dataset
from ip2p.errors import IP2PError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

PROMPT = {"caption": "a red circle", "edit": "make it blue", "output": "a blue circle"}
METADATA = {"seed": 7, "p2p_threshold": 0.4, "cfg_scale": 9.5, "clip_sim_dir": 0.25, "family": "recolor"}


def _image(value: int, size=(12, 8)) -> Image.Image:
    """An RGB image whose pixels encode ``value`` (distinct per example, exact after PNG)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x * 20 % 256, y * 30 % 256, np.full_like(x, value % 256)], -1).astype(np.uint8))


def _shards(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))


def _visible(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def _add(writer, i: int, **metadata) -> bool:
    return writer.add(f"ex{i}", {**PROMPT, "edit": f"edit {i}"}, _image(i), _image(i + 100), metadata or None)


# ------------------------------------------------------------------------------------ the layout


def test_shards_are_data_split_numbered_and_hold_at_most_shard_rows(tmp_path):
    with ParquetLayoutWriter(tmp_path, shard_rows=2) as writer:
        for i in range(5):
            _add(writer, i)
    assert _shards(tmp_path) == ["data/train/00000.parquet", "data/train/00001.parquet", "data/train/00002.parquet"]
    assert [pq.read_metadata(tmp_path / s).num_rows for s in _shards(tmp_path)] == [2, 2, 1]
    assert writer.written == [tmp_path / s for s in _shards(tmp_path)]


def test_columns_and_the_huggingface_features_declare_images_and_values(tmp_path):
    with ParquetLayoutWriter(tmp_path) as writer:
        _add(writer, 0, **METADATA)
    schema = pq.read_schema(tmp_path / "data/train/00000.parquet")
    assert list(schema.names) == list(COLUMNS)
    assert schema.field("input_image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["input_image"] == features["edited_image"] == {"_type": "Image"}
    assert features["edit_prompt"] == {"dtype": "string", "_type": "Value"}
    assert features["seed"] == {"dtype": "uint64", "_type": "Value"}
    assert features["clip_sim_dir"] == {"dtype": "float64", "_type": "Value"}


def test_datasets_load_dataset_decodes_the_images_and_reads_every_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    with ParquetLayoutWriter(tmp_path) as writer:
        _add(writer, 0, **METADATA)
        _add(writer, 1)  # no metadata: nulls
    for loaded in (
        datasets.load_dataset("parquet", data_files=str(tmp_path / "data/train/*.parquet"), split="train"),
        datasets.load_dataset(str(tmp_path), split="train"),  # the split comes from the folder name
    ):
        assert isinstance(loaded.features["input_image"], datasets.Image)
        row = loaded[0]
        assert isinstance(row["input_image"], Image.Image)
        assert np.array_equal(np.asarray(row["input_image"].convert("RGB")), np.asarray(_image(0)))
        assert np.array_equal(np.asarray(row["edited_image"].convert("RGB")), np.asarray(_image(100)))
        assert (row["edit_prompt"], row["input_caption"], row["output_caption"]) == (
            "edit 0",
            "a red circle",
            "a blue circle",
        )
        assert (row["seed"], row["p2p_threshold"], row["cfg_scale"], row["clip_sim_dir"]) == (7, 0.4, 9.5, 0.25)
        assert json.loads(row["metadata_json"]) == {"family": "recolor"} and row["example_key"] == "ex0"
        assert loaded[1]["seed"] is None and loaded[1]["metadata_json"] is None


def test_open_dataset_reads_the_written_examples_with_captions_and_metadata(tmp_path):
    with ParquetLayoutWriter(tmp_path) as writer:
        _add(writer, 3, **METADATA)
    example = open_dataset(tmp_path, split="train")[0]
    assert example.key == "data/train/00000:0" and example.instruction == "edit 3"
    assert np.array_equal(np.asarray(example.input_image), np.asarray(_image(3)))
    assert example.extra["input_caption"] == "a red circle" and example.extra["seed"] == 7
    assert example.extra["example_key"] == "ex3"


def test_every_seed_torch_takes_is_stored_exactly(tmp_path):
    with ParquetLayoutWriter(tmp_path) as writer:
        for i, seed in enumerate((0, 2**63, 2**64 - 1)):
            _add(writer, i, seed=seed)
    assert pq.read_table(tmp_path / "data/train/00000.parquet").column("seed").to_pylist() == [0, 2**63, 2**64 - 1]


def test_encoded_image_bytes_are_stored_as_given(tmp_path):
    buffer = io.BytesIO()
    _image(1).save(buffer, format="JPEG", quality=80)
    with ParquetLayoutWriter(tmp_path) as writer:
        writer.add("jpeg", PROMPT, buffer.getvalue(), buffer.getvalue())
    cell = pq.read_table(tmp_path / "data/train/00000.parquet").column("input_image")[0].as_py()
    assert cell == {"bytes": buffer.getvalue(), "path": None}


def test_jpg_format_stores_jpeg_bytes(tmp_path):
    with ParquetLayoutWriter(tmp_path, image_format="jpg") as writer:
        _add(writer, 0)
    cell = pq.read_table(tmp_path / "data/train/00000.parquet").column("edited_image")[0].as_py()
    assert cell["bytes"][:3] == b"\xff\xd8\xff"


# ------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"seed": "seven"}, "'seed' must be a number"),
        ({"seed": 1.5}, "whole number"),
        ({"seed": -1}, r"from 0 to 2\*\*64 - 1"),
        ({"seed": 2**64}, r"from 0 to 2\*\*64 - 1"),
        ({"cfg_scale": True}, "number"),
    ],
)
def test_metadata_of_the_wrong_type_is_refused_naming_the_key(tmp_path, metadata, message):
    with ParquetLayoutWriter(tmp_path) as writer, pytest.raises(IP2PError, match=message):
        writer.add("a", PROMPT, _image(0), _image(1), metadata)
    assert _shards(tmp_path) == []


def test_metadata_that_is_not_json_ready_is_refused(tmp_path):
    with ParquetLayoutWriter(tmp_path) as writer, pytest.raises(IP2PError, match="JSON-ready"):
        writer.add("a", PROMPT, _image(0), _image(1), {"mask": object()})


def test_bytes_that_are_no_image_are_refused(tmp_path):
    with ParquetLayoutWriter(tmp_path) as writer, pytest.raises(IP2PError, match="Pillow cannot read"):
        writer.add("a", PROMPT, b"not an image", _image(1))


def test_a_prompt_without_an_instruction_is_refused(tmp_path):
    with ParquetLayoutWriter(tmp_path) as writer, pytest.raises(IP2PError, match="'edit'"):
        writer.add("a", {"caption": "a cat"}, _image(0), _image(1))


def test_a_parquet_file_the_writer_did_not_write_is_refused_at_open(tmp_path):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(IP2PError, match="other.parquet.*empty folder"):
        ParquetLayoutWriter(tmp_path)


def test_a_shard_with_other_columns_is_refused_at_open(tmp_path):
    (tmp_path / "data/train").mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "data/train/00000.parquet")
    with pytest.raises(IP2PError, match="other columns"):
        ParquetLayoutWriter(tmp_path)


def test_a_damaged_shard_is_refused_at_open_saying_to_delete_it(tmp_path):
    (tmp_path / "data/train").mkdir(parents=True)
    (tmp_path / "data/train/00000.parquet").write_bytes(b"not parquet")
    with pytest.raises(IP2PError, match="cannot be read as a shard.*Delete it"):
        ParquetLayoutWriter(tmp_path)


# ------------------------------------------------------------------------------------ resume


def test_a_rerun_skips_the_keys_already_written_and_appends_new_shards(tmp_path):
    with ParquetLayoutWriter(tmp_path) as writer:
        for i in range(3):
            _add(writer, i)
    with ParquetLayoutWriter(tmp_path) as writer:
        assert writer.has("ex1") and not writer.has("ex9")
        assert [_add(writer, i) for i in range(5)] == [False, False, False, True, True]
    assert _shards(tmp_path) == ["data/train/00000.parquet", "data/train/00001.parquet"]
    keys = [open_dataset(tmp_path)[i].extra["example_key"] for i in range(5)]
    assert keys == ["ex0", "ex1", "ex2", "ex3", "ex4"]


def test_a_key_repeated_within_one_run_is_written_once(tmp_path):
    with ParquetLayoutWriter(tmp_path) as writer:
        assert _add(writer, 0) and not _add(writer, 0)
    assert len(open_dataset(tmp_path)) == 1


def test_a_shard_number_claimed_by_another_writer_is_passed_over(tmp_path):
    (tmp_path / "data/train").mkdir(parents=True)
    (tmp_path / "data/train/.00000.parquet.claim").touch()  # another writer is writing shard 00000
    with ParquetLayoutWriter(tmp_path) as writer:
        _add(writer, 0)
    assert _shards(tmp_path) == ["data/train/00001.parquet"]
    assert not (tmp_path / "data/train/.00001.parquet.claim").exists(), "a finished shard releases its claim"


# ------------------------------------------------------------------------------------ groups


def _group(first: int, count: int) -> list[tuple]:
    return [
        (f"ex{i}", {**PROMPT, "edit": f"edit {i}"}, _image(i), _image(i + 100), {"seed": i})
        for i in range(first, first + count)
    ]


def test_a_group_is_never_split_between_shards_and_its_record_is_read_back(tmp_path):
    with ParquetLayoutWriter(tmp_path, shard_rows=3) as writer:
        for number in range(3):
            writer.add_group(f"g{number}", _group(number * 2, 2), {"tried": 5, "number": number})
    assert [pq.read_metadata(tmp_path / s).num_rows for s in _shards(tmp_path)] == [4, 2], "whole groups per shard"
    reopened = ParquetLayoutWriter(tmp_path)
    assert reopened.groups == {f"g{n}": {"tried": 5, "number": n} for n in range(3)}
    assert not reopened.add_group("g1", _group(0, 2)), "a done group is skipped"


def test_a_group_of_no_rows_is_recorded_in_a_shard_that_datasets_and_open_dataset_read(tmp_path):
    datasets = pytest.importorskip("datasets")
    with ParquetLayoutWriter(tmp_path) as writer:
        writer.add_group("kept", _group(0, 1), {"kept": 1})
    with ParquetLayoutWriter(tmp_path) as writer:
        writer.add_group("nothing kept", [], {"kept": 0})
    assert [pq.read_metadata(tmp_path / s).num_rows for s in _shards(tmp_path)] == [1, 0]
    assert ParquetLayoutWriter(tmp_path).groups == {"kept": {"kept": 1}, "nothing kept": {"kept": 0}}
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "data/train/*.parquet"), split="train")
    assert loaded["example_key"] == ["ex0"] and len(open_dataset(tmp_path)) == 1


def test_a_bad_example_leaves_no_part_of_its_group(tmp_path):
    with ParquetLayoutWriter(tmp_path) as writer:
        with pytest.raises(IP2PError, match="image1"):
            writer.add_group("g", [*_group(0, 1), ("ex1", PROMPT, _image(1), b"not an image", None)])
        assert not writer.has("ex0") and "g" not in writer.groups
    assert _shards(tmp_path) == []


def test_an_error_in_the_block_discards_unwritten_rows_and_ctrl_c_keeps_them(tmp_path):
    with pytest.raises(RuntimeError), ParquetLayoutWriter(tmp_path / "error") as writer:
        _add(writer, 0)
        raise RuntimeError("bug")
    assert _shards(tmp_path / "error") == []
    with pytest.raises(KeyboardInterrupt), ParquetLayoutWriter(tmp_path / "ctrl-c") as writer:
        _add(writer, 0)
        raise KeyboardInterrupt
    assert _shards(tmp_path / "ctrl-c") == ["data/train/00000.parquet"]


def test_a_full_disk_leaves_no_partial_shard_and_a_rerun_completes(tmp_path, monkeypatch):
    real_write = pq.write_table
    calls = []

    def write_then_fill_the_disk(table, where, **kwargs):
        calls.append(where)
        if len(calls) == 2:  # the second shard: half its bytes land, then the disk is full
            with open(where, "wb") as handle:
                handle.write(b"PAR1" + b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_then_fill_the_disk)
    with pytest.raises(IP2PError, match=r"the disk is full \(No space left on device\).*Free disk space.*run again"):
        with ParquetLayoutWriter(tmp_path, shard_rows=2) as writer:
            for i in range(5):
                _add(writer, i)
    assert _visible(tmp_path) == ["data/train/00000.parquet"], "only the whole shard is visible"
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()], "no temporary file or claim is left"
    assert len(open_dataset(tmp_path)) == 2

    monkeypatch.setattr(pq, "write_table", real_write)
    with ParquetLayoutWriter(tmp_path, shard_rows=2) as writer:
        written = [_add(writer, i) for i in range(5)]
    assert written == [False, False, True, True, True]
    dataset = open_dataset(tmp_path)
    assert sorted(dataset[i].extra["example_key"] for i in range(len(dataset))) == [f"ex{i}" for i in range(5)]


# ------------------------------------------------------------------------------------ several processes


def _write_part(root: str, part: int, count: int, barrier) -> list[str]:
    """One process's share: keys p{part}-{i}, a shard every 2 rows, started together with the others."""
    barrier.wait()
    with ParquetLayoutWriter(root, shard_rows=2) as writer:
        for i in range(count):
            writer.add(f"p{part}-{i}", {"edit": f"edit {part} {i}"}, _image(i), _image(part))
    return [os.path.basename(p) for p in writer.written]


def test_two_processes_writing_one_dataset_lose_nothing_and_never_share_a_shard(tmp_path):
    context = multiprocessing.get_context("spawn")
    count = 12
    with context.Manager() as manager:
        barrier = manager.Barrier(2)
        with context.Pool(2) as pool:
            parts = pool.starmap(_write_part, [(str(tmp_path), part, count, barrier) for part in (0, 1)])
    assert not set(parts[0]) & set(parts[1]), "each shard has one writer"
    assert sorted(parts[0] + parts[1]) == [name.split("/")[-1] for name in _shards(tmp_path)]
    dataset = open_dataset(tmp_path)
    keys = sorted(dataset[i].extra["example_key"] for i in range(len(dataset)))
    assert keys == sorted(f"p{part}-{i}" for part in (0, 1) for i in range(count))
