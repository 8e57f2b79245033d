"""One side of bench/train.py in its own process: a trainer, with a timestamp at every optimizer step.

    python bench/_train_side.py STAMPS ip2p train CONFIG key=value ...
    python bench/_train_side.py STAMPS script PATH/train_instruct_pix2pix.py --flag value ...

Both trainers are timed the same way, from outside their code: a global post-hook on every torch
optimizer's ``step`` appends one JSON line to STAMPS (wall-clock time, this process's peak RSS so
far, and the peak allocated GPU memory when CUDA is in use). With accelerate, the inner optimizer
steps once per optimizer step (after the last accumulated micro-batch), so one line is one step.
diffusers' script imports ``torchvision.transforms``; where torchvision is not installed beside
torch, ComfyUI's library folder provides it (``ip2p_hosts.comfy_lib``).
"""

from __future__ import annotations

import json
import runpy
import sys
import time
from pathlib import Path


def vm_hwm_bytes() -> int | None:
    """This process's peak RSS so far (Linux /proc), or None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def record_every_step(stamps: Path) -> None:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = stamps.open("a", encoding="utf-8", buffering=1)  # line-buffered: the parent reads it while we run

    def after_step(optimizer, args, kwargs) -> None:
        record = {"time": time.time(), "peak_rss_bytes": vm_hwm_bytes()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            record["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        handle.write(json.dumps(record) + "\n")

    register_optimizer_step_post_hook(after_step)


def run_script(path: Path, argv: list[str]) -> None:
    from ip2p_hosts import comfy_lib

    comfy_lib.make_torchvision_importable((comfy_lib.default_library(),))
    sys.argv = [str(path), *argv]
    sys.path.insert(0, str(path.parent))
    runpy.run_path(str(path), run_name="__main__")


def main() -> int:
    stamps, kind, rest = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    record_every_step(stamps)
    if kind == "ip2p":
        from ip2p.cli.main import main as ip2p_main

        sys.argv = ["ip2p", *rest]
        return ip2p_main()
    if kind == "script":
        run_script(Path(rest[0]), rest[1:])
        return 0
    raise SystemExit(f"unknown side kind {kind!r}: expected ip2p or script")


if __name__ == "__main__":
    sys.exit(main())
