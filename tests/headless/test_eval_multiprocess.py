"""``ip2p eval`` sharded over processes: each example scored once, by one process, as one process scores it.

MagicBrush-shaped data (two images of 3 and 2 turns, 32 px) on the tiny random model and a random
CLIP: a chain must stay in one process, and with ``--batch 2`` the batches differ between one and
two processes, so equal rows also show that an edit depends neither on its process nor its batch.
"""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from ip2p.cli.main import main
from ip2p.datasets.reader import open_dataset
from ip2p.headless import evaluate as engine
from ip2p.headless.random_model import save_random_clip
from tests.headless.test_eval_multiturn import write_magicbrush
from tests.headless.test_generate_multiprocess import ACCELERATE, run

EDIT = ["--steps", "1", "--sampler", "euler", "--image-cfg", "1.5", "--batch", "2", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def command(tiny_single_file, tmp_path_factory) -> list[str]:
    """``eval`` and its arguments, without --out."""
    folder = tmp_path_factory.mktemp("eval-multiprocess")
    data = write_magicbrush(folder / "test.parquet")
    clip = save_random_clip(folder / "clip")
    return [str(a) for a in ["eval", "--data", data, "--model", tiny_single_file, "--clip", clip, *EDIT]]


@pytest.fixture(scope="module")
def one_process(command, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "eval"
    assert main([*command, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def two_processes(command, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    run(ACCELERATE, ["-m", "ip2p", *command, "--out", str(folder / "eval")], folder)
    return folder / "eval"


def rows(out) -> dict[tuple, dict]:
    """Each line of ``per_example.jsonl`` by (text_cfg, image_cfg, key); a key twice fails."""
    lines = [json.loads(line) for line in (out / "per_example.jsonl").read_text().splitlines()]
    by_key = {(r["text_cfg"], r["image_cfg"], r["key"]): r for r in lines}
    assert len(by_key) == len(lines), "an example scored twice"
    return by_key


def assert_same_rows(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, row in got.items():
        assert row.keys() == expected[key].keys()
        assert row["metrics"] == pytest.approx(expected[key]["metrics"], rel=1e-4, abs=1e-5), key
        assert {k: v for k, v in row.items() if k != "metrics"} == {
            k: v for k, v in expected[key].items() if k != "metrics"
        }


def test_two_processes_score_every_example_once_as_one_process_does(two_processes, one_process):
    assert_same_rows(rows(two_processes), rows(one_process))
    two, one = (json.loads((out / "metrics.json").read_text())["pairs"] for out in (two_processes, one_process))
    assert two[0]["final_turn"]["l1"]["mean"] == pytest.approx(one[0]["final_turn"]["l1"]["mean"], rel=1e-4)
    files = [sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) for out in (two_processes, one_process)]
    assert files[0] == files[1]  # the turns' edits, the samples and their grid


def test_each_image_and_all_its_turns_go_to_one_process(command):
    dataset = open_dataset(command[command.index("--data") + 1])
    shares = [engine.plan(dataset, engine.EvalSettings(), rank, 2)[1] for rank in (0, 1)]
    assert [[dataset.turns[i] for i in share] for share in shares] == [
        [("100", 1), ("100", 2), ("100", 3)],
        [("200", 1), ("200", 2)],
    ]


def test_a_rerun_in_another_number_of_processes_scores_only_what_is_missing(
    two_processes, command, tmp_path, monkeypatch
):
    out = tmp_path / "eval"
    shutil.copytree(two_processes, out)
    lines = (out / "per_example.jsonl").read_text().splitlines()
    missing = [json.loads(line)["key"] for line in lines[-2:]]
    (out / "per_example.jsonl").write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:20])  # killed mid-line
    (out / "metrics.json").unlink()
    scored, real = [], engine._score_chunk
    monkeypatch.setattr(
        engine, "_score_chunk", lambda chunk, *a: scored.extend(e.key for e in chunk) or real(chunk, *a)
    )
    assert main([*command, "--out", str(out)]) == 0  # one process now
    assert sorted(scored) == sorted(missing)
    assert_same_rows(rows(out), rows(two_processes))
    assert (out / "metrics.json").is_file()


def test_the_last_process_to_finish_writes_the_metrics_even_one_without_examples(command, tmp_path, monkeypatch):
    out = str(tmp_path / "eval")
    for rank in (0, 2, 1):  # 3 processes, 2 images: process 2 has none
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        assert main([*command, "--out", out]) == 0
        assert (tmp_path / "eval" / "metrics.json").is_file() == (rank == 1)
    (pair,) = json.loads((tmp_path / "eval" / "metrics.json").read_text())["pairs"]
    assert pair["examples"] == 5


def test_processes_starting_together_all_claim_one_new_folder(tmp_path):
    record, errors = {"model": "abc", "seed": 0}, []
    for attempt in range(5):  # a race lost once in a few tries without the lock
        out = tmp_path / f"eval-{attempt}"

        def claim(out=out) -> None:
            try:
                engine.claim_folder(out, record)
            except Exception as exc:  # collected: the test fails below naming it
                errors.append(exc)

        threads = [threading.Thread(target=claim) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert json.loads((out / "eval.json").read_text()) == record
    assert errors == []


def test_a_rank_outside_the_world_is_refused(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([*command, "--out", str(tmp_path / "eval")]) == 2
    assert "rank 2 is outside 0..1" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
