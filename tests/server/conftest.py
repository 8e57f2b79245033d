"""A real ComfyUI server, started once per run, with this pack installed and a random SD 1.5 model.

The suite needs a ComfyUI checkout named by ``COMFYUI_PATH`` and the server's extra dependencies
from ``scripts/server_host.sh``; without them every test fails with a message saying what to do.
The server runs on loopback from a temporary base directory (models, input, output, user data,
database, byte-code caches all live there), so nothing is written into the checkout, and it is
stopped by its PID at the end.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "comfyui-ip2p"
DEFAULT_SERVER_SITE = REPO_ROOT / ".cache" / "comfy-server-site"
CHECKPOINT_NAME = "ip2p_random_sd15.safetensors"
BASE_CHECKPOINT_NAME = "base_random_sd15.safetensors"
CLIP_FOLDER_NAME = "tiny-clip"
PROMPTS_NAME = "ip2p_prompts.jsonl"
DIFFUSERS_FOLDER_NAME = "ip2p_random_sd15"
INPUT_IMAGE_NAME = "ip2p_input.png"
INPUT_IMAGE_SIZE = (160, 64)  # (width, height): not square, so a transposed size would show
STARTUP_TIMEOUT_S = 180
RUN_TIMEOUT_S = 900
STOP_TIMEOUT_S = 30
HISTORY_POLL_S = 0.5

SETUP_HELP = (
    "The server suite runs our workflows in a real ComfyUI server. Set COMFYUI_PATH to a ComfyUI checkout "
    "(e.g. `git clone https://github.com/Comfy-Org/ComfyUI`) and run `scripts/server_host.sh` once to install "
    "the server's extra dependencies; then run `scripts/test.sh server` (or `python -m pytest tests/server`)."
)


class ServerError(AssertionError):
    """The server did not start, answer or finish; the message carries the tail of its log."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_checkout_state(checkout: Path) -> str | None:
    """`git status` of the checkout, ignored files included; None when it is not a git work tree."""
    result = subprocess.run(
        ["git", "-C", str(checkout), "status", "--porcelain", "--ignored", "--untracked-files=all"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout if result.returncode == 0 else None


@dataclass
class Response:
    status: int
    body: dict


@dataclass
class ComfyServer:
    """A ComfyUI server process and a small client for its HTTP API."""

    checkout: Path
    base: Path
    site: Path
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base / "server.log"

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no server log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def command(self) -> list[str]:
        return [
            sys.executable,
            str(self.checkout / "main.py"),
            "--cpu",
            "--listen", "127.0.0.1",
            "--port", str(self.port),
            "--disable-auto-launch",
            "--disable-api-nodes",
            "--base-directory", str(self.base),
            "--user-directory", str(self.base / "user"),
            "--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}",
            "--front-end-root", str(self.base / "frontend"),
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.site), env.get("PYTHONPATH", "")) if p)
        env["PYTHONPYCACHEPREFIX"] = str(self.base / "pycache")  # no __pycache__ in the checkout or our repo
        env["PYTHONUNBUFFERED"] = "1"
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
        return env

    def start(self) -> None:
        self.port = self.port or _free_port()
        log = self.log_path.open("wb")
        try:
            self.process = subprocess.Popen(
                self.command(), cwd=self.base, env=self.environment(), stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()
        logger.info("ComfyUI server pid %d on %s", self.process.pid, self.url)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.ready():
                return
            try:
                code = self.process.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                continue
            raise ServerError(f"The ComfyUI server exited with code {code} while starting:\n{self.log_tail()}")
        self.stop()
        raise ServerError(f"The ComfyUI server did not answer /queue within {STARTUP_TIMEOUT_S} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/queue", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        """Terminate the server by PID; kill it if it has not exited after a grace period."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def request(self, method: str, path: str, payload: dict | None = None) -> Response:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                return Response(response.status, json.loads(response.read() or b"{}"))
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = {"raw": body.decode(errors="replace")}
            return Response(error.code, parsed)

    def get(self, path: str) -> dict:
        response = self.request("GET", path)
        if response.status != 200:
            raise ServerError(f"GET {path} answered {response.status}: {response.body}")
        return response.body

    def queue(self, prompt: dict) -> Response:
        return self.request("POST", "/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})

    def wait_for(self, prompt_id: str, timeout: float = RUN_TIMEOUT_S) -> dict:
        """The history entry of a queued prompt, once it has finished (success or error)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"The server died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(HISTORY_POLL_S)
        self.request("POST", "/interrupt", {})
        raise ServerError(f"Prompt {prompt_id} did not finish within {timeout} s:\n{self.log_tail()}")

    def run(self, prompt: dict) -> dict:
        """Queue ``prompt`` and return its finished history entry."""
        response = self.queue(prompt)
        if response.status != 200:
            raise ServerError(f"The server refused the prompt ({response.status}): {json.dumps(response.body)}")
        return self.wait_for(response.body["prompt_id"])

    def output_path(self, image: dict) -> Path:
        """Where an image listed in a history entry's outputs lies on disk."""
        folder = {"output": "output", "temp": "temp", "input": "input"}[image["type"]]
        return self.base / folder / image.get("subfolder", "") / image["filename"]


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    value = os.environ.get("COMFYUI_PATH")
    if not value:
        pytest.fail(f"COMFYUI_PATH is not set. {SETUP_HELP}", pytrace=False)
    path = Path(value).expanduser().resolve()
    if not (path / "main.py").is_file() or not (path / "comfy").is_dir():
        pytest.fail(
            f"COMFYUI_PATH={value} is not a ComfyUI checkout (no main.py and comfy/). {SETUP_HELP}", pytrace=False
        )
    return path


@pytest.fixture(scope="session")
def server_site() -> Path:
    site = Path(os.environ.get("IP2P_SERVER_SITE", DEFAULT_SERVER_SITE))
    if not (site / "sitecustomize.py").is_file() or not (site / "torchvision").is_dir():
        pytest.fail(f"The server's extra dependencies are missing from {site}. {SETUP_HELP}", pytrace=False)
    return site


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """ComfyUI's --base-directory: our pack linked into custom_nodes, the models, the input image."""
    base = tmp_path_factory.mktemp("comfy-base")
    for sub in (
        "custom_nodes",
        "user",
        "frontend",
        "input",
        "output",
        "models/checkpoints",
        "models/diffusers",
        "models/ip2p_clip",
    ):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    yield base
    # The models are GBs: drop them, keep the log and the outputs for a look after a failure.
    for model in (base / "models").rglob("*"):
        if model.is_file() and model.suffix in {".safetensors", ".bin", ".ckpt"}:
            model.unlink()


def _run_builder(code: str, *args: str) -> None:
    """Build models in a child process, so its GBs are given back before the server starts."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"Building the random test model failed:\n{result.stdout}\n{result.stderr}")


BUILD_SD15 = """
import sys, torch
from ip2p.headless.export import save_diffusers, save_single_file
from ip2p.headless.random_model import build_random_model
model = build_random_model("sd15", dtype=torch.float16)
save_single_file(model, sys.argv[1], dtype=torch.float16)
save_diffusers(model, sys.argv[2])
"""

BUILD_BASE_AND_CLIP = """
import sys, torch
from ip2p.headless.export import save_single_file
from ip2p.headless.random_model import build_random_model, save_random_clip
save_single_file(build_random_model("sd15", in_channels=4, dtype=torch.float16), sys.argv[1], dtype=torch.float16)
save_random_clip(sys.argv[2])
"""


@pytest.fixture(scope="session")
def models(base_dir: Path) -> dict[str, str]:
    """Model names as the loaders list them: the random SD 1.5 InstructPix2Pix model as a single file
    (≈ 2 GB fp16) and as a diffusers folder, a random SD 1.5 base (text-to-image) model as a single
    file, and a tiny random CLIP in the pack's CLIP folder (models/ip2p_clip)."""
    models_dir = base_dir / "models"
    _run_builder(
        BUILD_SD15,
        str(models_dir / "checkpoints" / CHECKPOINT_NAME),
        str(models_dir / "diffusers" / DIFFUSERS_FOLDER_NAME),
    )
    _run_builder(
        BUILD_BASE_AND_CLIP,
        str(models_dir / "checkpoints" / BASE_CHECKPOINT_NAME),
        str(models_dir / "ip2p_clip" / CLIP_FOLDER_NAME),
    )
    return {
        "ip2p": CHECKPOINT_NAME,
        "ip2p_diffusers": DIFFUSERS_FOLDER_NAME,
        "base": BASE_CHECKPOINT_NAME,
        "clip": CLIP_FOLDER_NAME,
    }


@pytest.fixture(scope="session")
def prompts_file(base_dir: Path) -> str:
    """Two prompt triples in the server's input folder (the paper's JSONL keys): the name the prompt source takes."""
    lines = [
        {"caption": "a photo of a cat on a sofa", "edit": "make it a dog", "output": "a photo of a dog on a sofa"},
        {"caption": "a lake below mountains", "edit": "make it winter", "output": "a snowy lake below mountains"},
    ]
    (base_dir / "input" / PROMPTS_NAME).write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return PROMPTS_NAME


@pytest.fixture(scope="session")
def input_image(base_dir: Path) -> tuple[str, tuple[int, int]]:
    """A generated non-square PNG in the server's input folder: (name, (width, height))."""
    from PIL import Image

    width, height = INPUT_IMAGE_SIZE
    image = Image.new("RGB", (width, height))
    image.putdata([((x * 255) // width, (y * 255) // height, 128) for y in range(height) for x in range(width)])
    image.save(base_dir / "input" / INPUT_IMAGE_NAME)
    return INPUT_IMAGE_NAME, (width, height)


@pytest.fixture(scope="session")
def checkout_before(comfyui_path: Path) -> str | None:
    """The checkout's state before the server first starts."""
    return read_checkout_state(comfyui_path)


@pytest.fixture(scope="session")
def checkout_state():
    """Reads a checkout's `git status` (ignored files included); None when it is not a git work tree."""
    return read_checkout_state


@pytest.fixture(scope="session")
def server(
    comfyui_path: Path, server_site: Path, base_dir: Path, models: dict[str, str], checkout_before: str | None
) -> Iterator[ComfyServer]:
    instance = ComfyServer(checkout=comfyui_path, base=base_dir, site=server_site)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def object_info(server: ComfyServer) -> dict:
    return server.get("/object_info")
