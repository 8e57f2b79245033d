"""PaperLayoutWriter with several writers and failures: atomic pairs, resumable, safe for several processes.

(Its layout and basic behaviour are specified in test_toy_world.py.)
"""

from __future__ import annotations

import errno
import json
import multiprocessing

import numpy as np
import pytest
from PIL import Image

from ip2p.datasets.paper import PaperLayoutWriter
from ip2p.datasets.reader import open_dataset
from ip2p.errors import IP2PError

PROMPTS = 6
SEEDS = 8


def _image(value: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (value % 256, 0, 0))


def _prompt(index: int, who: str = "") -> dict:
    return {"caption": f"photo {index}", "edit": f"edit {index}{who}", "output": f"edited {index}"}


def _listed(root) -> set[tuple[str, int]]:
    return {(folder, seed) for folder, seeds in json.loads((root / "seeds.json").read_text()) for seed in seeds}


def _visible_files(root) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


# ------------------------------------------------------------------------------------ failures


def _fail_on_the_edited_image(monkeypatch):
    real_save = Image.Image.save

    def save(self, fp, *args, **kwargs):
        if str(fp).split("/")[-1].startswith(".3_1.png"):  # the temporary of seed 3's edited image
            with open(fp, "wb") as handle:
                handle.write(b"\x89PNG half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    return real_save


def test_a_full_disk_mid_pair_leaves_it_unfinished_and_a_rerun_completes(tmp_path, monkeypatch):
    writer = PaperLayoutWriter(tmp_path)
    writer.add(0, _prompt(0), 2, _image(2), _image(20))
    real_save = _fail_on_the_edited_image(monkeypatch)
    with pytest.raises(IP2PError, match="the disk is full.*Free disk space.*run again"):
        writer.add(0, _prompt(0), 3, _image(3), _image(30))
    assert not writer.has(0, 3) and "3_1.png" not in _visible_files(tmp_path), "no half-written image is visible"
    assert not [p for p in tmp_path.rglob(".*.tmp")], "no temporary file is left"
    assert writer.finish() == [["0000000", [2]]]

    monkeypatch.setattr(Image.Image, "save", real_save)
    for seed in (2, 3):  # the rerun: what is finished is skipped, the rest written
        if not writer.has(0, seed):
            writer.add(0, _prompt(0), seed, _image(seed), _image(seed * 10))
    assert writer.finish() == [["0000000", [2, 3]]]
    assert np.asarray(open_dataset(tmp_path)[1].edited_image)[0, 0, 0] == 30


def test_a_pair_being_replaced_is_unfinished_until_its_new_files_are_written(tmp_path, monkeypatch):
    writer = PaperLayoutWriter(tmp_path)
    writer.add(0, _prompt(0), 3, _image(3), _image(30), metadata={"cfg_scale": 7.5})
    _fail_on_the_edited_image(monkeypatch)
    with pytest.raises(IP2PError):
        writer.add(0, _prompt(0), 3, _image(4), _image(40), metadata={"cfg_scale": 9.0})
    assert not writer.has(0, 3), "a new input image beside the old edited one must not count as a pair"
    assert writer.finish() == []


def test_finish_lists_what_every_writer_finished_on_disk(tmp_path):
    first, second = PaperLayoutWriter(tmp_path), PaperLayoutWriter(tmp_path)
    first.add(0, _prompt(0), 1, _image(1), _image(2))
    second.add(1, _prompt(1), 5, _image(1), _image(2))
    second.add(0, _prompt(0), 2, _image(1), _image(2))  # another writer may add seeds to the same prompt
    assert first.finish() == [["0000000", [1, 2]], ["0000001", [5]]]
    (tmp_path / "0000001" / "5_1.png").unlink()  # a pair that lost a file is no longer listed
    assert second.finish() == [["0000000", [1, 2]]]


def test_lock_files_are_hidden_and_the_reader_ignores_them(tmp_path):
    writer = PaperLayoutWriter(tmp_path)
    writer.add(0, _prompt(0), 1, _image(1), _image(2))
    writer.finish()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["0000000", "seeds.json"]
    assert len(open_dataset(tmp_path)) == 1


# ------------------------------------------------------------------------------------ several processes


def _add_seeds(root: str, part: int, barrier) -> None:
    """Every prompt, this process's seeds (even or odd), started together with the other process."""
    writer = PaperLayoutWriter(root)
    barrier.wait()
    for seed in range(part, SEEDS * 2, 2):
        for index in range(PROMPTS):
            writer.add(index, _prompt(index), seed, _image(seed), _image(index), metadata={"part": part})
    writer.finish()


def test_two_processes_adding_seeds_to_the_same_prompts_lose_no_pair(tmp_path):
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(2)
        with context.Pool(2) as pool:
            pool.starmap(_add_seeds, [(str(tmp_path), part, barrier) for part in (0, 1)])
    expected = {(f"{i:07d}", seed) for i in range(PROMPTS) for seed in range(SEEDS * 2)}
    assert _listed(tmp_path) == expected, "the last finish() lists every pair of both processes"
    for index in range(PROMPTS):
        lines = (tmp_path / f"{index:07d}" / "metadata.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["seed"] for line in lines) == list(range(SEEDS * 2)), "no line was lost"


def _claim_prompts(root: str, who: str, barrier) -> list[int]:
    """Try to write this process's own prompt at every index; return the indices it got."""
    writer = PaperLayoutWriter(root)
    barrier.wait()
    won = []
    for index in range(PROMPTS * 3):
        try:
            writer.add(index, _prompt(index, who), 1, _image(1), _image(ord(who)))
        except IP2PError:
            continue
        won.append(index)
    return won


def test_two_processes_racing_for_a_prompt_index_never_mix_their_prompts(tmp_path):
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(2)
        with context.Pool(2) as pool:
            won_a, won_b = pool.starmap(_claim_prompts, [(str(tmp_path), who, barrier) for who in "ab"])
    assert sorted(won_a + won_b) == list(range(PROMPTS * 3)), "every index has exactly one owner"
    dataset = open_dataset(tmp_path)
    for example in (dataset[i] for i in range(len(dataset))):
        owner = example.instruction[-1]
        assert example.edited_image.getpixel((0, 0))[0] == ord(owner), "the pair is its prompt's writer's"
