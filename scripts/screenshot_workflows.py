"""Open every UI workflow in a real ComfyUI frontend, check it, and take the README's screenshots.

Not part of any test suite: it needs a ComfyUI checkout, a Python that can run its server *with the
frontend package* (``comfyui-frontend-package``, the version the checkout's requirements.txt pins),
Playwright for Python and a Chromium (Debian's ``chromium`` works; no browser download needed).
Keep that environment apart from the project's venv, e.g.::

    python3 -m venv ../tools/venv      # then ComfyUI's requirements, playwright: see CONTRIBUTING.md
    ../tools/venv/bin/python scripts/screenshot_workflows.py --comfyui ComfyUI --checkpoint ip2p.safetensors

For each ``workflows/*.json`` (not the ``.api.json`` twins) it checks, in the page:

- every node type is registered and no node is flagged with errors (a red node);
- ``app.graphToPrompt()`` (what the Run button posts) equals the ``.api.json`` twin;
- the saved view (``extra.ds``) shows every node whole: inside the canvas, below the top menu,
  clear of the minimap and the canvas buttons;

then writes ``docs/workflow-<name>.png`` (1600×1000 by default, quantised to keep it small). The
exit code is 1 when a check failed. The server runs on loopback from a temporary base directory
(nothing is written into the checkout) and is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

logger = logging.getLogger("screenshot_workflows")

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
PACK_DIR_NAME = "comfyui-ip2p"
STARTUP_TIMEOUT_S = 180
SETTLE_MS = 2500

# What the page reports about the loaded graph: node rectangles in screen pixels (title bar
# included), the canvas rectangle, the overlays drawn above the canvas, and the problems found.
INSPECT_JS = """
async () => {
  const app = window.app;
  const canvasEl = document.querySelector('#graph-canvas');
  const cr = canvasEl.getBoundingClientRect();
  const ds = app.canvas.ds;
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  const nodes = app.graph._nodes.map((n) => {
    const collapsed = n.flags && n.flags.collapsed;
    const w = collapsed ? (n._collapsed_width || 120) : n.size[0];
    const h = collapsed ? 0 : n.size[1];
    const x0 = cr.left + (n.pos[0] + ds.offset[0]) * ds.scale;
    const y0 = cr.top + (n.pos[1] - title + ds.offset[1]) * ds.scale;
    const min = n.computeSize ? n.computeSize() : [0, 0];
    return {
      id: n.id, type: n.type, title: n.title,
      registered: Boolean(LiteGraph.registered_node_types[n.type]),
      has_errors: Boolean(n.has_errors),
      pos: [n.pos[0], n.pos[1]], size: [n.size[0], n.size[1]], min_size: [min[0], min[1]],
      rect: [x0, y0, x0 + w * ds.scale, y0 + (h + title) * ds.scale],
    };
  });
  const overlays = [];
  for (const sel of ['.minimap-main-container', '.p-buttongroup-vertical', '.graph-canvas-menu']) {
    for (const e of document.querySelectorAll(sel)) {
      const r = e.getBoundingClientRect();
      if (r.width > 0 && r.height > 0) overlays.push({selector: sel, rect: [r.left, r.top, r.right, r.bottom]});
    }
  }
  const prompt = await app.graphToPrompt();
  return {
    canvas: [cr.left, cr.top, cr.right, cr.bottom],
    ds: {offset: [ds.offset[0], ds.offset[1]], scale: ds.scale},
    nodes, overlays, output: prompt.output,
  };
}
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/queue", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _example_image(path: Path) -> None:
    """A small synthetic landscape (sky, sun, hills) for the Load Image preview."""
    from PIL import Image, ImageDraw

    width, height = 512, 384
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / height
        draw.line([(0, y), (width, y)], fill=(int(90 + 80 * t), int(150 + 60 * t), int(230 - 20 * t)))
    draw.ellipse([360, 50, 430, 120], fill=(255, 236, 160))
    draw.polygon([(0, 270), (140, 200), (300, 260), (420, 210), (512, 250), (512, 384), (0, 384)], fill=(70, 120, 70))
    draw.rectangle([0, 320, width, height], fill=(60, 100, 60))
    image.save(path)


class Server:
    """A ComfyUI server with its frontend, this pack linked into custom_nodes, on loopback."""

    def __init__(self, checkout: Path, checkpoint: Path | None, python: str) -> None:
        self.checkout = checkout
        self.python = python
        self.base = Path(tempfile.mkdtemp(prefix="ip2p-screens-"))
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        for sub in ("custom_nodes", "user/default", "input", "output", "models/checkpoints"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "custom_nodes" / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
        if checkpoint is not None:
            (self.base / "models" / "checkpoints" / checkpoint.name).symlink_to(checkpoint.resolve())
        # Skip the first-run dialog; the minimap stays on (its default), so the checks see it.
        settings = {"Comfy.TutorialCompleted": True}
        (self.base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(settings))
        _example_image(self.base / "input" / "example.png")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            self.python, str(self.checkout / "main.py"),
            "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
            "--disable-api-nodes",
            "--base-directory", str(self.base),
            "--user-directory", str(self.base / "user"),
            "--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPYCACHEPREFIX": str(self.base / "pycache"), "HF_HUB_OFFLINE": "1"}
        with (self.base / "server.log").open("wb") as log:
            self.process = subprocess.Popen(command, cwd=self.base, env=env, stdout=log, stderr=subprocess.STDOUT)
        logger.info("ComfyUI server pid %d on %s (log: %s)", self.process.pid, self.url, self.base / "server.log")
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if _ready(self.url):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        tail = (self.base / "server.log").read_text(errors="replace").splitlines()[-40:]
        self.stop()
        raise RuntimeError("The ComfyUI server did not start:\n" + "\n".join(tail))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def check_view(name: str, report: dict, margin: float) -> list[str]:
    """Problems with what the saved view shows: nodes cut off, under the menu or under an overlay."""
    problems = []
    left, top, right, bottom = report["canvas"]
    for node in report["nodes"]:
        x0, y0, x1, y1 = node["rect"]
        label = f"{name}: node {node['id']} ({node['type']})"
        if x0 < left + margin or y0 < top + margin or x1 > right - margin or y1 > bottom - margin:
            problems.append(
                f"{label} is not wholly in view: {[round(v) for v in node['rect']]}, canvas {report['canvas']}"
            )
        for overlay in report["overlays"]:
            if _overlap(node["rect"], overlay["rect"]):
                problems.append(f"{label} lies under {overlay['selector']} {[round(v) for v in overlay['rect']]}")
    return problems


