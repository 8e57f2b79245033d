"""Trainer benchmark: `ip2p train` side by side with diffusers' InstructPix2Pix script, one JSON line per figure.

Both trainers get the same random-weight base model (a 4-channel SD-style diffusers folder that
each widens to 8 channels), the same toy data (parquet shards with diffusers' default column names)
and the same settings: AdamW at lr 1e-4 without warm-up, gradient clipping at 1.0, no EMA, no
gradient checkpointing, conditioning dropout 5 % / 5 % / 5 %, random flip, one process, the chosen
precision (fp32 on CPU). The sides:

- ``ours``: ``ip2p train sd15 ... data.cache=false`` (the frozen VAE and text encoder run every step,
  as in diffusers' script);
- ``cached``: the same with ``data.cache=true`` (latents and embeddings encoded once, before the
  first step: its time to first step includes filling the cache);
- ``diffusers``: ``examples/instruct_pix2pix/train_instruct_pix2pix.py`` from a diffusers checkout
  (``--diffusers-script PATH``; the repository does not vendor it);
- ``lora``: ours with ``lora.rank`` on an 8-channel base of the same architecture (figure: LoRA ÷
  full fine-tuning).

Every run is its own process (bench/_train_side.py), timed from outside both trainers: a post-hook
on torch's optimizer step stamps each step, so step time = time between stamps (data loading
included), samples/s = batch ÷ the median step time after the warm-up steps, time to first step =
launch to the first stamp, peak memory = peak RSS (and peak allocated GPU memory) at the last timed
step. The run is then stopped: checkpoint and export times are left out on both sides. Runs
alternate side by side for ``--repeats`` rounds; a run during which other processes used more than
``--max-other-cpu`` cores is noisy and left out of the medians when a clean run of that side exists.

    python bench/train.py --diffusers-script ~/diffusers/examples/instruct_pix2pix/train_instruct_pix2pix.py
    python bench/train.py --arch tiny --repeats 2 --diffusers-script ...           # tiny only, minutes
    python bench/train.py --arch sd15 --sd15-batch 64 --mixed-precision bf16 --workers 8 ...   # on a GPU

The weights are random: the figures measure speed and memory only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
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

HERE = Path(__file__).resolve().parent
IP2P_MAIN = "import sys; from ip2p.cli.main import main; sys.exit(main())"  # what the `ip2p` command runs
SIDES = ("ours", "cached", "diffusers", "lora")
ARCHS = ("tiny", "sd15")
SEED = 0
POLL_S = 0.2
LR = 1e-4
DROPOUT = 0.05


@dataclass(frozen=True)
class Arch:
    name: str  # a random_model architecture
    resolution: int
    batch: int
    steps: int  # timed steps
    warmup: int  # steps before them, left out


# --------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--diffusers-script", type=Path, help="diffusers' examples/instruct_pix2pix/train_instruct_pix2pix.py"
    )
    parser.add_argument("--arch", default="tiny,sd15", help="architectures, of tiny,sd15 (default both)")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"sides to run, of {','.join(SIDES)} (default all)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of interleaved runs (default 2)")
    parser.add_argument("--tiny-size", type=int, default=64, help="tiny training resolution (default 64)")
    parser.add_argument("--tiny-batch", type=int, default=4, help="tiny batch size (default 4)")
    parser.add_argument("--tiny-steps", type=int, default=20, help="tiny timed steps (default 20)")
    parser.add_argument("--sd15-size", type=int, default=256, help="SD 1.5 training resolution (default 256)")
    parser.add_argument("--sd15-batch", type=int, default=1, help="SD 1.5 batch size (default 1)")
    parser.add_argument("--sd15-steps", type=int, default=4, help="SD 1.5 timed steps (default 4)")
    parser.add_argument("--warmup", type=int, default=2, help="steps before the timed ones (default 2)")
    parser.add_argument(
        "--mixed-precision", default="no", choices=("no", "fp16", "bf16"), help="both sides (default no)"
    )
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes, both sides (default 0)")
    parser.add_argument("--lora-rank", type=int, default=16, help="the lora side's rank (default 16)")
    parser.add_argument("--pairs", type=int, default=32, help="toy pairs in the dataset (default 32)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one run may take (default 1800)")
    parser.add_argument(
        "--max-other-cpu",
        type=float,
        default=0.10,
        help="a run is noisy when other processes used more cores than this",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=20.0, help="seconds to wait for a quiet machine before each run"
    )
    parser.add_argument("--workdir", type=Path, help="keep models, data, caches and logs here (default: a temp dir)")
    parser.add_argument("--build-base", nargs=3, metavar=("ARCH", "CHANNELS", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_base:
        return args
    args.arch = _choices(parser, "--arch", args.arch, ARCHS)
    args.sides = _choices(parser, "--sides", args.sides, SIDES)
    if "diffusers" in args.sides and args.diffusers_script is None:
        parser.error("the diffusers side needs --diffusers-script PATH (or leave it out: --sides ours,cached,lora)")
    if args.diffusers_script is not None and not args.diffusers_script.is_file():
        parser.error(f"--diffusers-script {args.diffusers_script} is not a file")
    if args.repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup must be at least 1 (the first step includes start-up work)")
    return args


def _choices(parser, flag: str, text: str, valid: tuple[str, ...]) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [c for c in chosen if c not in valid]
    if unknown or not chosen:
        parser.error(f"{flag}: expected names of {','.join(valid)}, got {text!r}")
    return chosen


def archs(args: argparse.Namespace) -> list[Arch]:
    return [
        Arch(
            name,
            getattr(args, f"{name}_size"),
            getattr(args, f"{name}_batch"),
            getattr(args, f"{name}_steps"),
            args.warmup,
        )  # fmt: skip
        for name in args.arch
    ]


# --------------------------------------------------------------------------------------------
# Preparing the model and the data (once per benchmark run, reused from --workdir)


class RunError(RuntimeError):
    """A child process failed; the message carries the end of its log."""


def child_env(workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(workdir / "hf-home"),  # diffusers' script caches the parquet's arrow copy here
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])),
    }


def log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def run_quietly(command: list[str], log: Path, env: dict[str, str], what: str) -> None:
    with log.open("ab") as handle:
        done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RunError(f"{what} failed:\n{log_tail(log)}")


def build_base(arch: str, channels: int, folder: Path) -> None:
    """A random-weight model of ``arch`` saved as a diffusers folder (4 channels: a base to widen)."""
    from ip2p.headless.export import save_diffusers
    from ip2p.headless.random_model import build_random_model

    save_diffusers(build_random_model(arch, in_channels=channels, seed=SEED), folder)


def prepare(args: argparse.Namespace, workdir: Path) -> dict[str, Path]:
    """The toy data as parquet at the largest resolution, and each architecture's bases (4 and 8 channels)."""
    env, log = child_env(workdir), workdir / "prepare.log"
    paths: dict[str, Path] = {"data": workdir / "toy-parquet"}
    if not (paths["data"] / "data").is_dir():
        paper = workdir / "toy-paper"
        size = max(a.resolution for a in archs(args))
        logger.info("rendering %d toy pairs at %d px", args.pairs, size)
        shutil.rmtree(paper, ignore_errors=True)
        run_quietly([sys.executable, "-c", IP2P_MAIN, "dataset", "toy", "--out", str(paper), "--count",
                     str(args.pairs), "--seed", "1", "--size", str(size), "-q"], log, env, "ip2p dataset toy")  # fmt: skip
        run_quietly([sys.executable, "-c", IP2P_MAIN, "dataset", "convert", str(paper), str(paths["data"]),
                     "--to", "parquet", "-q"], log, env, "ip2p dataset convert")  # fmt: skip
    for arch in archs(args):
        for channels in (4, 8) if "lora" in args.sides else (4,):
            folder = paths[f"{arch.name}_{channels}"] = workdir / f"base-{arch.name}-{channels}ch"
            if not (folder / "model_index.json").is_file():
                logger.info("building the random %s base (%d channels)", arch.name, channels)
                run_quietly([sys.executable, str(HERE / "train.py"), "--build-base", arch.name, str(channels),
                             str(folder)], log, env, f"building the {arch.name} base")  # fmt: skip
    return paths


