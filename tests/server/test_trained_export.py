"""What ``ip2p train`` exports loads in ComfyUI's own checkpoint loader as an InstructPix2Pix model.

The trainer starts from a random full-size SD 1.5 base (4 input channels, an original-layout single
file in float16 as the released v1.5 files are), widens it to 8 channels and trains 2 optimizer steps
on 8 toy pairs at 64 px, batch 1, gradient checkpointing on, EMA off (the EMA would add a 3.4 GB copy).
The run peaks at about 16 GiB: the 860 M-parameter UNet's float32 weights, gradients and AdamW's two
moments, then the export's copy of the UNet. If the session's server already runs, it is asked to drop
its models first. The run's ``export/model.safetensors`` goes into the server's models/checkpoints;
ComfyUI's native InstructPix2Pix graph (CheckpointLoaderSimple → CLIPTextEncode ×2 →
InstructPixToPixConditioning → KSampler → VAEDecode → SaveImage) and our loader's workflow must both
edit with it.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from ip2p import sizing

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BASIC_WORKFLOW = REPO_ROOT / "workflows" / "ip2p_basic_edit.api.json"
TRAINED_NAME = "ip2p_trained_from_random_sd15.safetensors"
SERVER_LOG = "server.log"  # the session server's log in its base directory (conftest.ComfyServer.log_path)

TRAIN_STEPS = 2
TRAIN_RESOLUTION = 64
TOY_PAIRS = 8
TEST_STEPS = 2
TEST_MAX_SIDE = 128
# What ComfyUI logs when it loads a model for sampling: the class of the model it detected. An SD 1.5
# file detected as InstructPix2Pix (8 input channels) becomes comfy.model_base.SD15_instructpix2pix.
DETECTED_AS_IP2P = "Requested to load SD15_instructpix2pix"
SERVER_RSS_AFTER_FREE = 2 * 1024**3  # bytes; an idle server is ≈ 0.4 GB
FREE_WAIT_S = 60

# The `ip2p` command's own entry point, run in a child process (so its GBs are given back afterwards).
IP2P = "import sys; from ip2p.cli.main import main; sys.exit(main())"

BUILD_BASE = """
import sys, torch
from ip2p.headless.export import save_single_file
from ip2p.headless.random_model import build_random_model
base = build_random_model("sd15", in_channels=4, seed=1, dtype=torch.float16)
save_single_file(base, sys.argv[1], dtype=torch.float16)
"""


@dataclass
class TrainedCheckpoint:
    name: str  # as models/checkpoints lists it
    metrics: list[dict]
    train_seconds: float
    train_peak_rss: int  # bytes, the training process's ru_maxrss


def _child_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _run_child(args: list[str], log: Path) -> tuple[int, float, int]:
    """Run a child process with its output in ``log``: (exit code, seconds, peak RSS in bytes)."""
    start = time.perf_counter()
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, *args], cwd=REPO_ROOT, env=_child_env(), stdout=handle, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, not the largest child's so far
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.perf_counter() - start, usage.ru_maxrss * 1024  # ru_maxrss: KiB on Linux


def _check_child(what: str, code: int, log: Path) -> None:
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{what} failed with exit code {code}; the end of {log}:\n{tail}")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0  # pragma: no cover - Linux always reports VmRSS


def _free_server_memory(request: pytest.FixtureRequest, base_dir: Path) -> None:
    """Before a ≈ 16 GiB training run: if the session's server already runs, have it drop its models.

    Nothing happens when the server has not started yet (then it starts after the training).
    """
    if not (base_dir / SERVER_LOG).is_file():
        return
    server = request.getfixturevalue("server")  # already started: the session's instance
    response = server.request("POST", "/free", {"unload_models": True, "free_memory": True})
    assert response.status == 200, f"POST /free answered {response.status}: {response.body}"
    deadline = time.monotonic() + FREE_WAIT_S
    while _rss(server.process.pid) > SERVER_RSS_AFTER_FREE and time.monotonic() < deadline:
        time.sleep(0.5)
    logger.info("ComfyUI server RSS before training: %.2f GiB", _rss(server.process.pid) / 1024**3)


@pytest.fixture(scope="session")
def trained_checkpoint(
    request: pytest.FixtureRequest, base_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> TrainedCheckpoint:
    """``ip2p train sd15`` for 2 steps from a random SD 1.5 base; its export in the server's models/checkpoints.

    Request it before ``server``: then the training runs before the server holds any model.
    """
    _free_server_memory(request, base_dir)
    work = tmp_path_factory.mktemp("trained-export")
    log = work / "children.log"
    base, data, run = work / "base_sd15_4ch.safetensors", work / "toy", work / "run"

    code, _, _ = _run_child(["-c", BUILD_BASE, str(base)], log)
    _check_child("Building the random SD 1.5 base", code, log)
    toy = ["dataset", "toy", "--out", str(data), "--count", str(TOY_PAIRS), "--seed", "1", "--size", "64", "-q"]
    code, _, _ = _run_child(["-c", IP2P, *toy], log)
    _check_child("`ip2p dataset toy`", code, log)
    overrides = {
        "model.base": base,
        "data.path": data,
        "data.resolution": TRAIN_RESOLUTION,
        "output_dir": run,
        "max_steps": TRAIN_STEPS,
        "save_every": TRAIN_STEPS,
        "batch_size": 1,
        "gradient_accumulation_steps": 1,
        "mixed_precision": "no",
        "gradient_checkpointing": "true",
        "ema.enabled": "false",  # the EMA copy would add 3.4 GB; the export path is the same either way
        "checkpoints.total_limit": 1,
    }
    code, seconds, peak = _run_child(["-c", IP2P, "train", "sd15", *(f"{k}={v}" for k, v in overrides.items())], log)
    _check_child("`ip2p train sd15`", code, log)
    logger.info("ip2p train sd15: %.1f s, peak RSS %.2f GiB", seconds, peak / 1024**3)
    (work / "train_usage.json").write_text(json.dumps({"seconds": seconds, "peak_rss_bytes": peak}) + "\n")

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    exported = run / "export" / "model.safetensors"
    exported.replace(base_dir / "models" / "checkpoints" / TRAINED_NAME)  # removed with the other models
    # The rest is ≈ 15 GB (the base, the accelerate checkpoint with AdamW's state, the diffusers export).
    base.unlink()
    shutil.rmtree(run / "checkpoints")
    shutil.rmtree(run / "export")
    return TrainedCheckpoint(TRAINED_NAME, metrics, seconds, peak)


# --------------------------------------------------------------------------------------------
# Helpers (the same checks as test_workflows.py)


def assert_succeeded(entry: dict) -> None:
    errors = [data for event, data in entry["status"].get("messages", []) if event == "execution_error"]
    detail = "" if not errors else f"{errors[0]['node_type']}: {errors[0]['exception_message']}"
    assert entry["status"]["status_str"] == "success", f"the workflow failed: {detail}"


def saved_image(server, entry: dict, node_id: str) -> Image.Image:
    (listed,) = entry["outputs"][node_id]["images"]
    with Image.open(server.output_path(listed)) as image:
        image.load()
        return image


def is_flat(image: Image.Image) -> bool:
    return all(low == high for low, high in image.getextrema())


def native_graph(checkpoint: str, image: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "make the circle red"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "LoadImage", "inputs": {"image": image}},
        "5": {
            "class_type": "InstructPixToPixConditioning",
            "inputs": {"positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "pixels": ["4", 0]},
        },
        "6": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["5", 0],
                "negative": ["5", 1],
                "latent_image": ["5", 2],
                "seed": 0,
                "steps": TEST_STEPS,
                "cfg": 7.5,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "trained/native"}},
    }


@pytest.fixture(scope="module")
def native_run(trained_checkpoint: TrainedCheckpoint, server, input_image) -> tuple[dict, str]:
    """The native graph run once on the trained export: (history entry, the server's log meanwhile)."""
    offset = server.log_path.stat().st_size
    entry = server.run(native_graph(trained_checkpoint.name, input_image[0]))
    with server.log_path.open("rb") as log:
        log.seek(offset)
        return entry, log.read().decode(errors="replace")


# --------------------------------------------------------------------------------------------
# The tests


def test_the_trainer_ran_its_steps_with_finite_losses(trained_checkpoint: TrainedCheckpoint) -> None:
    assert [m["step"] for m in trained_checkpoint.metrics] == list(range(1, TRAIN_STEPS + 1))
    assert all(0 < m["loss"] < float("inf") for m in trained_checkpoint.metrics)


def test_comfyui_detects_the_trained_export_as_instructpix2pix(native_run: tuple[dict, str]) -> None:
    entry, log = native_run
    assert_succeeded(entry)
    assert DETECTED_AS_IP2P in log, f"ComfyUI did not load the export as SD15_instructpix2pix; its log:\n{log}"


def test_comfyuis_native_ip2p_graph_edits_with_the_trained_export(
    native_run: tuple[dict, str], server, input_image
) -> None:
    entry, _ = native_run
    assert_succeeded(entry)
    image = saved_image(server, entry, "8")
    assert image.size == input_image[1]  # the native nodes edit at the input size
    assert not is_flat(image)


def test_our_loader_edits_with_the_trained_export(trained_checkpoint: TrainedCheckpoint, server, input_image) -> None:
    prompt = copy.deepcopy(json.loads(BASIC_WORKFLOW.read_text(encoding="utf-8")))
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "IP2PCheckpointLoader":
            inputs["ckpt_name"] = trained_checkpoint.name
        elif node["class_type"] == "LoadImage":
            inputs["image"] = input_image[0]
        elif node["class_type"] == "IP2PKSampler":
            inputs.update(steps=TEST_STEPS, resize="paper", max_side=TEST_MAX_SIDE)
    entry = server.run(prompt)
    assert_succeeded(entry)
    (save_id,) = [node_id for node_id, node in prompt.items() if node["class_type"] == "SaveImage"]
    image = saved_image(server, entry, save_id)
    assert image.size == sizing.working_size(*input_image[1], "paper", TEST_MAX_SIDE)
    assert not is_flat(image)
