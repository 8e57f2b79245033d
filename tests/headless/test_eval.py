"""``ip2p eval``: a model's edits of a dataset (or the dataset's own pairs) scored, resumably, skips said.

Tiny random models: the numbers mean nothing here, the contract does (what is computed, what is
skipped and why, what a rerun does).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ip2p.cli.main import main
from ip2p.headless import evaluate as engine
from ip2p.headless.random_model import save_random_clip, save_random_dino
from ip2p.quality.metrics import PAPER_METRICS, TARGET_METRICS, TOY_METRICS

FAST = ["--steps", "1", "--sampler", "euler", "--image-cfg", "1.0,1.5", "-q"]
QUICK = ["--steps", "1", "--sampler", "euler", "--image-cfg", "1.5", "--limit", "2", "-q"]  # one pair, two examples


@pytest.fixture(scope="module")
def scorers(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorers")
    return save_random_clip(root / "clip"), save_random_dino(root / "dino")


def _eval(tmp_path, data, *extra) -> list[str]:
    return ["eval", "--data", str(data), "--out", str(tmp_path / "eval"), *extra]


def _metrics(tmp_path) -> dict:
    return json.loads((tmp_path / "eval" / "metrics.json").read_text())


def _rows(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "eval" / "per_example.jsonl").read_text().splitlines()]


def test_a_model_is_scored_at_every_guidance_pair_with_every_metric(tiny_single_file, paper_dataset, scorers, tmp_path):
    clip, dino = scorers
    argv = _eval(tmp_path, paper_dataset, "--model", tiny_single_file, "--clip", clip, "--dino", dino, *FAST)
    assert main([str(a) for a in argv]) == 0
    pairs = _metrics(tmp_path)["pairs"]
    assert [(p["text_cfg"], p["image_cfg"]) for p in pairs] == [(7.5, 1.0), (7.5, 1.5)]
    for pair in pairs:
        assert pair["examples"] == 4 and pair["failed"] == {}
        assert set(pair["metrics"]) == set(PAPER_METRICS + TARGET_METRICS)
        assert pair["skipped"] == {name: {"the example has no edit mask (the toy world's)": 4} for name in TOY_METRICS}
        assert all(v["n"] == 4 and v["ci95"][0] <= v["mean"] <= v["ci95"][1] for v in pair["metrics"].values())
        assert pair["metrics"]["clip_t"]["mean"] == pytest.approx(pair["metrics"]["sim_1"]["mean"])
    assert len(_rows(tmp_path)) == 8
    for name in ("tradeoff.png", "samples.png", "eval.json"):
        assert (tmp_path / "eval" / name).is_file()


def test_without_a_model_the_datasets_own_pairs_are_scored_and_the_target_metrics_skipped(
    paper_dataset, scorers, tmp_path
):
    assert main([str(a) for a in _eval(tmp_path, paper_dataset, "--clip", scorers[0], "-q")]) == 0
    (pair,) = _metrics(tmp_path)["pairs"]
    assert (pair["text_cfg"], pair["image_cfg"]) == (None, None)
    assert set(pair["metrics"]) == {"sim_0", "sim_1", "directional", "image", "clip_t"}
    assert "no --model" in next(iter(pair["skipped"]["l1"]))  # skipped with the reason, never 0
    assert not (tmp_path / "eval" / "tradeoff.png").exists()


def test_metrics_whose_model_is_not_given_are_skipped_with_the_reason(tiny_single_file, paper_dataset, tmp_path):
    assert main([str(a) for a in _eval(tmp_path, paper_dataset, "--model", tiny_single_file, *QUICK)]) == 0
    pair = _metrics(tmp_path)["pairs"][0]
    assert set(pair["metrics"]) == {"l1", "l2"}
    assert pair["skipped"]["clip_i"] == {"no --clip model given": 2}
    assert pair["skipped"]["dino"] == {"no --dino model given": 2}


def test_a_rerun_after_a_kill_continues_and_never_scores_an_example_twice(
    tiny_single_file, paper_dataset, tmp_path, monkeypatch
):
    argv = [str(a) for a in _eval(tmp_path, paper_dataset, "--model", tiny_single_file, *QUICK)]
    assert main(argv) == 0
    lines = (tmp_path / "eval" / "per_example.jsonl").read_text().splitlines()
    cut = "\n".join(lines[:1]) + "\n" + lines[1][: len(lines[1]) // 2]  # killed while writing the 2nd line
    (tmp_path / "eval" / "per_example.jsonl").write_text(cut)
    scored = []
    real = engine._score_chunk
    monkeypatch.setattr(
        engine, "_score_chunk", lambda chunk, *a: scored.extend(e.key for e in chunk) or real(chunk, *a)
    )
    assert main(argv) == 0
    assert len(scored) == 1  # the cut line's example only
    rows = _rows(tmp_path)
    assert len(rows) == 2 and len({r["key"] for r in rows}) == 2


def test_the_folder_of_another_evaluation_is_refused_and_left_as_it_was(
    tiny_single_file, paper_dataset, tmp_path, capsys
):
    argv = [str(a) for a in _eval(tmp_path, paper_dataset, "--model", tiny_single_file, *QUICK)]
    assert main(argv) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "eval").rglob("*") if p.is_file()}
    assert main([*argv, "--seed", "3"]) == 2
    assert "holds another evaluation (seed: 0 -> 3)" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (tmp_path / "eval").rglob("*") if p.is_file()} == before


def test_a_folder_that_is_not_an_evaluation_is_refused(paper_dataset, tmp_path, capsys):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "notes.txt").write_text("mine")
    assert main([str(a) for a in _eval(tmp_path, paper_dataset)]) == 2
    assert "is not an evaluation folder" in capsys.readouterr().err


def test_a_nan_edit_is_counted_as_failed_and_the_run_goes_on(tiny_single_file, paper_dataset, tmp_path, monkeypatch):
    from ip2p.headless import editor

    real_edit, calls = editor.edit, []

    def edit(model, images, settings, **kwargs):
        calls.append(1)
        if len(calls) != 2:
            return real_edit(model, images, settings, **kwargs)
        weight = model.unet.conv_in.weight
        kept = weight.detach().clone()
        with torch.no_grad():
            weight[0, 0, 0, 0] = float("nan")  # the second edit comes out NaN (the editor refuses it)
        try:
            return real_edit(model, images, settings, **kwargs)
        finally:
            with torch.no_grad():
                weight.copy_(kept)

    monkeypatch.setattr(editor, "edit", edit)
    assert main([str(a) for a in _eval(tmp_path, paper_dataset, "--model", tiny_single_file, *QUICK)]) == 0
    first = _metrics(tmp_path)["pairs"][0]
    assert sum(first["failed"].values()) == 1 and first["metrics"]["l1"]["n"] == 1


def test_a_dino_folder_holding_another_model_is_refused_before_anything_loads(paper_dataset, scorers, tmp_path, capsys):
    assert main([str(a) for a in _eval(tmp_path, paper_dataset, "--dino", scorers[0])]) == 2
    assert "not a DINO vision transformer" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_the_dino_embedding_is_the_class_token_of_224_px_crops(scorers):
    from ip2p.quality.dino import DinoScorer

    dino = DinoScorer.from_folder(scorers[1], device="cpu")
    images = torch.rand(2, 3, 300, 200, generator=torch.Generator().manual_seed(0))
    assert dino.embed_images(images).shape == (2, 32)


@pytest.fixture(scope="module")
def toy_eval(tiny_single_file, tmp_path_factory):
    """Three toy examples of three families evaluated with the model: the folder, the dataset, and each editor
    call's instructions and edits."""
    from ip2p.datasets.reader import open_dataset
    from ip2p.datasets.toy import write_toy_dataset
    from ip2p.headless import editor

    root = tmp_path_factory.mktemp("toy-eval")
    write_toy_dataset(root / "toy", count=3, seed=2)
    calls, real = [], editor.edit

    def spy(model, images, settings, *, instructions, **kwargs):
        edited = real(model, images, settings, instructions=instructions, **kwargs)
        calls.append((list(instructions), edited))
        return edited

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(editor, "edit", spy)
        argv = _eval(root, root / "toy", "--model", tiny_single_file, *QUICK[:-3], "--limit", 3, "-q")
        assert main([str(a) for a in argv]) == 0
    return root / "eval", open_dataset(root / "toy"), calls


