"""Settings for every suite (derived files go to a per-run cache, never the user's), and the trainer's fixtures,
shared by the trainer's suite and the DeepSpeed suite: a small on-disk dataset in the paper's layout and
tiny-model configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image


def pytest_configure(config) -> None:
    os.environ.setdefault("IP2P_CACHE_DIR", tempfile.mkdtemp(prefix="ip2p-test-cache-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub from any test
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


RESOLUTION = 16  # tiny model: 16 px images -> 8 px latents -> 4 px at the UNet's bottom


def write_paper_dataset(root, pairs: int = 4, seed: int = 0):
    """``pairs`` random 20x18 image pairs in the paper's layout (one prompt folder each)."""
    rng = np.random.default_rng(seed)
    for i in range(pairs):
        folder = root / f"{i:07d}"
        folder.mkdir(parents=True)
        prompt = {"input": f"a picture {i}", "edit": f"make it color {i}", "output": f"a colored picture {i}"}
        (folder / "prompt.json").write_text(json.dumps(prompt), encoding="utf-8")
        for side in (0, 1):
            pixels = rng.integers(0, 256, (18, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{100 + i}_{side}.png")
    return root


@pytest.fixture(scope="session")
def paper_dataset(tmp_path_factory):
    return write_paper_dataset(tmp_path_factory.mktemp("ip2p-data") / "data")


@pytest.fixture(scope="session")
def tiny_overrides():
    """``tiny_overrides(data, output_dir, key=value, ...)`` -> the override list for a tiny run."""
    return _tiny_overrides


def _tiny_overrides(data, output_dir, **extra) -> list[str]:
    """Overrides of the toy config for a seconds-long run on the tiny random model."""
    values = {
        "model.base": "config:tiny",
        "data.path": str(data),
        "data.resolution": RESOLUTION,
        "batch_size": 2,
        "max_steps": 4,
        "save_every": 2,
        "seed": 0,
        "output_dir": str(output_dir),
        "checkpoints.total_limit": 3,
        "ema.enabled": True,
        "mixed_precision": "no",
        # toy.yaml tunes these for the toy world; the tiny runs keep the general defaults
        "data.cache": False,
        "data.flip": 0.5,
        "optim.lr": 1e-4,
        "optim.warmup_steps": 0,
        "ema.decay": 0.999,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="session")
def assert_same_trained_unet():
    """``assert_same_trained_unet(a, b, tolerance)``: two saved UNets (safetensors files) hold the same
    weights within ``tolerance`` (absolute), and training moved them more than 100x that from the tiny
    model's start, so the comparison is not vacuous."""
    return _assert_same_trained_unet


def _assert_same_trained_unet(a, b, tolerance: float) -> None:
    from ip2p_train.model import load_base
    from safetensors.torch import load_file

    single, double = load_file(a), load_file(b)
    assert single.keys() == double.keys()
    worst = max(float((single[k] - double[k]).abs().max()) for k in single)
    assert worst <= tolerance
    start = load_base("config:tiny", seed=0).unet.state_dict()
    moved = max(float((single[k] - start[k]).abs().max()) for k in single)
    assert moved > 100 * tolerance  # the comparison is not vacuous: training changed the weights


@pytest.fixture(scope="session")
def launch_two_processes():
    """``launch_two_processes(config, program, root, name, use_cpu=..., timeout=..., mixed_precision="no")``: run
    ``accelerate launch --config_file CONFIG --num_processes 2 … PROGRAM`` in ``root`` and return its output."""
    return _launch_two_processes


def _launch_two_processes(
    config, program: list[str], root, name: str, *, use_cpu: bool, timeout: float, mixed_precision: str = "no"
) -> str:
    """``use_cpu``: set ACCELERATE_USE_CPU=1 (accelerate's CPU process group); else it is removed (DeepSpeed, which it
    would turn off). The log goes to a file, not a pipe, and the whole process group is killed on a timeout."""
    env = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"}
    env.update(HF_HOME=str(root / "hf"), HF_HUB_OFFLINE="1")  # no accelerate default config of this machine's user
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "2",
              "--mixed_precision", mixed_precision, "--main_process_port", "0", *program]  # fmt: skip
    log = root / f"{name}.log"
    with open(log, "w", encoding="utf-8") as sink:
        process = subprocess.Popen(launch, env=env, cwd=root, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        try:
            process.wait(timeout=timeout)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    output = log.read_text(encoding="utf-8", errors="replace")
    assert process.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="session")
def stopped_resumed_and_one_process():
    """``stopped_resumed_and_one_process(launch, argv_for, root, batch)`` -> ``(one, sharded, logs)``: the scale-out
    suites' three runs. ``launch(argv, name)`` starts two processes; ``argv_for(out, batch_size)`` is a run's
    trainer arguments. Two processes at ``batch`` train into ``root/sharded``, stopped at step 2 and resumed from
    that checkpoint; one process at twice the batch trains into ``root/one``: the same global batch."""
    return _stopped_resumed_and_one_process


def _stopped_resumed_and_one_process(launch, argv_for, root, batch: int):
    from ip2p.cli.main import main

    sharded, one = root / "sharded", root / "one"
    first = launch([*argv_for(sharded, batch), "max_steps=2"], "first")
    resumed = launch([*argv_for(sharded, batch), "--resume", "latest"], "resumed")
    assert main(["train", *argv_for(one, 2 * batch), "-q"]) == 0
    return one, sharded, first + resumed


@pytest.fixture(scope="session")
def assert_same_losses():
    """``assert_same_losses(one, sharded, steps, rel)``: the two run folders logged every step 1..``steps``, with
    losses equal within ``rel`` (relative)."""
    return _assert_same_losses


def _assert_same_losses(one, sharded, steps: int, rel: float) -> None:
    from ip2p_train import checkpoints as ckpt

    single, double = ckpt.read_metrics(one), ckpt.read_metrics(sharded)
    assert [m["step"] for m in double] == list(range(1, steps + 1))
    for a, b in zip(single, double, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=rel), a["step"]