# --------------------------------------------------------------------------------------------
# One run


def ours_command(side: str, arch: Arch, args, paths: dict[str, Path], out: Path) -> list[str]:
    values: dict[str, object] = {
        "model.base": str(paths[f"{arch.name}_{8 if side == 'lora' else 4}"]),
        "data.path": str(paths["data"]),
        "data.resolution": arch.resolution,
        "data.flip": 0.5,
        "data.num_workers": args.workers,
        "data.cache": side == "cached",
        "output_dir": str(out),
        "batch_size": arch.batch,
        "gradient_accumulation_steps": 1,
        "max_steps": 10**6,  # the run is stopped after the timed steps: nothing is saved
        "save_every": 10**6,
        "mixed_precision": args.mixed_precision,
        "gradient_checkpointing": False,
        "ema.enabled": False,
        "optim.lr": LR,
        "optim.warmup_steps": 0,
        "optim.max_grad_norm": 1.0,
        "dropout.text": DROPOUT,
        "dropout.image": DROPOUT,
        "dropout.both": DROPOUT,
        "validation.every": 0,
        "seed": SEED,
    }
    if side == "lora":
        values["lora.rank"] = args.lora_rank
    return [
        "ip2p",
        "train",
        "sd15",
        *(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()),
    ]


def diffusers_command(arch: Arch, args, paths: dict[str, Path], out: Path) -> list[str]:
    flags = {
        "--pretrained_model_name_or_path": paths[f"{arch.name}_4"],
        "--dataset_name": paths["data"],
        "--resolution": arch.resolution,
        "--train_batch_size": arch.batch,
        "--gradient_accumulation_steps": 1,
        "--max_train_steps": 10**6,
        "--checkpointing_steps": 10**6,
        "--learning_rate": LR,
        "--lr_scheduler": "constant",
        "--lr_warmup_steps": 0,
        "--max_grad_norm": 1.0,
        "--conditioning_dropout_prob": DROPOUT,  # its draw: 5 % text only, 5 % both, 5 % image only
        "--mixed_precision": args.mixed_precision,
        "--dataloader_num_workers": args.workers,
        "--seed": SEED,
        "--output_dir": out,
    }
    return ["script", str(args.diffusers_script), *(str(x) for kv in flags.items() for x in kv), "--random_flip"]


