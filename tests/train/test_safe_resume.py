"""Resuming never runs code from a checkpoint: every file is read as tensors and plain data, or refused.

A checkpoint folder is someone's files (a shared run folder, a download): each of its files is
replaced in turn by a pickle whose loading would create a marker file, and ``ip2p train --resume``
must refuse it in one line naming the file, leave the run folder as it was, and create no marker.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import zipfile

import pytest
import torch
from ip2p_train import checkpoints as ckpt
from ip2p_train import safe_resume

from ip2p.cli.main import main
from ip2p.errors import IP2PError


class _Payload:
    """Unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plain_pickle(marker) -> bytes:
    return pickle.dumps(_Payload(marker))


def _torch_pickle(marker) -> bytes:
    buffer = io.BytesIO()
    torch.save({"state": _Payload(marker)}, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def good_run(paper_dataset, tiny_overrides, tmp_path_factory):
    """A 2-step run with its step-2 checkpoint (model, optimizer, RNG states, LR schedule, EMA)."""
    out = tmp_path_factory.mktemp("safe-resume") / "run"
    assert main(["train", "toy", *tiny_overrides(paper_dataset, out, max_steps=2), "-q"]) == 0
    return out


def _checkpoint_files(run) -> list[str]:
    return sorted(p.name for p in ckpt.step_dir(run, 2).iterdir())


def _snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_checkpoint_holds_the_files_the_payload_tests_cover(good_run):
    # custom_checkpoint_0/1: the LR schedule and the EMA, which accelerate unpickles with weights_only=False
    assert _checkpoint_files(good_run) == sorted(TORCH_FILES + OTHER_FILES)


TORCH_FILES = ["custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "optimizer.bin", "random_states_0.pkl"]
OTHER_FILES = ["complete", "config.yaml", "model.safetensors", "trainer_state.json"]


@pytest.mark.parametrize(
    ("victim", "make_payload"),
    [(name, _plain_pickle) for name in TORCH_FILES + OTHER_FILES] + [(name, _torch_pickle) for name in TORCH_FILES],
    ids=[f"{name}-plain-pickle" for name in TORCH_FILES + OTHER_FILES] + [f"{name}-torch-save" for name in TORCH_FILES],
)
def test_a_payload_in_any_checkpoint_file_is_refused_and_never_runs(
    good_run, paper_dataset, tiny_overrides, tmp_path, capsys, victim, make_payload
):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    marker = tmp_path / "marker"
    (ckpt.step_dir(run, 2) / victim).write_bytes(make_payload(marker))
    before = _snapshot(run)
    assert main(["train", "toy", *tiny_overrides(paper_dataset, run), "--resume", "latest", "-q"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    assert victim in errors[0]
    assert not marker.exists(), "the payload ran"
    assert _snapshot(run) == before


def test_the_untouched_checkpoint_passes_the_check(good_run):
    safe_resume.check_checkpoint(ckpt.step_dir(good_run, 2))


def test_every_torch_load_in_the_guarded_block_is_weights_only_even_when_asked_otherwise(tmp_path):
    """A file swapped after the check is still not run: accelerate asks for ``weights_only=False``."""
    path, marker = tmp_path / "custom_checkpoint_0.pkl", tmp_path / "marker"
    path.write_bytes(_torch_pickle(marker))
    with safe_resume.weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=False)
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # the block leaves the process as it found it


def test_the_rng_states_numpy_arrays_load_in_the_guarded_block(tmp_path):
    import numpy as np

    path = tmp_path / "random_states_0.pkl"
    torch.save({"numpy_random_seed": np.random.get_state(), "torch_manual_seed": torch.get_rng_state()}, path)
    with safe_resume.weights_only_loads():
        state = torch.load(path, weights_only=False)
    assert state["numpy_random_seed"][0] == "MT19937"


def test_distributed_checkpoint_metadata_is_unpickled_without_foreign_classes(tmp_path):
    from torch.distributed.checkpoint.metadata import Metadata, TensorProperties, TensorStorageMetadata

    good = tmp_path / "good" / ".metadata"
    good.parent.mkdir()
    tensor = TensorStorageMetadata(TensorProperties(dtype=torch.float32), torch.Size([2, 3]), [])
    good.write_bytes(pickle.dumps(Metadata(state_dict_metadata={"w": tensor})))
    safe_resume.check_checkpoint(good.parent)

    bad, marker = tmp_path / "bad" / ".metadata", tmp_path / "marker"
    bad.parent.mkdir()
    bad.write_bytes(_plain_pickle(marker))
    with pytest.raises(IP2PError, match=r"\.metadata is not a checkpoint file"):
        safe_resume.check_checkpoint(bad.parent)
    assert not marker.exists()


def test_a_payload_in_a_nested_file_is_found(tmp_path):
    """DeepSpeed and FSDP checkpoints keep their files in subfolders: those are read too."""
    nested, marker = tmp_path / "pytorch_model" / "mp_rank_00_model_states.pt", tmp_path / "marker"
    nested.parent.mkdir()
    nested.write_bytes(_torch_pickle(marker))
    with pytest.raises(IP2PError, match="mp_rank_00_model_states.pt"):
        safe_resume.check_checkpoint(tmp_path)
    assert not marker.exists()
    assert zipfile.is_zipfile(nested)  # a real torch.save file, not a legacy pickle
