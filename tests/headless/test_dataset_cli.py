"""`ip2p dataset toy`, run in-process through ``main(argv)``."""

from __future__ import annotations

import json

from ip2p.cli.main import main


def _seeds(root):
    return {seed for _, seeds in json.loads((root / "seeds.json").read_text()) for seed in seeds}


def _hashes(root):
    return {json.loads(p.read_text())["hash"] for p in root.glob("*/metadata.jsonl")}


def test_toy_writes_the_requested_number_of_pairs(tmp_path):
    out = tmp_path / "toy"
    assert main(["dataset", "toy", "--out", str(out), "--count", "12", "--seed", "0", "-q"]) == 0
    assert len(_seeds(out)) == 12
    assert len(list(out.glob("*/*_0.png"))) == len(list(out.glob("*/*_1.png"))) == 12
    assert len(list(out.glob("*/*_mask.png"))) == 12
    assert [p.name for p in tmp_path.iterdir()] == ["toy"], "no temporary folder is left beside it"


def test_toy_runs_with_different_seeds_are_disjoint(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["dataset", "toy", "--out", str(a), "--count", "20", "--seed", "1", "-q"]) == 0
    assert main(["dataset", "toy", "--out", str(b), "--count", "20", "--seed", "2", "-q"]) == 0
    assert not _seeds(a) & _seeds(b)
    assert len(_hashes(a)) == 20 and not _hashes(a) & _hashes(b)


def test_toy_refuses_a_non_empty_folder_without_overwrite(tmp_path, capsys):
    out = tmp_path / "toy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["dataset", "toy", "--out", str(out), "--count", "3", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_toy_overwrite_replaces_the_folder(tmp_path):
    out = tmp_path / "toy"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert main(["dataset", "toy", "--out", str(out), "--count", "3", "--overwrite", "-q"]) == 0
    assert not (out / "old.txt").exists() and len(_seeds(out)) == 3


def test_toy_writes_into_an_empty_existing_folder(tmp_path):
    out = tmp_path / "toy"
    out.mkdir()
    assert main(["dataset", "toy", "--out", str(out), "--count", "2", "--size", "32", "-q"]) == 0
    assert len(_seeds(out)) == 2


def test_toy_bad_arguments_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "toy"
    for extra in (["--count", "0"], ["--count", "2", "--size", "4"], ["--count", "2", "--families", "rotate"]):
        assert main(["dataset", "toy", "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error:"), err
    assert not out.exists()


def test_dataset_needs_a_subcommand(capsys):
    assert main(["dataset"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_toy_shows_a_progress_bar_unless_quiet(tmp_path, capsys):
    assert main(["dataset", "toy", "--out", str(tmp_path / "loud"), "--count", "3"]) == 0
    err = capsys.readouterr().err
    assert "toy pairs" in err and "Wrote 3 toy pairs" in err
    assert main(["dataset", "toy", "--out", str(tmp_path / "quiet"), "--count", "3", "-q"]) == 0
    assert capsys.readouterr().err == ""