def read_stamps(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break  # the line being written
    return records


def run_side(side: str, arch: Arch, args, paths: dict[str, Path], workdir: Path, round_: int) -> dict:
    """One trainer process, stopped after warm-up + timed steps: its stamps, launch time and CPU noise."""
    label = f"{arch.name}-{side}-{round_}"
    out, stamps, log = workdir / "runs" / label, workdir / f"{label}.stamps", workdir / f"{label}.log"
    shutil.rmtree(out, ignore_errors=True)
    stamps.unlink(missing_ok=True)
    side_args = (
        diffusers_command(arch, args, paths, out) if side == "diffusers" else ours_command(side, arch, args, paths, out)
    )
    command = [sys.executable, str(HERE / "_train_side.py"), str(stamps), *side_args]
    wanted = arch.warmup + arch.steps
    wait_for_quiet(args.max_other_cpu, args.quiet_wait)
    window = CpuWindow()
    launched = time.time()
    with log.open("wb") as handle:
        process = subprocess.Popen(command, env=child_env(workdir), stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        while process.poll() is None and len(read_stamps(stamps)) < wanted:
            if time.time() - launched > args.timeout:
                break
            time.sleep(POLL_S)
        finished_early = process.poll() is not None
        if not finished_early:
            os.killpg(process.pid, signal.SIGKILL)  # the timed steps are done: skip the saving
        process.wait()
    others = window.stop()
    records = read_stamps(stamps)[:wanted]
    shutil.rmtree(out, ignore_errors=True)
    if len(records) < wanted:
        reason = f"exited with {process.returncode}" if finished_early else f"timed out after {args.timeout:.0f} s"
        raise RunError(f"{label}: {reason} after {len(records)} of {wanted} steps:\n{log_tail(log)}")
    times = [r["time"] for r in records]
    steps = [b - a for a, b in zip(times[arch.warmup - 1 :], times[arch.warmup :], strict=False)]
    last = records[-1]
    return {
        "step_seconds": steps,
        "samples_per_s": arch.batch / statistics.median(steps),
        "time_to_first_step_s": times[0] - launched,
        "peak_rss_bytes": last.get("peak_rss_bytes"),
        "peak_gpu_bytes": last.get("peak_gpu_bytes"),
        "other_cpu_cores": others,
        "noisy": others is not None and others > args.max_other_cpu,
        "command": " ".join(side_args),
    }


# --------------------------------------------------------------------------------------------
# Figures


def gib(value: float | None) -> float | None:
    return round(value / 1024**3, 3) if value else None


def summarize(arch: Arch, side: str, runs: list[dict], args, env: dict) -> dict:
    """One side's record: medians over its clean runs (over all runs when none is clean)."""
    clean = [r for r in runs if not r["noisy"]] or runs

    def median(key: str) -> float | None:
        values = [r[key] for r in clean if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "name": f"train_{arch.name}_{side}",
        "samples_per_s": round(median("samples_per_s"), 4),
        "seconds_per_step": round(arch.batch / median("samples_per_s"), 4),
        "time_to_first_step_s": round(median("time_to_first_step_s"), 2),
        "first_run_time_to_first_step_s": round(runs[0]["time_to_first_step_s"], 2),
        "peak_rss_gib": gib(median("peak_rss_bytes")),
        "peak_gpu_gib": gib(median("peak_gpu_bytes")),
        "peak_rss_bytes": median("peak_rss_bytes"),
        "peak_gpu_bytes": median("peak_gpu_bytes"),
        "runs": len(runs),
        "noisy_runs_left_out": len(runs) - len(clean) if clean is not runs else 0,
        "noisy_runs_kept": sum(r["noisy"] for r in clean),
        "samples_per_s_of_runs": [round(r["samples_per_s"], 4) for r in runs],
        "other_cpu_cores": [None if r["other_cpu_cores"] is None else round(r["other_cpu_cores"], 3) for r in runs],
        "command": clean[0]["command"],
        "settings": {
            "arch": arch.name,
            "resolution": arch.resolution,
            "batch_size": arch.batch,
            "timed_steps": arch.steps,
            "warmup_steps": arch.warmup,
            "mixed_precision": args.mixed_precision,
            "workers": args.workers,
            **env,
        },  # fmt: skip
    }


def ratio_figures(arch: Arch, sides: dict[str, dict]) -> list[dict]:
    """ours ÷ diffusers (speed, memory, start-up), cached ÷ diffusers, LoRA ÷ full fine-tuning."""

    def ratio(name, a, b, key, unit, goal):
        if a not in sides or b not in sides or not sides[a].get(key) or not sides[b].get(key):
            return None
        return {
            "name": f"train_{arch.name}_{name}",
            "value": round(sides[a][key] / sides[b][key], 4),
            "unit": unit,
            "goal": goal,
            "noisy": bool(sides[a]["noisy_runs_kept"] or sides[b]["noisy_runs_kept"]),
            "ours": sides[a]["name"],
            "reference": sides[b]["name"],
        }

    speed = "samples/s, ours ÷ reference (> 1: faster)"
    memory = "peak memory at the last timed step, ours ÷ reference (< 1: smaller)"
    figures = [
        ratio("samples_per_s_vs_diffusers", "ours", "diffusers", "samples_per_s", speed, ">= 1.0"),
        ratio("cached_samples_per_s_vs_diffusers", "cached", "diffusers", "samples_per_s", speed, ">= 1.25"),
        ratio("peak_rss_vs_diffusers", "ours", "diffusers", "peak_rss_bytes", memory, "<= 0.95"),
        ratio("cached_peak_rss_vs_diffusers", "cached", "diffusers", "peak_rss_bytes", memory, None),
        ratio("peak_gpu_memory_vs_diffusers", "ours", "diffusers", "peak_gpu_bytes", memory, "<= 0.95"),
        ratio("cached_peak_gpu_memory_vs_diffusers", "cached", "diffusers", "peak_gpu_bytes", memory, None),
        ratio(
            "time_to_first_step_vs_diffusers",
            "ours",
            "diffusers",
            "time_to_first_step_s",
            "seconds from launch to the first optimizer step, ours ÷ reference",
            None,
        ),  # fmt: skip
        ratio(
            "lora_samples_per_s_vs_full", "lora", "ours", "samples_per_s", "samples/s, LoRA ÷ full fine-tuning", None
        ),
        ratio("lora_peak_rss_vs_full", "lora", "ours", "peak_rss_bytes", "peak RSS, LoRA ÷ full fine-tuning", None),
        ratio("lora_peak_gpu_memory_vs_full", "lora", "ours", "peak_gpu_bytes", "peak GPU memory, LoRA ÷ full", None),
    ]
    return [f for f in figures if f is not None]


def emit(record: dict) -> None:
    """Print one figure as a JSON line on stdout (the benchmark's only stdout output)."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.build_base:
        arch, channels, folder = args.build_base
        build_base(arch, int(channels), Path(folder))
        return 0
    start = time.perf_counter()
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ip2p-bench-train-")) if temporary else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = environment()
    failures = 0
    try:
        paths = prepare(args, workdir)
        for arch in archs(args):
            runs: dict[str, list[dict]] = {side: [] for side in args.sides}
            for round_ in range(args.repeats):
                for side in args.sides:
                    logger.info("%s %s, round %d: %d + %d steps", arch.name, side, round_ + 1, arch.warmup, arch.steps)
                    try:
                        result = run_side(side, arch, args, paths, workdir, round_)
                    except RunError as error:
                        logger.error("%s", error)
                        failures += 1
                        continue
                    runs[side].append(result)
                    logger.info("  %.4f samples/s, first step after %.1f s, peak RSS %s GiB, other CPU %s",
                                result["samples_per_s"], result["time_to_first_step_s"],
                                gib(result["peak_rss_bytes"]), result["other_cpu_cores"])  # fmt: skip
            sides = {side: summarize(arch, side, r, args, env) for side, r in runs.items() if r}
            for record in sides.values():
                emit(record)
            for figure in ratio_figures(arch, sides):
                emit(figure)
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    logger.info("benchmark done in %.1f min", (time.perf_counter() - start) / 60)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
