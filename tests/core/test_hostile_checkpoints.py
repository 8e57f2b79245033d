"""Hostile and broken checkpoint files, and where ``convert`` may write (torch only, tiny files)."""

from __future__ import annotations

import collections
import errno
import io
import os
import pickle
import signal
import struct
import tempfile
import zipfile

import pytest
import torch

from ip2p.errors import IP2PError
from ip2p.formats import atomic, checkpoint
from ip2p.formats.atomic import Terminated, atomic_dir, atomic_file, interrupts_unwind
from ip2p.formats.checkpoint import convert_ckpt_to_safetensors, load_single_file

ADVICE = ("weights_only", "safe_globals", "add_safe_globals")


def refusal(path) -> str:
    with pytest.raises(IP2PError) as info:
        load_single_file(path)
    message = str(info.value)
    assert path.name in message
    assert not any(word in message for word in ADVICE), message
    return message


class _Rebuilt:
    """Pickles as a tensor with the storage, offset, size and strides given (what a crafted file can declare)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce_ex__(self, protocol):
        storage, offset, size, stride = self.args
        return (torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False, collections.OrderedDict()))


def typed(tensor: torch.Tensor):
    return torch.storage.TypedStorage(wrap_storage=tensor.untyped_storage(), dtype=tensor.dtype, _internal=True)


class _WritesAFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ------------------------------------------------------------------ bounded resources


def test_a_stride_zero_tensor_of_a_billion_elements_is_refused(tmp_path):
    path = tmp_path / "expand.ckpt"
    torch.save({"w": torch.zeros(1).expand(10**9)}, path)
    assert path.stat().st_size < 4096
    assert "repeats stored values" in refusal(path)


def test_an_overlapping_strided_view_is_refused(tmp_path):
    path = tmp_path / "overlap.ckpt"
    torch.save({"w": torch.as_strided(torch.arange(10.0), (4, 4), (1, 1))}, path)
    assert "repeats stored values" in refusal(path)


def test_a_transposed_view_is_accepted(tmp_path):
    base = torch.randn(3, 5)
    torch.save({"w": base.t()}, tmp_path / "t.ckpt")
    assert torch.equal(load_single_file(tmp_path / "t.ckpt")["w"], base.t())


@pytest.mark.parametrize(("offset", "size", "stride"), [(0, (1000,), (1,)), (9, (2,), (1,)), (5, (3,), (-1,))])
def test_a_tensor_reaching_outside_its_storage_is_refused(tmp_path, offset, size, stride):
    path = tmp_path / "outside.ckpt"
    torch.save({"w": _Rebuilt(typed(torch.arange(10.0)), offset, size, stride)}, path)
    refusal(path)


def test_two_keys_viewing_the_same_stored_data_are_refused(tmp_path):
    base = torch.randn(64)
    torch.save({"a": base, "b": base, "c": base[:8]}, tmp_path / "tied.ckpt")
    assert "overlapping views of one stored buffer" in refusal(tmp_path / "tied.ckpt")


def test_convert_writes_no_more_tensor_bytes_than_the_file_stores(tmp_path):
    base = torch.arange(64.0)
    views = {"a": base[:16], "b": base[16:32].view(4, 4).t(), "c": base[32:]}
    torch.save(views, tmp_path / "views.ckpt")
    out = convert_ckpt_to_safetensors(tmp_path / "views.ckpt")
    data = out.read_bytes()
    header = 8 + struct.unpack("<Q", data[:8])[0]
    assert len(data) - header == base.numel() * base.element_size()
    loaded = load_single_file(out)
    assert all(torch.equal(loaded[k], v) for k, v in views.items())


def test_convert_of_a_stride_zero_checkpoint_writes_nothing(tmp_path):
    torch.save({"w": torch.zeros(1).expand(10**9)}, tmp_path / "expand.ckpt")
    with pytest.raises(IP2PError, match="repeats stored values"):
        convert_ckpt_to_safetensors(tmp_path / "expand.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expand.ckpt"]


# ------------------------------------------------------------------ damaged pickles


def good_zip() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buffer)
    return buffer.getvalue()


def good_legacy() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def with_data_pkl(change) -> bytes:
    """The good zip checkpoint with its data.pkl replaced by ``change(data.pkl)``."""
    source = zipfile.ZipFile(io.BytesIO(good_zip()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info in source.infolist():
            data = source.read(info.filename)
            archive.writestr(info, change(data) if info.filename.endswith("data.pkl") else data)
    return out.getvalue()


def flipped_in_data_pkl() -> bytes:
    """One byte of data.pkl changed in place: the archive is intact but its CRC no longer matches."""
    data = bytearray(good_zip())
    start = data.index(b"\x80\x02")  # data.pkl is stored uncompressed: its pickle begins here
    data[start + 20] ^= 0x20
    return bytes(data)


DAMAGED = {
    "garbage": lambda: b"this is not a checkpoint at all, just text " * 4,
    "empty": lambda: b"",
    "truncated-zip": lambda: good_zip()[:300],
    "zip-missing-its-end": lambda: good_zip()[:-10],
    "half-a-data-pkl": lambda: with_data_pkl(lambda d: d[: len(d) // 2]),
    "bad-opcodes": lambda: with_data_pkl(lambda d: b"\x80\x02\xfa\xfb."),
    "random-data-pkl": lambda: with_data_pkl(lambda d: bytes(range(200, 256)) * 3),
    "flipped-byte-in-data-pkl": flipped_in_data_pkl,
    "truncated-legacy": lambda: good_legacy()[:30],
    "legacy-bad-opcode": lambda: b"\x80\x02\xfa\xfb.",
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_pickle_is_reported_as_corrupt_not_as_code(tmp_path, name):
    path = tmp_path / f"{name}.ckpt"
    path.write_bytes(DAMAGED[name]())
    message = refusal(path)
    assert "truncated or corrupt" in message
    assert "run code" not in message


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_real_forbidden_global_is_refused_as_code_without_torchs_advice(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"w": torch.ones(2), "x": _WritesAFile(marker)}, path, _use_new_zipfile_serialization=not legacy)
    message = refusal(path)
    assert "would run code" in message
    assert "io.open" in message  # names the global
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_plain_python_pickle_is_not_taken_for_a_checkpoint(tmp_path):
    path = tmp_path / "plain.ckpt"
    path.write_bytes(pickle.dumps({"w": [1, 2, 3]}, protocol=4))
    assert "not written by torch.save" in refusal(path)


# ------------------------------------------------------------------ where convert writes


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.arange(4.0)}}, path)
    return path


@pytest.fixture
def never_read(monkeypatch):
    """Fail the test if the checkpoint is read: output problems must be found first."""
    monkeypatch.setattr(checkpoint, "load_single_file", lambda path: pytest.fail("read the checkpoint first"))


def test_convert_refuses_to_replace_an_existing_output(ckpt):
    out = ckpt.with_suffix(".safetensors")
    out.write_bytes(b"keep me")
    with pytest.raises(IP2PError, match="--overwrite"):
        convert_ckpt_to_safetensors(ckpt)
    assert out.read_bytes() == b"keep me"


def test_convert_replaces_an_existing_output_with_overwrite(ckpt):
    out = ckpt.with_suffix(".safetensors")
    out.write_bytes(b"old")
    convert_ckpt_to_safetensors(ckpt, overwrite=True)
    assert torch.equal(load_single_file(out)["w"], torch.arange(4.0))


def test_convert_refuses_a_folder_as_output_even_with_overwrite(ckpt, never_read):
    (ckpt.parent / "out.safetensors").mkdir()
    with pytest.raises(IP2PError, match="is a folder"):
        convert_ckpt_to_safetensors(ckpt, ckpt.parent / "out.safetensors", overwrite=True)


def test_convert_refuses_to_write_over_its_own_input(ckpt, never_read):
    link = ckpt.parent / "same.safetensors"
    link.symlink_to(ckpt)
    with pytest.raises(IP2PError, match="is the checkpoint itself"):
        convert_ckpt_to_safetensors(ckpt, link, overwrite=True)
    assert ckpt.is_file() and link.is_symlink()


def test_convert_names_what_it_accepts_for_a_missing_input(tmp_path):
    with pytest.raises(IP2PError, match=r"does not exist.*\.ckpt, \.pt, \.pth"):
        convert_ckpt_to_safetensors(tmp_path / "nothing.ckpt")


def test_convert_names_what_it_writes_for_a_wrong_output_suffix(ckpt, never_read):
    with pytest.raises(IP2PError, match=r"convert writes \.safetensors"):
        convert_ckpt_to_safetensors(ckpt, ckpt.parent / "out.bin")


def test_an_output_under_a_file_is_refused_before_reading(ckpt, never_read):
    out = ckpt.parent / "model.ckpt" / "sub" / "out.safetensors"
    with pytest.raises(IP2PError, match="Cannot write") as info:
        convert_ckpt_to_safetensors(ckpt, out)
    assert str(out) in str(info.value)
    assert ".tmp" not in str(info.value)


def test_a_missing_output_folder_is_created(ckpt):
    out = ckpt.parent / "new" / "deeper" / "out.safetensors"
    convert_ckpt_to_safetensors(ckpt, out)
    assert out.is_file()


def test_an_unwritable_output_folder_is_named_not_the_temp_file(ckpt, never_read, monkeypatch):
    def refused(prefix="", suffix="", dir=None):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, f"{prefix}abcd{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    out = ckpt.parent / "out.safetensors"
    with pytest.raises(IP2PError, match="Permission denied") as info:
        convert_ckpt_to_safetensors(ckpt, out)
    assert str(out) in str(info.value)
    assert ".tmp" not in str(info.value)


def test_a_failed_write_names_the_output_and_leaves_nothing(ckpt, monkeypatch):
    import safetensors.torch

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    out = ckpt.parent / "out.safetensors"
    with pytest.raises(IP2PError, match="No space left") as info:
        convert_ckpt_to_safetensors(ckpt, out)
    assert str(out) in str(info.value) and ".tmp" not in str(info.value)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.ckpt"]


# ------------------------------------------------------------------ interruptions


def test_an_interrupted_file_write_leaves_no_temp_file(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_file(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_terminated_folder_write_leaves_no_temp_folder_and_keeps_the_old_one(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.txt").write_text("old")
    with pytest.raises(Terminated), atomic_dir(tmp_path / "model") as tmp:
        (tmp / "new.txt").write_text("new")
        raise Terminated
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["old.txt"]


def test_sigterm_during_a_folder_swap_waits_until_the_swap_is_done(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.txt").write_text("old")
    real_replace = os.replace
    sent = []

    def replace_after_a_signal(src, dst):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)  # lands between moving the old folder away and the new one in
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_after_a_signal)
    with pytest.raises(Terminated), interrupts_unwind(), atomic_dir(tmp_path / "model") as tmp:
        (tmp / "new.txt").write_text("new")
    assert sent
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["new.txt"]


def test_interrupts_unwind_restores_the_previous_handlers():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with interrupts_unwind():
        assert signal.getsignal(signal.SIGTERM) is not before[0]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
