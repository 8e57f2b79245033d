"""MagicBrush's parquet read turn by turn, and ``ip2p eval`` editing each image's turns as a chain.

The parquet is written here with MagicBrush's exact schema (img_id, turn_index, source_img,
mask_img, instruction, target_img; images as the ``datasets`` Image struct): two images of 3 and
2 turns, 32 px. Tiny random model, one step: the contract is what is edited from what, what is
scored, and what a rerun does.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ip2p.cli.main import main
from ip2p.datasets.reader import open_dataset
from ip2p.headless import editor
from ip2p.headless import evaluate as engine
from ip2p.headless.random_model import save_random_clip
from ip2p.quality.scoring import NO_WRONG_EDIT

SIZE = 32
TURNS = {"100": 3, "200": 2}
EDIT = ["--steps", "1", "--sampler", "euler", "--image-cfg", "1.5", "-q"]
MAGICBRUSH_SCHEMA = pa.schema(
    [
        ("img_id", pa.string()),
        ("turn_index", pa.int32()),
        ("source_img", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("mask_img", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("instruction", pa.string()),
        ("target_img", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ]
)


def _png(pixels: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def write_magicbrush(path, turns=TURNS, columns=None):
    """A MagicBrush parquet: per image, turn n's source is turn n − 1's target; the mask's white band is the
    edit region."""
    rng = np.random.default_rng(0)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[8:16] = 255
    rows = []
    for image, count in turns.items():
        source = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        for turn in count if isinstance(count, list) else range(1, count + 1):
            target = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            rows.append(
                {
                    "img_id": image,
                    "turn_index": turn,
                    "source_img": _png(source),
                    "mask_img": _png(mask),
                    "instruction": f"edit {image} turn {turn}",
                    "target_img": _png(target),
                }
            )
            source = target
    table = pa.Table.from_pylist(rows, schema=MAGICBRUSH_SCHEMA)
    pq.write_table(table.select(columns) if columns else table, path)
    return path


def pixels(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]


def rows_of(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "per_example.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def magicbrush(tmp_path_factory):
    return write_magicbrush(tmp_path_factory.mktemp("magicbrush") / "test.parquet")


def run_eval(data, out, *extra) -> tuple[int, dict[str, torch.Tensor]]:
    """``ip2p eval`` with a spy on the editor: returns the exit code and the image each instruction was applied to."""
    applied, real = {}, editor.edit

    def spy(model, images, settings, *, instructions, **kwargs):
        applied.update({text: images[i : i + 1].clone() for i, text in enumerate(instructions)})
        return real(model, images, settings, instructions=instructions, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(editor, "edit", spy)
        code = main([str(a) for a in ["eval", "--data", data, "--out", out, *extra]])
    return code, applied


@pytest.fixture(scope="module")
def chained(magicbrush, tiny_single_file, tmp_path_factory):
    """One multi-turn evaluation (no --reanchor): its folder and what each turn was edited from."""
    out = tmp_path_factory.mktemp("chained") / "eval"
    code, applied = run_eval(magicbrush, out, "--model", tiny_single_file, *EDIT)
    assert code == 0
    return out, applied


# ----------------------------------------------------------------------------------------- reader


def test_magicbrush_parquet_is_one_example_per_turn_keyed_by_image_and_turn(magicbrush):
    dataset = open_dataset(magicbrush)
    assert dataset.layout == "magicbrush"
    assert dataset.turns == [("100", 1), ("100", 2), ("100", 3), ("200", 1), ("200", 2)]
    example = dataset[1]
    table = pq.read_table(magicbrush).slice(1, 1).to_pylist()[0]
    assert example.key == "100-2" and example.instruction == "edit 100 turn 2"
    assert example.extra["img_id"] == "100" and example.extra["turn_index"] == 2
    assert np.array_equal(
        np.asarray(example.input_image), np.asarray(Image.open(io.BytesIO(table["source_img"]["bytes"])))
    )
    assert np.array_equal(
        np.asarray(example.edited_image), np.asarray(Image.open(io.BytesIO(table["target_img"]["bytes"])))
    )


def test_magicbrushs_mask_is_the_examples_mask_image_white_where_the_edit_goes(magicbrush):
    mask = open_dataset(magicbrush)[0].extra["mask"]
    assert mask.mode == "L" and "mask_img" not in open_dataset(magicbrush)[0].extra
    assert (np.asarray(mask)[8:16] == 255).all() and (np.asarray(mask)[16:] == 0).all()


def test_a_file_with_part_of_magicbrushs_schema_is_refused_naming_the_missing_columns(tmp_path):
    path = write_magicbrush(tmp_path / "part.parquet", columns=["img_id", "source_img", "instruction", "target_img"])
    with pytest.raises(Exception, match="lacks the column\\(s\\) turn_index, mask_img"):
        open_dataset(path)


# ------------------------------------------------------------------------------------------- eval


def test_each_later_turn_is_edited_from_the_previous_turns_edit(chained, magicbrush):
    out, applied = chained
    dataset = open_dataset(magicbrush)
    assert torch.equal(applied["edit 100 turn 1"], pixels(dataset[0].input_image))
    for image, turn in [("100", 2), ("100", 3), ("200", 2)]:
        saved = Image.open(out / "turns" / f"{image}-{turn - 1}_t7.5_i1.5.png")
        assert torch.equal(applied[f"edit {image} turn {turn}"], pixels(saved))


def test_every_turn_is_scored_against_its_target_per_turn_and_at_each_images_final_turn(chained):
    out, _ = chained
    (pair,) = json.loads((out / "metrics.json").read_text())["pairs"]
    assert {turn: summary["l1"]["n"] for turn, summary in pair["per_turn"].items()} == {"1": 2, "2": 2, "3": 1}
    finals = [r for r in rows_of(out) if r["final_turn"]]
    assert sorted(r["key"] for r in finals) == ["100-3", "200-2"]
    assert pair["final_turn"]["l1"]["mean"] == pytest.approx(np.mean([r["metrics"]["l1"] for r in finals]))
    assert json.loads((out / "eval.json").read_text())["reanchor"] is False
    assert pair["skipped"]["toy.wrong_instruction_to_truth"] == {NO_WRONG_EDIT: 5}  # MagicBrush has no families


def test_with_reanchor_every_turn_is_edited_from_its_own_source_image(magicbrush, tiny_single_file, tmp_path):
    code, applied = run_eval(magicbrush, tmp_path / "eval", "--model", tiny_single_file, "--reanchor", *EDIT)
    assert code == 0
    dataset = open_dataset(magicbrush)
    for example in dataset:
        assert torch.equal(applied[example.instruction], pixels(example.input_image))
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["reanchor"] is True
    assert not (tmp_path / "eval" / "turns").exists()


def test_a_rerun_after_an_interruption_continues_each_chain_from_its_saved_edit(
    chained, magicbrush, tiny_single_file, tmp_path, monkeypatch
):
    whole, applied_before = chained
    out = tmp_path / "eval"
    shutil.copytree(whole, out)
    lines = (out / "per_example.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["100-1", "200-1", "100-2", "200-2", "100-3"]
    (out / "per_example.jsonl").write_text("\n".join(lines[:3]) + "\n")  # killed after turn 2 of image 100
    scored, real = [], engine._score_chunk
    monkeypatch.setattr(
        engine, "_score_chunk", lambda chunk, *a: scored.extend(e.key for e in chunk) or real(chunk, *a)
    )
    code, applied = run_eval(magicbrush, out, "--model", tiny_single_file, *EDIT)
    assert code == 0 and scored == ["200-2", "100-3"]  # never a turn already scored
    assert torch.equal(applied["edit 100 turn 3"], applied_before["edit 100 turn 3"])  # from turn 2's saved edit
    for resumed, uninterrupted in zip(rows_of(out), rows_of(whole), strict=True):
        assert resumed["key"] == uninterrupted["key"]
        assert resumed["metrics"] == pytest.approx(uninterrupted["metrics"])


def test_an_image_missing_a_turn_is_refused_naming_it_before_any_model_loads(tiny_single_file, tmp_path, capsys):
    data = write_magicbrush(tmp_path / "gap.parquet", turns={"100": 2, "300": [1, 3]})
    code, _ = run_eval(data, tmp_path / "eval", "--model", tiny_single_file, *EDIT)
    assert code == 2
    assert "Image '300' has turn(s) 1, 3 but not turn 2" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_without_a_model_clip_t_is_skipped_as_magicbrush_has_no_captions(magicbrush, tmp_path):
    code, _ = run_eval(magicbrush, tmp_path / "eval", "--clip", save_random_clip(tmp_path / "clip"), "-q")
    assert code == 0
    (pair,) = json.loads((tmp_path / "eval" / "metrics.json").read_text())["pairs"]
    assert pair["skipped"]["clip_t"] == {"the example has no output (target) caption": 5}
    assert set(pair["per_turn"]) == {"1", "2", "3"} and pair["final_turn"]["image"]["n"] == 2
