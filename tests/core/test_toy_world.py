"""The toy world (ip2p.datasets.toy) and the paper-layout writer (ip2p.datasets.paper)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ip2p.datasets.paper import PaperLayoutWriter
from ip2p.datasets.toy import (
    DEFAULT_FAMILIES,
    FAMILIES,
    PALETTE,
    SHAPES,
    TOY_WORDS,
    render_example,
    render_scene,
    shape_coverage,
    toy_seeds,
    write_toy_dataset,
)
from ip2p.errors import IP2PError

SEEDS = range(200)


@pytest.fixture(scope="module")
def examples():
    return [render_example(seed) for seed in SEEDS]


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def _full(shape, size=64) -> np.ndarray:
    """Pixels the shape covers entirely."""
    return shape_coverage(shape, size) == 1.0


def _touched(shape, size=64) -> np.ndarray:
    return shape_coverage(shape, size) > 0.0


# --- determinism and identity ----------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_example_byte_for_byte():
    a, b = render_example(1234), render_example(1234)
    assert a.instruction == b.instruction and a.family == b.family
    assert a.input_image.tobytes() == b.input_image.tobytes()
    assert a.edited_image.tobytes() == b.edited_image.tobytes()
    assert np.array_equal(a.mask, b.mask)
    assert a.content_hash == b.content_hash


def test_different_seeds_give_different_examples(examples):
    assert len({e.content_hash for e in examples}) == len(examples)


def test_one_seed_is_the_same_scene_at_every_size():
    small, large = render_example(7, size=32), render_example(7, size=96)
    assert small.input_scene == large.input_scene and small.instruction == large.instruction
    assert small.input_image.size == (32, 32) and large.input_image.size == (96, 96)


def test_runs_with_different_seeds_never_share_an_example():
    first, second = toy_seeds(0, 300), toy_seeds(1, 300)
    assert not set(first) & set(second)
    hashes = {render_example(s).content_hash for s in first}
    assert not hashes & {render_example(s).content_hash for s in second}


def test_a_run_seed_range_is_checked():
    with pytest.raises(IP2PError, match="--count"):
        toy_seeds(0, 10**6 + 1)
    with pytest.raises(IP2PError, match="--seed"):
        toy_seeds(-1, 5)


# --- the task ----------------------------------------------------------------------------------------------


def test_every_default_family_occurs_over_200_seeds(examples):
    assert {e.family for e in examples} == set(DEFAULT_FAMILIES)


def test_add_whose_place_the_instruction_leaves_open_is_drawn_only_on_request():
    assert "add" in FAMILIES and "add" not in DEFAULT_FAMILIES
    assert {render_example(s, families=FAMILIES).family for s in range(200)} == set(FAMILIES)


def test_families_can_be_restricted():
    assert {render_example(s, families=("recolor",)).family for s in range(20)} == {"recolor"}
    with pytest.raises(IP2PError, match="Unknown toy edit families"):
        render_example(0, families=("rotate",))


def test_every_instruction_and_caption_uses_only_toy_words(examples):
    for e in examples:
        for text in (e.instruction, e.input_caption, e.edited_caption):
            assert set(text.split()) <= set(TOY_WORDS), text


def test_scenes_hold_one_to_three_shapes_of_distinct_colours_unlike_the_background(examples):
    for e in examples:
        for scene in (e.input_scene, e.edited_scene):
            colours = [s.color for s in scene.shapes]
            assert 1 <= len(colours) <= 3
            assert len(set(colours)) == len(colours) and scene.background not in colours


def test_the_mask_is_exactly_the_pixels_that_changed(examples):
    for e in examples:
        before, after = _pixels(e.input_image), _pixels(e.edited_image)
        assert e.mask.dtype == bool and e.mask.shape == (64, 64)
        assert e.mask.any(), e.instruction
        assert np.array_equal(before[~e.mask], after[~e.mask])
        assert (before[e.mask] != after[e.mask]).any(axis=-1).all()


def test_a_named_shape_is_unique_in_its_scene(examples):
    for e in examples:
        if e.family in ("recolor", "reshape", "remove"):
            named = e.input_scene.shapes[e.target]
            assert f"the {named.kind}" in e.instruction
            assert [s.kind for s in e.input_scene.shapes].count(named.kind) == 1


def test_recolor_gives_the_shape_the_named_colour_and_changes_nothing_else(examples):
    for e in (e for e in examples if e.family == "recolor"):
        before, after = e.input_scene.shapes[e.target], e.edited_scene.shapes[e.target]
        colour = e.instruction.split()[-1]
        assert before.color != colour and after.color == colour
        inside = _full(after)
        assert (_pixels(e.edited_image)[inside] == PALETTE[colour]).all()
        assert not (e.mask & ~_touched(before)).any(), "only the shape's pixels change"


def test_background_recolors_every_pixel_no_shape_touches(examples):
    for e in (e for e in examples if e.family == "background"):
        colour = e.instruction.split()[-1]
        touched = np.any([_touched(s) for s in e.input_scene.shapes], axis=0)
        assert (_pixels(e.edited_image)[~touched] == PALETTE[colour]).all()
        inside = np.any([_full(s) for s in e.input_scene.shapes], axis=0)
        assert not (e.mask & inside).any(), "the shapes stay as they were"


def test_reshape_keeps_place_size_and_colour_and_changes_the_kind(examples):
    for e in (e for e in examples if e.family == "reshape"):
        before, after = e.input_scene.shapes[e.target], e.edited_scene.shapes[e.target]
        assert e.instruction == f"change the {before.kind} into a {after.kind}"
        assert (before.x, before.y, before.r, before.color) == (after.x, after.y, after.r, after.color)
        assert before.kind != after.kind and after.kind in SHAPES
        assert (_pixels(e.edited_image)[_full(after)] == PALETTE[after.color]).all()
        assert not (e.mask & ~(_touched(before) | _touched(after))).any()


def test_remove_shows_the_background_where_the_shape_was(examples):
    for e in (e for e in examples if e.family == "remove"):
        gone = e.input_scene.shapes[e.target]
        assert gone not in e.edited_scene.shapes and len(e.edited_scene.shapes) == len(e.input_scene.shapes) - 1
        assert (_pixels(e.edited_image)[_touched(gone)] == PALETTE[e.input_scene.background]).all()
        assert not (e.mask & ~_touched(gone)).any()


def test_add_draws_the_named_shape_on_background(examples):
    for e in (e for e in examples if e.family == "add"):
        new = e.edited_scene.shapes[e.target]
        assert e.instruction.endswith(f"{new.color} {new.kind}")
        assert (_pixels(e.input_image)[_touched(new)] == PALETTE[e.input_scene.background]).all()
        assert (_pixels(e.edited_image)[_full(new)] == PALETTE[new.color]).all()
        assert not (e.mask & ~_touched(new)).any()


def test_captions_describe_the_scenes(examples):
    e = next(e for e in examples if e.family == "recolor")
    assert e.input_caption == e.input_scene.caption() and e.edited_caption == e.edited_scene.caption()
    assert render_scene(e.input_scene).tobytes() == e.input_image.tobytes()


# --- the paper layout on disk --------------------------------------------------------------------------------


def test_the_toy_dataset_is_written_in_the_paper_layout(tmp_path):
    entries = write_toy_dataset(tmp_path, count=5, seed=2, size=32)
    assert entries == [[f"{i:07d}", [2_000_000 + i]] for i in range(5)]
    assert json.loads((tmp_path / "seeds.json").read_text()) == entries

    folder, seed = tmp_path / "0000003", 2_000_003
    example = render_example(seed, size=32)
    assert sorted(p.name for p in folder.iterdir()) == [
        f"{seed}_0.png",
        f"{seed}_1.png",
        f"{seed}_mask.png",
        "metadata.jsonl",
        "prompt.json",
    ]
    prompt = json.loads((folder / "prompt.json").read_text())
    assert prompt == {"caption": example.input_caption, "edit": example.instruction, "output": example.edited_caption}
    (line,) = (folder / "metadata.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["seed"] == seed and record["family"] == example.family and record["hash"] == example.content_hash

    with Image.open(folder / f"{seed}_0.png") as image0, Image.open(folder / f"{seed}_1.png") as image1:
        assert image0.tobytes() == example.input_image.tobytes(), "PNG is lossless"
        assert image1.tobytes() == example.edited_image.tobytes()
    with Image.open(folder / f"{seed}_mask.png") as mask:
        assert mask.mode == "1" and np.array_equal(np.asarray(mask), example.mask)


def _pair(seed=0):
    example = render_example(seed, size=16)
    return example.prompt(), example.input_image, example.edited_image


def test_the_writer_adds_seeds_to_one_prompt_and_lists_only_finished_pairs(tmp_path):
    prompt, image0, image1 = _pair()
    writer = PaperLayoutWriter(tmp_path)
    writer.add(4, prompt, 11, image0, image1, metadata={"p2p_threshold": 0.5})
    writer.add(4, prompt, 12, image0, image1)
    writer.add(4, prompt, 11, image0, image1, metadata={"p2p_threshold": 0.3})  # replaces seed 11
    (tmp_path / "0000004" / "13_0.png").write_bytes(b"")  # an interrupted pair: no metadata line, no _1
    assert writer.has(4, 11) and not writer.has(4, 13)
    assert writer.finish() == [["0000004", [11, 12]]]
    lines = [json.loads(x) for x in (tmp_path / "0000004" / "metadata.jsonl").read_text().splitlines()]
    assert sorted((x["seed"], x.get("p2p_threshold")) for x in lines) == [(11, 0.3), (12, None)]


def test_the_writer_refuses_a_different_prompt_in_a_used_folder(tmp_path):
    prompt, image0, image1 = _pair()
    PaperLayoutWriter(tmp_path).add(0, prompt, 1, image0, image1)
    with pytest.raises(IP2PError, match="already holds another prompt"):
        PaperLayoutWriter(tmp_path).add(0, {**prompt, "edit": "remove the star"}, 2, image0, image1)


def test_the_writer_refuses_a_prompt_without_an_instruction(tmp_path):
    _, image0, image1 = _pair()
    with pytest.raises(IP2PError, match="'edit'"):
        PaperLayoutWriter(tmp_path).add(0, {"caption": "a red circle"}, 1, image0, image1)
    assert not any(tmp_path.iterdir())


def test_the_writer_writes_jpg_pairs_as_the_paper_does(tmp_path):
    prompt, image0, image1 = _pair()
    writer = PaperLayoutWriter(tmp_path, image_format="jpg")
    writer.add(0, prompt, 5, image0, image1)
    assert (tmp_path / "0000000" / "5_0.jpg").is_file() and writer.finish() == [["0000000", [5]]]
