"""Trainer benchmark: training speed and peak memory of `ip2p train`, one JSON line per figure on stdout.

Each configuration runs the real command, ``ip2p train sd15 model.base=config:ARCH ...``, in its own
process, on random weights and on a toy dataset rendered once per benchmark run:

- ``tiny`` at 64 px (the tiny VAE downsamples x2, so larger images only slow it down), and
- ``sd15``, the full SD 1.5 architecture (860 M-parameter UNet), at 256 px as the paper trains,

each with gradient checkpointing off and on; batch 1, no gradient accumulation, fp32 (the CPU default),
EMA off (``--ema`` turns it on: +1 UNet copy, 3.4 GB for SD 1.5). Speed is the median of
metrics.jsonl's ``samples_per_s`` over the steps after the warm-up. Memory is the training process's
peak RSS twice: up to its last training step (VmHWM read as that step is logged) and for the whole
command (ru_maxrss, which includes the final checkpoint and export). Another line per architecture
compares checkpointing on with off, measured in the same benchmark run. The figures measure speed and
memory only: the weights are random. Progress goes to stderr.

    python bench/train.py              # tiny and sd15 (10-15 min on 2 cores, up to ~17.5 GB of RAM)
    python bench/train.py --quick      # tiny only (about 2 min)
    python bench/train.py --sd15-steps 5 --tiny-steps 10 --workdir /tmp/bench-train

Runs during which other processes used more than --max-other-cpu cores are marked ``noisy`` (they are
minutes long, so they are not repeated): run the benchmark again on an idle machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _workers import environment  # bench/ is sys.path[0] when this file runs as a script
from cpu_noise import CpuWindow, wait_for_quiet

logger = logging.getLogger("bench")

CONFIG = "sd15"  # the shipped recipe; the overrides below set the architecture, size and memory options
IP2P_MAIN = "import sys; from ip2p.cli.main import main; sys.exit(main())"  # what the `ip2p` command runs
TOY_PAIRS = 16
TOY_SIZE = 256
SEED = 0
POLL_S = 0.1


@dataclass(frozen=True)
class Case:
    arch: str  # a random_model architecture: model.base=config:ARCH
    resolution: int
    steps: int
    warmup: int
    checkpointing: bool

    @property
    def label(self) -> str:
        return f"{self.arch}_{self.resolution}px_checkpointing_{'on' if self.checkpointing else 'off'}"


# --------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the tiny architecture only")
    parser.add_argument("--tiny-size", type=int, default=64, help="tiny training resolution in px (default 64)")
    parser.add_argument("--tiny-steps", type=int, default=20, help="tiny optimizer steps per run (default 20)")
    parser.add_argument("--tiny-warmup", type=int, default=2, help="tiny steps left out of the median (default 2)")
    parser.add_argument("--sd15-size", type=int, default=256, help="SD 1.5 training resolution (default 256)")
    parser.add_argument("--sd15-steps", type=int, default=3, help="SD 1.5 optimizer steps per run (default 3)")
    parser.add_argument("--sd15-warmup", type=int, default=1, help="SD 1.5 steps left out of the median (default 1)")
    parser.add_argument("--batch", type=int, default=1, help="batch_size (default 1, no accumulation)")
    parser.add_argument("--ema", action="store_true", help="keep the EMA on (the recipe's default; +1 UNet copy)")
    parser.add_argument(
        "--max-other-cpu",
        type=float,
        default=0.10,
        help="mark a run noisy when other processes used more than this many cores meanwhile (default 0.10)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=20.0, help="seconds to wait for a quiet machine before each run"
    )
    parser.add_argument("--workdir", type=Path, help="keep the dataset and the run logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    for name in ("tiny_size", "sd15_size"):
        value = getattr(args, name)
        if value < 16 or value % 8:
            parser.error(f"--{name.replace('_', '-')} must be a multiple of 8, at least 16; got {value}")
    for arch in ("tiny", "sd15"):
        steps, warmup = getattr(args, f"{arch}_steps"), getattr(args, f"{arch}_warmup")
        if warmup < 0 or steps <= warmup:
            parser.error(f"--{arch}-steps must exceed --{arch}-warmup (at least one timed step); got {steps}, {warmup}")
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    return args


def cases(args: argparse.Namespace) -> list[Case]:
    archs = ("tiny",) if args.quick else ("tiny", "sd15")
    return [
        Case(
            arch,
            getattr(args, f"{arch}_size"),
            getattr(args, f"{arch}_steps"),
            getattr(args, f"{arch}_warmup"),
            checkpointing,
        )
        for arch in archs
        for checkpointing in (False, True)
    ]


# --------------------------------------------------------------------------------------------
# Running `ip2p train`


class RunError(RuntimeError):
    """A child process failed; the message carries the end of its log."""


def child_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def render_dataset(folder: Path, log: Path) -> None:
    command = [sys.executable, "-c", IP2P_MAIN, "dataset", "toy", "--out", str(folder)]
    command += ["--count", str(TOY_PAIRS), "--seed", "1", "--size", str(TOY_SIZE), "-q"]
    with log.open("ab") as handle:
        code = subprocess.run(command, env=child_env(), stdout=handle, stderr=subprocess.STDOUT, check=False)
    if code.returncode != 0:
        raise RunError(f"`ip2p dataset toy` failed:\n{log_tail(log)}")


def overrides(case: Case, args: argparse.Namespace, data: Path, out: Path) -> dict[str, object]:
    return {
        "model.base": f"config:{case.arch}",
        "data.path": str(data),
        "data.resolution": case.resolution,
        "output_dir": str(out),
        "batch_size": args.batch,
        "gradient_accumulation_steps": 1,
        "max_steps": case.steps,
        "save_every": case.steps,  # one checkpoint and export, at the end, after the timed steps
        "mixed_precision": "no",
        "gradient_checkpointing": case.checkpointing,
        "ema.enabled": args.ema,
        "checkpoints.total_limit": 1,
        "seed": SEED,
    }


def override_args(values: dict[str, object]) -> list[str]:
    """``key=value`` arguments, booleans written as YAML's true / false."""
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()]