def test_toy_data_gets_the_toy_metrics_per_edit_family(toy_eval):
    out, _, _ = toy_eval
    (pair,) = json.loads((out / "metrics.json").read_text())["pairs"]
    assert set(TOY_METRICS) <= set(pair["metrics"])
    families = [json.loads(line)["family"] for line in (out / "per_example.jsonl").read_text().splitlines()]
    assert set(pair["per_family"]) == set(families)
    assert sum(f["toy.hit_rate"]["n"] for f in pair["per_family"].values()) == 3


def test_each_toy_example_is_also_edited_under_another_familys_instruction_as_a_baseline(toy_eval):
    from ip2p.quality.metrics import masked_distance

    out, dataset, calls = toy_eval
    examples = {e.instruction: e for e in dataset}
    rows = {r["key"]: r for r in (json.loads(line) for line in (out / "per_example.jsonl").read_text().splitlines())}
    for (right, wrong), edited in calls:  # one call per example: its instruction and the wrong one, same seed
        example, lender = examples[right], examples[wrong]
        assert lender.extra["family"] != example.extra["family"]
        truth = torch.from_numpy(np.asarray(example.edited_image, dtype=np.float32) / 255).permute(2, 0, 1)
        mask = torch.from_numpy(np.asarray(example.extra["mask"]) > 127)
        expected = masked_distance(edited[1], truth, mask)
        assert rows[example.key]["metrics"]["toy.wrong_instruction_to_truth"] == pytest.approx(expected, abs=1e-6)
    assert len(calls) == 3
