"""SIGTERM and SIGINT while ``ip2p`` writes: every temporary file goes, finished outputs stay.

The subprocess tests run the real command line; a ``sitecustomize`` on the child's PYTHONPATH
makes safetensors' writer pause after writing (it writes straight to our temporary path), so the
signal lands while the temporary file is full-size on disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ip2p.cli import convert as convert_command
from ip2p.cli.main import main as ip2p_main

REPO = Path(__file__).resolve().parents[2]

SLOW_WRITER = """
import pathlib, signal, time
import safetensors.torch

# Started from a background shell (``pytest ... &``), this process inherits SIGINT ignored, which ip2p
# rightly leaves ignored (as nohup asks); the test needs the interactive default.
signal.signal(signal.SIGINT, signal.default_int_handler)

_save_file = safetensors.torch.save_file


def save_file(tensors, filename, metadata=None):
    _save_file(tensors, filename, metadata=metadata)
    pathlib.Path(__file__).with_name("writing").write_text(str(filename))
    for _ in range(1200):  # the signal ends this; short sleeps, because the kernel may hand the signal to
        time.sleep(0.1)  # another thread (torch's), and Python then acts on it at the main thread's next bytecode


safetensors.torch.save_file = save_file
"""


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"ip2p exited early ({proc.returncode}): {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the writer never started")
        time.sleep(0.05)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"])
def test_a_signal_during_convert_removes_the_temp_file_and_keeps_the_old_output(tmp_path, signum, code):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_WRITER)
    work = tmp_path / "work"
    work.mkdir()
    torch.save({"state_dict": {"w": torch.arange(16.0)}}, work / "model.ckpt")
    out = work / "model.safetensors"
    out.write_bytes(b"the finished output of an earlier run")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)])}
    command = [sys.executable, "-m", "ip2p.cli.main", "convert", "--ckpt", str(work / "model.ckpt"), "--overwrite"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    wait_for(hook / "writing", proc)
    temp = Path((hook / "writing").read_text())
    assert temp.parent == work and temp.exists()  # safetensors wrote into our temporary file
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert "interrupted; no partial output was written" in stderr.decode()
    assert "Traceback" not in stderr.decode()
    assert sorted(p.name for p in work.iterdir()) == ["model.ckpt", "model.safetensors"]
    assert out.read_bytes() == b"the finished output of an earlier run"


def test_sigterm_unwinds_any_command_with_exit_code_143(monkeypatch, tmp_path, capsys):
    """The handler is installed around every command (edit too), not by convert itself."""
    reached = []

    def handler(args):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(300):  # the signal ends this at once (short sleeps: it may reach another thread first)
            time.sleep(0.1)
        reached.append("after the signal")
        return 0

    monkeypatch.setattr(convert_command, "run", handler)
    before = signal.getsignal(signal.SIGTERM)
    assert ip2p_main(["convert", "--ckpt", str(tmp_path / "m.ckpt")]) == 143
    assert reached == []
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before
