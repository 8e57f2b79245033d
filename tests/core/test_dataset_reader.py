"""open_dataset: every layout reads back the right examples; bad rows are counted and skipped."""

from __future__ import annotations

import io
import json
import logging
import pickle
import sys
from pathlib import Path

import pytest
from PIL import Image

from ip2p.datasets import EditExample
from ip2p.datasets.reader import BadExampleError, open_dataset
from ip2p.errors import IP2PError

# ------------------------------------------------------------------------------------ builders


def _image(color, size=(8, 6), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def _png_bytes(color, size=(8, 6)) -> bytes:
    buffer = io.BytesIO()
    _image(color, size).save(buffer, format="PNG")
    return buffer.getvalue()


def _prompt_folder(root: Path, name: str, seeds, *, prompt=None, ext=".png", metadata=True) -> Path:
    """A paper-layout folder: prompt.json, {seed}_0/{seed}_1 images whose colour encodes the seed."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    if prompt is None:
        prompt = {"caption": f"a photo {name}", "edit": f"make it {name}", "output": f"an edited photo {name}"}
    if prompt is not False:
        (folder / "prompt.json").write_text(json.dumps(prompt) if isinstance(prompt, dict) else prompt)
    for seed in seeds:
        _image((seed % 256, 0, 0)).save(folder / f"{seed}_0{ext}")
        _image((seed % 256, 255, 0)).save(folder / f"{seed}_1{ext}")
    if metadata:
        lines = [json.dumps({"seed": s, "p2p_threshold": 0.5, "cfg_scale": 9.0, "clip_sim_dir": 0.3}) for s in seeds]
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def paper(tmp_path) -> Path:
    _prompt_folder(tmp_path, "0000001", [10, 9])
    _prompt_folder(tmp_path, "0000000", [3])
    return tmp_path


def _pa():
    return pytest.importorskip("pyarrow")


def _image_cells(colors, size=(8, 6)):
    return [{"bytes": _png_bytes(c, size), "path": None} for c in colors]


def _table(n=3, *, raw=False, names=("input_image", "edit_prompt", "edited_image"), start=0):
    pa = _pa()
    inputs = [_png_bytes((start + i, 0, 0)) for i in range(n)]
    edits = [_png_bytes((start + i, 255, 0)) for i in range(n)]
    if raw:
        input_col, edited_col = pa.array(inputs, pa.binary()), pa.array(edits, pa.binary())
    else:
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        input_col = pa.array([{"bytes": b, "path": None} for b in inputs], image_type)
        edited_col = pa.array([{"bytes": b, "path": None} for b in edits], image_type)
    return pa.table(
        {
            names[0]: input_col,
            names[1]: pa.array([f"edit {start + i}" for i in range(n)]),
            names[2]: edited_col,
            "original_prompt": pa.array([f"caption {start + i}" for i in range(n)]),
        }
    )


def _write_parquet(table, path: Path, row_group_size=None) -> Path:
    pq = pytest.importorskip("pyarrow.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _write_saved_dataset(table, folder: Path, shards=1) -> Path:
    """What Dataset.save_to_disk writes: Arrow IPC stream shards, state.json, dataset_info.json."""
    pa = _pa()
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = -(-table.num_rows // shards)
    names = []
    for index in range(shards):
        name = f"data-{index:05d}-of-{shards:05d}.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.slice(index * per_shard, per_shard))
        names.append({"filename": name})
    (folder / "state.json").write_text(json.dumps({"_data_files": names, "_fingerprint": "x", "_split": None}))
    features = {"input_image": {"_type": "Image"}, "edited_image": {"_type": "Image"}}
    (folder / "dataset_info.json").write_text(json.dumps({"features": features}))
    return folder


def _red(image: Image.Image) -> int:
    return image.getpixel((0, 0))[0]


# --------------------------------------------------------------------------------- paper layout


def test_paper_layout_reads_instruction_captions_metadata_and_rgb_pairs(paper):
    dataset = open_dataset(paper)
    assert dataset.layout == "paper" and len(dataset) == 3 and dataset.skipped == {}
    example = dataset[0]
    assert isinstance(example, EditExample)
    assert example.key == "0000000/3"
    assert example.instruction == "make it 0000000"
    assert example.input_image.mode == example.edited_image.mode == "RGB"
    assert example.input_image.getpixel((0, 0)) == (3, 0, 0)
    assert example.edited_image.getpixel((0, 0)) == (3, 255, 0)
    assert example.extra == {
        "input_caption": "a photo 0000000",
        "output_caption": "an edited photo 0000000",
        "seed": 3,
        "p2p_threshold": 0.5,
        "cfg_scale": 9.0,
        "clip_sim_dir": 0.3,
    }


def test_paper_layout_is_sorted_by_folder_then_numeric_seed(paper):
    assert [open_dataset(paper).key(i) for i in range(3)] == ["0000000/3", "0000001/9", "0000001/10"]


def test_the_released_prompts_input_key_is_the_input_caption(tmp_path):
    _prompt_folder(tmp_path, "0000000", [1], prompt={"input": "a dog", "edit": "make it a cat", "output": "a cat"})
    assert open_dataset(tmp_path)[0].extra["input_caption"] == "a dog"


def test_images_of_any_mode_and_extension_come_back_rgb(tmp_path):
    folder = _prompt_folder(tmp_path, "0000000", [], metadata=False)
    _image((200, 100, 50, 0), mode="RGBA").save(folder / "5_0.webp", lossless=True)  # transparent: white
    _image(128, mode="L").save(folder / "5_1.jpg")
    example = open_dataset(tmp_path)[0]
    assert example.input_image.mode == example.edited_image.mode == "RGB"
    assert example.input_image.getpixel((0, 0)) == (255, 255, 255)
    assert abs(example.edited_image.getpixel((0, 0))[0] - 128) <= 2
    assert example.extra["seed"] == 5


def test_seeds_json_lists_exactly_the_pairs_that_belong(paper):
    (paper / "seeds.json").write_text(json.dumps([["0000001", [10]], ["0000000", [3]]]))
    dataset = open_dataset(paper)
    assert [dataset.key(i) for i in range(len(dataset))] == ["0000000/3", "0000001/10"]
    assert dataset.skipped == {}


def test_a_seed_in_seeds_json_without_images_counts_as_missing_image(paper):
    (paper / "seeds.json").write_text(json.dumps([["0000000", [3, 4]]]))
    dataset = open_dataset(paper)
    assert len(dataset) == 1 and dataset.skipped == {"missing image": 1}


def test_malformed_seeds_json_is_a_one_line_error(paper):
    (paper / "seeds.json").write_text('{"0000000": [3]}')
    with pytest.raises(IP2PError, match="seeds.json"):
        open_dataset(paper)


def test_each_bad_pair_reason_is_counted_skipped_and_summarised_once(tmp_path, caplog):
    _prompt_folder(tmp_path, "0000000", [1])  # the one good pair
    _prompt_folder(tmp_path, "0000001", [1, 2], prompt=False)  # missing prompt.json
    _prompt_folder(tmp_path, "0000002", [1], prompt="{not json")  # bad prompt.json
    _prompt_folder(tmp_path, "0000003", [1], prompt='["a list"]')  # bad prompt.json
    _prompt_folder(tmp_path, "0000004", [1], prompt={"caption": "x", "edit": "  ", "output": "y"})
    (_prompt_folder(tmp_path, "0000005", [1]) / "1_1.png").unlink()  # missing image
    (_prompt_folder(tmp_path, "0000006", [1]) / "1_0.png").write_bytes(b"not an image")  # corrupt image
    _image((0, 0, 0), size=(4, 4)).save(_prompt_folder(tmp_path, "0000007", [1]) / "1_1.png")  # size mismatch
    with caplog.at_level(logging.WARNING, logger="ip2p.datasets"):
        dataset = open_dataset(tmp_path)
    assert [dataset.key(i) for i in range(len(dataset))] == ["0000000/1"]
    assert dataset.skipped == {
        "missing prompt.json": 2,
        "bad prompt.json": 2,
        "empty instruction": 1,
        "missing image": 1,
        "corrupt image": 1,
        "size mismatch": 1,
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Skipped 8 of 9" in warnings[0] and "size mismatch: 1" in warnings[0]
    assert "e.g. 0000001/1, 0000002/1, 0000003/1" in warnings[0]


def test_without_verify_images_decoding_problems_raise_bad_example_on_read(tmp_path):
    (_prompt_folder(tmp_path, "0000000", [1]) / "1_0.png").write_bytes(b"not an image")
    _image((0, 0, 0), size=(4, 4)).save(_prompt_folder(tmp_path, "0000001", [1]) / "1_1.png")
    dataset = open_dataset(tmp_path, verify_images=False)
    assert len(dataset) == 2 and dataset.skipped == {}
    with pytest.raises(BadExampleError) as corrupt:
        dataset[0]
    assert (corrupt.value.reason, corrupt.value.key) == ("corrupt image", "0000000/1")
    with pytest.raises(BadExampleError) as mismatch:
        dataset[1]
    assert mismatch.value.reason == "size mismatch"


def test_a_truncated_image_passes_the_header_check_and_raises_on_read(tmp_path):
    folder = _prompt_folder(tmp_path, "0000000", [1])
    path = folder / "1_0.png"
    _image((9, 9, 9), size=(64, 64)).save(path)
    _image((9, 9, 9), size=(64, 64)).save(folder / "1_1.png")
    path.write_bytes(path.read_bytes()[:-40])
    dataset = open_dataset(tmp_path)
    assert len(dataset) == 1
    with pytest.raises(BadExampleError, match="corrupt image") as bad:
        dataset[0]
    assert isinstance(bad.value, IP2PError)


def test_unreadable_metadata_lines_are_reported_not_fatal(paper, caplog):
    (paper / "0000000" / "metadata.jsonl").write_text("garbage\n")
    with caplog.at_level(logging.WARNING, logger="ip2p.datasets"):
        example = open_dataset(paper)[0]
    assert example.extra["seed"] == 3 and "p2p_threshold" not in example.extra
    assert any("metadata.jsonl" in r.getMessage() for r in caplog.records)


def test_zero_usable_pairs_is_an_error_naming_the_path_and_the_layout(tmp_path):
    _prompt_folder(tmp_path, "0000000", [1], prompt=False)
    with pytest.raises(IP2PError, match="prompt folders with prompt.json") as error:
        open_dataset(tmp_path)
    assert str(tmp_path) in str(error.value) and "missing prompt.json: 1" in str(error.value)


def test_keys_are_unique_stable_and_readable_without_images(paper):
    first, second = open_dataset(paper), open_dataset(paper)
    keys = [first.key(i) for i in range(len(first))]
    assert len(set(keys)) == len(keys)
    assert keys == [second[i].key for i in range(len(second))]


def test_indexing_behaves_like_a_sequence(paper):
    dataset = open_dataset(paper)
    assert dataset[-1].key == dataset.key(2) == "0000001/10"
    with pytest.raises(IndexError):
        dataset[3]
    assert [e.key for e in dataset] == [dataset.key(i) for i in range(3)]


# --------------------------------------------------------------------------------- parquet


def test_parquet_with_the_datasets_image_struct_reads_back(tmp_path):
    path = _write_parquet(_table(3), tmp_path / "train.parquet")
    dataset = open_dataset(path)
    assert dataset.layout == "parquet" and len(dataset) == 3
    example = dataset[2]
    assert (example.key, example.instruction) == ("train:2", "edit 2")
    assert example.input_image.getpixel((0, 0)) == (2, 0, 0)
    assert example.edited_image.getpixel((0, 0)) == (2, 255, 0)
    assert example.extra == {"original_prompt": "caption 2"}


def test_parquet_with_raw_binary_image_columns_reads_back(tmp_path):
    dataset = open_dataset(_write_parquet(_table(2, raw=True), tmp_path / "d.parquet"))
    assert _red(dataset[1].input_image) == 1 and dataset[1].input_image.mode == "RGB"


def test_column_mapping_renames_the_roles(tmp_path):
    names = ("original_image", "instruction", "edited")
    path = _write_parquet(_table(2, names=names), tmp_path / "d.parquet")
    dataset = open_dataset(
        path, columns={"input_image": "original_image", "edit_prompt": "instruction", "edited_image": "edited"}
    )
    assert dataset[1].instruction == "edit 1" and _red(dataset[1].edited_image) == 1
    assert "instruction" not in dataset[1].extra


def test_a_missing_column_names_the_columns_the_closest_and_the_fix(tmp_path):
    path = _write_parquet(_table(1, names=("original_image", "edit_prompt", "edited_image")), tmp_path / "d.parquet")
    with pytest.raises(IP2PError) as error:
        open_dataset(path)
    message = str(error.value)
    assert "'input_image' not found" in message
    assert "columns are original_image, edit_prompt, edited_image, original_prompt" in message
    assert "closest: 'original_image'" in message and "data.columns.input_image=NAME" in message


def test_an_unknown_column_role_is_refused(tmp_path):
    with pytest.raises(IP2PError, match="Unknown column role 'prompt'"):
        open_dataset(tmp_path, columns={"prompt": "x"})


def test_hub_shards_are_read_in_name_order_and_split_selects(tmp_path):
    pa = _pa()
    _write_parquet(_table(2, start=10), tmp_path / "data" / "train-00001-of-00002.parquet")
    _write_parquet(_table(2, start=0), tmp_path / "data" / "train-00000-of-00002.parquet")
    _write_parquet(_table(1, start=50), tmp_path / "data" / "test-00000-of-00001.parquet")
    train = open_dataset(tmp_path)  # several splits: train by default
    assert [train.key(i) for i in range(4)] == [
        "data/train-00000-of-00002:0",
        "data/train-00000-of-00002:1",
        "data/train-00001-of-00002:0",
        "data/train-00001-of-00002:1",
    ]
    assert [train[i].instruction for i in range(4)] == ["edit 0", "edit 1", "edit 10", "edit 11"]
    assert [e.instruction for e in open_dataset(tmp_path, split="test")] == ["edit 50"]
    with pytest.raises(IP2PError, match="splits found are test, train"):
        open_dataset(tmp_path, split="validation")
    assert pa is not None


def test_random_access_across_row_groups(tmp_path):
    path = _write_parquet(_table(7), tmp_path / "d.parquet", row_group_size=2)
    dataset = open_dataset(path)
    assert [_red(dataset[i].input_image) for i in (6, 0, 3, 4, 1)] == [6, 0, 3, 4, 1]


def test_empty_instructions_are_skipped_at_open_and_empty_images_raise_on_read(tmp_path, caplog):
    pa = _pa()
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "input_image": pa.array(_image_cells([1, 2, 3, 4]) + [None], image_type),
            "edit_prompt": pa.array(["a", "", None, " ", "e"]),
            "edited_image": pa.array(_image_cells([1, 2, 3, 4, 5]), image_type),
        }
    )
    with caplog.at_level(logging.WARNING, logger="ip2p.datasets"):
        dataset = open_dataset(_write_parquet(table, tmp_path / "d.parquet"))
    assert dataset.skipped == {"empty instruction": 3}
    assert [dataset.key(i) for i in range(len(dataset))] == ["d:0", "d:4"]
    assert "e.g. d:1, d:2, d:3" in caplog.text
    with pytest.raises(BadExampleError) as missing:
        dataset[1]
    assert missing.value.reason == "missing image"


def test_verify_images_counts_corrupt_and_mismatched_rows_at_open(tmp_path):
    pa = _pa()
    table = pa.table(
        {
            "input_image": pa.array([_png_bytes(1), b"garbage", _png_bytes(3)]),
            "edit_prompt": pa.array(["a", "b", "c"]),
            "edited_image": pa.array([_png_bytes(1), _png_bytes(2), _png_bytes(3, size=(5, 5))]),
        }
    )
    path = _write_parquet(table, tmp_path / "d.parquet")
    assert len(open_dataset(path)) == 3  # off by default for parquet: found on read instead
    dataset = open_dataset(path, verify_images=True)
    assert [dataset.key(i) for i in range(len(dataset))] == ["d:0"]
    assert dataset.skipped == {"corrupt image": 1, "size mismatch": 1}


def test_image_paths_are_read_relative_to_the_shard(tmp_path):
    pa = _pa()
    _image((7, 0, 0)).save(tmp_path / "in.png")
    _image((7, 1, 0)).save(tmp_path / "out.png")
    table = pa.table(
        {"input_image": ["in.png"], "edit_prompt": ["x"], "edited_image": [{"bytes": None, "path": "out.png"}]}
    )
    example = open_dataset(_write_parquet(table, tmp_path / "d.parquet"))[0]
    assert example.input_image.getpixel((0, 0)) == (7, 0, 0) and example.edited_image.getpixel((0, 0)) == (7, 1, 0)


def test_zero_usable_rows_is_an_error(tmp_path):
    pa = _pa()
    table = pa.table({"input_image": [_png_bytes(1)], "edit_prompt": [""], "edited_image": [_png_bytes(1)]})
    with pytest.raises(IP2PError, match="No usable rows") as error:
        open_dataset(_write_parquet(table, tmp_path / "d.parquet"))
    assert "empty instruction: 1" in str(error.value)


def test_tabular_datasets_survive_pickling_for_dataloader_workers(tmp_path):
    dataset = open_dataset(_write_parquet(_table(3), tmp_path / "d.parquet"))
    dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone[2].instruction == "edit 2" and clone.key(1) == "d:1"


# --------------------------------------------------------------------------- save_to_disk folders


def test_a_save_to_disk_folder_reads_its_arrow_shards_in_state_order(tmp_path):
    folder = _write_saved_dataset(_table(5), tmp_path / "saved", shards=2)
    dataset = open_dataset(folder)
    assert dataset.layout == "arrow" and len(dataset) == 5
    assert dataset.key(3) == "data-00001-of-00002:0"
    assert [e.instruction for e in dataset] == [f"edit {i}" for i in range(5)]
    assert _red(dataset[4].edited_image) == 4


def test_a_dataset_dict_folder_reads_train_unless_split_says(tmp_path):
    _write_saved_dataset(_table(2), tmp_path / "train")
    _write_saved_dataset(_table(1, start=9), tmp_path / "test")
    (tmp_path / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert len(open_dataset(tmp_path)) == 2
    assert open_dataset(tmp_path, split="test")[0].key == "test/data-00000-of-00001:0"


def test_a_real_datasets_save_to_disk_folder_and_parquet_export_read_back(tmp_path):
    import datasets  # the test extra installs it

    images = [_image((i, 0, 0)) for i in range(2)]
    data = {"input_image": images, "edit_prompt": ["a", "b"], "edited_image": images, "n": [1, 2]}
    ds = datasets.Dataset.from_dict(
        data,
        features=datasets.Features(
            {
                "input_image": datasets.Image(),
                "edit_prompt": datasets.Value("string"),
                "edited_image": datasets.Image(),
                "n": datasets.Value("int64"),
            }
        ),
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "p" / "train-00000-of-00001.parquet"))
    for path in (tmp_path / "saved", tmp_path / "p"):
        example = open_dataset(path)[1]
        assert (example.instruction, example.extra, _red(example.input_image)) == ("b", {"n": 2}, 1)


# --------------------------------------------------------------------------------- paths


def test_a_missing_path_is_a_one_line_error(tmp_path):
    with pytest.raises(IP2PError, match="Dataset not found"):
        open_dataset(tmp_path / "nope")


def test_an_unknown_layout_is_a_one_line_error_listing_what_was_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "sub").mkdir()
    with pytest.raises(IP2PError, match="no prompt folders with prompt.json") as error:
        open_dataset(tmp_path)
    assert "\n" not in str(error.value)
    with pytest.raises(IP2PError, match="not a dataset"):
        open_dataset(tmp_path / "notes.txt")


def test_a_missing_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(IP2PError, match="pip install pyarrow"):
        open_dataset(path)


def test_exif_rotation_is_applied_before_sizes_are_compared(tmp_path):
    folder = _prompt_folder(tmp_path, "0000000", [], metadata=False)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 8x6, shown 6x8
    _image((90, 0, 0), size=(8, 6)).save(folder / "1_0.jpg", exif=exif.tobytes())
    _image((90, 0, 0), size=(6, 8)).save(folder / "1_1.png")
    dataset = open_dataset(tmp_path)
    assert dataset.skipped == {} and dataset[0].input_image.size == (6, 8)


def test_other_image_feature_columns_decode_and_raw_binary_extras_stay_bytes(tmp_path):
    pa = _pa()
    table = _table(1).append_column(
        "edit_mask", pa.array(_image_cells([200]), pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    )
    table = table.append_column("blob", pa.array([b"\x00\x01"], pa.binary()))
    extra = open_dataset(_write_parquet(table, tmp_path / "d.parquet"))[0].extra
    assert isinstance(extra["edit_mask"], Image.Image) and extra["edit_mask"].getpixel((0, 0)) == (200, 0, 0)
    assert extra["blob"] == b"\x00\x01"