def vm_hwm_bytes(pid: int) -> int | None:
    """A running process's peak RSS so far (Linux /proc), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def read_metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break  # the line being written
    return records


def run_case(case: Case, args: argparse.Namespace, data: Path, workdir: Path) -> dict:
    """One `ip2p train` process: its metrics, peak RSS (training steps / whole command), wall time, CPU noise."""
    out = workdir / case.label
    log = workdir / f"{case.label}.log"
    values = overrides(case, args, data, out)
    command = [sys.executable, "-c", IP2P_MAIN, "train", CONFIG, *override_args(values)]
    wait_for_quiet(args.max_other_cpu, args.quiet_wait)
    window = CpuWindow()
    start = time.perf_counter()
    training_peak = None
    with log.open("wb") as handle:
        process = subprocess.Popen(command, env=child_env(), stdout=handle, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if training_peak is None and len(read_metrics(out)) >= case.steps:
                training_peak = vm_hwm_bytes(process.pid)  # the last step is logged: the save starts now
            time.sleep(POLL_S)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    others = window.stop()
    if process.returncode != 0:
        raise RunError(f"{case.label}: `ip2p train` exited with {process.returncode}:\n{log_tail(log)}")
    metrics = read_metrics(out)
    shutil.rmtree(out, ignore_errors=True)  # SD 1.5: ~14 GB of checkpoint and export
    return {
        "metrics": metrics,
        "peak_rss_training_bytes": training_peak,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # KiB on Linux
        "wall_seconds": wall,
        "other_cpu_cores": others,
        "overrides": values,
    }


# --------------------------------------------------------------------------------------------
# Figures


def gib(value: int | None) -> float | None:
    return round(value / 1024**3, 2) if value else None


def case_record(case: Case, result: dict, args: argparse.Namespace, environment: dict) -> dict:
    timed = [m["samples_per_s"] for m in result["metrics"][case.warmup :] if m.get("samples_per_s")]
    speed = statistics.median(timed) if timed else None
    others = result["other_cpu_cores"]
    return {
        "name": f"train_{case.label}",
        "value": round(speed, 4) if speed else None,
        "unit": "samples/s (median over the steps after the warm-up)",
        "seconds_per_step": round(args.batch / speed, 3) if speed else None,
        "samples": [round(s, 4) for s in timed],
        "peak_rss_training_gib": gib(result["peak_rss_training_bytes"]),
        "peak_rss_whole_run_gib": gib(result["peak_rss_bytes"]),
        "peak_rss_training_bytes": result["peak_rss_training_bytes"],
        "peak_rss_bytes": result["peak_rss_bytes"],
        "wall_seconds": round(result["wall_seconds"], 1),
        "losses": [round(m["loss"], 5) for m in result["metrics"]],
        "other_cpu_cores": round(others, 3) if others is not None else None,
        "noisy": others is not None and others > args.max_other_cpu,
        "settings": {
            "command": " ".join(["ip2p train", CONFIG, *override_args(result["overrides"])]),
            "arch": case.arch,
            "resolution": case.resolution,
            "batch_size": args.batch,
            "steps": case.steps,
            "warmup_steps": case.warmup,
            "gradient_checkpointing": case.checkpointing,
            "ema": args.ema,
            "precision": "fp32",
            **environment,
        },
    }


def checkpointing_record(arch: str, off: dict, on: dict) -> dict:
    """Checkpointing on ÷ off, speed and memory, from two runs of the same benchmark."""

    def ratio(key: str) -> float | None:
        return round(on[key] / off[key], 4) if on.get(key) and off.get(key) else None

    return {
        "name": f"train_{arch}_checkpointing_on_vs_off",
        "speed_ratio": ratio("value"),
        "peak_rss_training_ratio": ratio("peak_rss_training_bytes"),
        "peak_rss_whole_run_ratio": ratio("peak_rss_bytes"),
        "unit": "gradient checkpointing on ÷ off (speed < 1: slower; memory < 1: smaller)",
        "noisy": on["noisy"] or off["noisy"],
        "on": on["name"],
        "off": off["name"],
    }


def emit(record: dict) -> None:
    """Print one figure as a JSON line on stdout (the benchmark's only stdout output)."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for module in ("ip2p", "ip2p_train", "diffusers", "accelerate"):
        if importlib.util.find_spec(module) is None:
            logger.error("%s is not importable: install the project with its headless extra: pip install -e '.[test]'",
                         module)  # fmt: skip
            return 2
    start = time.perf_counter()
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ip2p-bench-train-")) if temporary else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = environment()
    failures = 0
    try:
        data = workdir / "toy"
        if not (data / "seeds.json").is_file():
            logger.info("rendering %d toy pairs at %d px into %s", TOY_PAIRS, TOY_SIZE, data)
            render_dataset(data, workdir / "dataset.log")
        done: dict[Case, dict] = {}
        for case in cases(args):
            logger.info("%s: ip2p train, %d steps (%d warm-up)", case.label, case.steps, case.warmup)
            try:
                result = run_case(case, args, data, workdir)
            except RunError as error:
                logger.error("%s", error)
                emit({"name": f"train_{case.label}", "value": None, "error": str(error).splitlines()[0]})
                failures += 1
                continue
            record = done[case] = case_record(case, result, args, env)
            logger.info("%s: %s samples/s, peak RSS %s GiB (whole run %s GiB), %.0f s",
                        case.label, record["value"], record["peak_rss_training_gib"],
                        record["peak_rss_whole_run_gib"], result["wall_seconds"])  # fmt: skip
            emit(record)
            if case.checkpointing:
                off = done.get(Case(case.arch, case.resolution, case.steps, case.warmup, False))
                if off is not None:
                    emit(checkpointing_record(case.arch, off, record))
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    logger.info("benchmark done in %.1f min", (time.perf_counter() - start) / 60)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