def check_graph(name: str, report: dict, twin: dict) -> list[str]:
    problems = []
    for node in report["nodes"]:
        if not node["registered"]:
            problems.append(f"{name}: node {node['id']} has an unknown type {node['type']!r} (drawn red)")
        if node["has_errors"]:
            problems.append(f"{name}: node {node['id']} ({node['type']}) is flagged with errors")
    expected = {key: {"class_type": v["class_type"], "inputs": v["inputs"]} for key, v in twin.items()}
    actual = {key: {"class_type": v["class_type"], "inputs": v["inputs"]} for key, v in report["output"].items()}
    if actual != expected:
        problems.append(
            f"{name}: graphToPrompt() differs from its .api.json twin:\n  page: {json.dumps(actual, sort_keys=True)}\n"
            f"  twin: {json.dumps(expected, sort_keys=True)}"
        )
    return problems


def quantise(path: Path, colours: int) -> None:
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


async def shoot(url: str, workflows: list[Path], args: argparse.Namespace) -> list[str]:
    from playwright.async_api import async_playwright

    problems: list[str] = []
    width, height = args.viewport
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            for path in workflows:
                name = path.name.removesuffix(".json")
                page = await browser.new_page(viewport={"width": width, "height": height})
                await page.goto(url + "/")
                await page.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=120_000)
                await page.wait_for_timeout(SETTLE_MS)
                text = path.read_text()
                await page.evaluate(
                    "async ([text, fileName]) => { await window.app.handleFile("
                    "new File([text], fileName, {type: 'application/json'})); }",
                    [text, path.name],
                )
                await page.wait_for_timeout(SETTLE_MS)
                await page.mouse.move(width - 1, 1)  # no hover highlight in the picture
                report = await page.evaluate(INSPECT_JS)
                twin = json.loads(path.with_name(name + ".api.json").read_text())
                found = check_graph(name, report, twin) + check_view(name, report, args.margin)
                problems += found
                if args.verbose:
                    print(json.dumps({k: v for k, v in report.items() if k != "output"}, indent=1))  # noqa: T201
                if args.out is not None:
                    target = args.out / f"workflow-{name.removeprefix('ip2p_').replace('_', '-')}.png"
                    await page.screenshot(path=str(target))
                    quantise(target, args.colours)
                    logger.info("%s: %s (%d KB)%s", name, target, target.stat().st_size // 1024,
                                "" if not found else f", {len(found)} problem(s)")  # fmt: skip
                await page.close()
        finally:
            await browser.close()
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, help="a ComfyUI checkout (the server is started from it)")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the server (default: this one)")
    parser.add_argument(
        "--checkpoint", type=Path, help="a checkpoint to list in the loaders (e.g. a random SD 1.5 IP2P)"
    )
    parser.add_argument("--url", help="use a running server instead (its custom_nodes must hold this pack)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium executable")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs", help="screenshot folder (default: docs/)")
    parser.add_argument("--check-only", action="store_true", help="run the checks, write no screenshot")
    parser.add_argument("--viewport", type=int, nargs=2, default=[1600, 1000], metavar=("W", "H"))
    parser.add_argument("--margin", type=float, default=8.0, help="pixels every node keeps from the canvas edges")
    parser.add_argument("--colours", type=int, default=128, help="palette size of the saved PNGs")
    parser.add_argument("--verbose", action="store_true", help="print node rectangles and minimum sizes")
    parser.add_argument("workflows", nargs="*", type=Path, help="UI workflows (default: workflows/*.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check_only:
        args.out = None
    workflows = args.workflows or sorted(p for p in WORKFLOWS_DIR.glob("*.json") if not p.name.endswith(".api.json"))

    server = None
    url = args.url
    if url is None:
        if args.comfyui is None:
            parser.error("give --comfyui PATH (to start a server) or --url URL (a running one)")
        server = Server(args.comfyui.resolve(), args.checkpoint, args.python)
        server.start()
        url = server.url
    try:
        problems = asyncio.run(shoot(url.rstrip("/"), workflows, args))
    finally:
        if server is not None:
            server.stop()
    for problem in problems:
        logger.error("%s", problem)
    logger.info("%d workflow(s), %d problem(s)", len(workflows), len(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
