"""`ip2p dataset convert` and `ip2p dataset stats`, run in-process through ``main(argv)``."""

from __future__ import annotations

import json

import pytest

from ip2p.cli.main import main
from ip2p.datasets.reader import open_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Six toy pairs in the paper's layout."""
    out = tmp_path_factory.mktemp("toy") / "toy"
    assert main(["dataset", "toy", "--out", str(out), "--count", "6", "--size", "32", "-q"]) == 0
    return out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:"), err
    return err


def test_convert_to_parquet_and_back_keeps_every_pair(toy, tmp_path, capsys):
    assert main(["dataset", "convert", str(toy), str(tmp_path / "pq"), "--to", "parquet"]) == 0
    err = capsys.readouterr().err
    assert "Wrote 6 pairs" in err and "Left out: mask (6)" in err  # the toy's edit masks: said, not silently lost
    assert main(["dataset", "convert", str(tmp_path / "pq"), str(tmp_path / "paper"), "--to", "paper", "-q"]) == 0
    original, back = open_dataset(toy), open_dataset(tmp_path / "paper")
    assert [original.key(i) for i in range(6)] == [back.key(i) for i in range(6)]
    for i in range(6):
        a, b = original[i], back[i]
        kept = {k: v for k, v in a.extra.items() if k != "mask"}
        assert (a.instruction, kept, a.input_image.tobytes()) == (b.instruction, b.extra, b.input_image.tobytes())


def test_a_second_run_finds_everything_already_written(toy, tmp_path, capsys):
    argv = ["dataset", "convert", str(toy), str(tmp_path / "pq"), "--to", "parquet", "--shard-rows", "4"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "Wrote 0 pairs" in err and "6 already there" in err
    assert len(open_dataset(tmp_path / "pq")) == 6


def test_a_source_without_captions_or_seeds_prints_what_fills_them(toy, tmp_path, capsys):
    assert main(["dataset", "convert", str(toy), str(tmp_path / "pq"), "--to", "parquet", "-q"]) == 0
    bare = tmp_path / "bare.parquet"  # the diffusers columns only
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(next((tmp_path / "pq").rglob("*.parquet")))
    pq.write_table(table.select(["input_image", "edit_prompt", "edited_image"]), bare)
    assert main(["dataset", "convert", str(bare), str(tmp_path / "paper"), "--to", "paper"]) == 0
    err = capsys.readouterr().err
    assert 'prompt.json gets empty ones ("")' in err and "seed is the row's index" in err
    assert "empty captions for 6 pairs, seeds from the row index for 6 pairs" in err


def test_the_help_says_what_fills_missing_captions_and_seeds(capsys):
    assert main(["dataset", "convert", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "empty captions" in help_text and "row's index" in help_text


def test_convert_of_a_folder_that_is_no_dataset_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("hello")
    assert main(["dataset", "convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--to", "parquet"]) == 2
    assert "is not a dataset layout this reader knows" in _one_line_error(capsys)
    assert not (tmp_path / "dst").exists()


def test_convert_refuses_a_destination_holding_other_files(toy, tmp_path, capsys):
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "mine.txt").write_text("keep")
    assert main(["dataset", "convert", str(toy), str(tmp_path / "dst"), "--to", "paper"]) == 2
    assert "mine.txt" in _one_line_error(capsys)
    assert [p.name for p in (tmp_path / "dst").iterdir()] == ["mine.txt"]


def test_convert_refuses_a_malformed_column_mapping(toy, tmp_path, capsys):
    argv = ["dataset", "convert", str(toy), str(tmp_path / "dst"), "--to", "paper", "--column", "edit_prompt"]
    assert main(argv) == 2
    assert "ROLE=NAME" in _one_line_error(capsys)


def test_stats_reports_pairs_prompts_sizes_and_metadata(toy, capsys):
    assert main(["dataset", "stats", str(toy), "-q"]) == 0
    out = capsys.readouterr().out
    assert f"{toy} (paper layout)" in out
    assert "pairs:        6 of 6 usable rows" in out and "prompts:      6 (6 pairs with both captions)" in out
    assert "skipped:      none" in out and "image sizes:  32x32 (6)" in out
    assert any(line.split()[:2] == ["size", "6"] for line in out.splitlines()), "numeric metadata has a row"


def test_stats_json_counts_bad_rows_by_reason(toy, tmp_path, capsys):
    assert main(["dataset", "convert", str(toy), str(tmp_path / "copy"), "--to", "paper", "-q"]) == 0
    next((tmp_path / "copy").glob("*/*_1.png")).write_bytes(b"not a png")
    assert main(["dataset", "stats", str(tmp_path / "copy"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["pairs"], stats["skipped"]) == (5, {"corrupt image": 1})
