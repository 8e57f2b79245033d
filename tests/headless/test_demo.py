"""The embedded default job (`ip2p demo`): plumbing end to end on a random-weight model."""

from __future__ import annotations

from PIL import Image

from ip2p.cli import main
from ip2p.cli.demo import DEMO_INSTRUCTION, DEMO_SIZE
from ip2p.images import read_metadata


def test_demo_builds_the_model_and_writes_an_edit_with_its_settings(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--steps", "2"]) == 0
    edited = tmp_path / "edited.png"
    assert Image.open(edited).size == (DEMO_SIZE, DEMO_SIZE)
    metadata = read_metadata(edited)
    assert metadata["instruction"] == DEMO_INSTRUCTION and metadata["steps"] == 2
    assert (tmp_path / "random-tiny-ip2p" / "model_index.json").is_file()


def test_demo_reuses_the_model_it_built(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--steps", "1"]) == 0
    stamp = (tmp_path / "random-tiny-ip2p" / "model_index.json").stat().st_mtime_ns
    assert main(["demo", "--out", str(tmp_path), "--steps", "1", "--seed", "1"]) == 0
    assert (tmp_path / "random-tiny-ip2p" / "model_index.json").stat().st_mtime_ns == stamp


def test_demo_quiet_passes_q_on_to_the_edit(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "1", "-q"]) == 0
    assert "ip2p edit" not in capsys.readouterr().err  # no step bar
    assert (tmp_path / "edited.png").is_file()
