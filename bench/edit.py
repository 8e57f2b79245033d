"""Side-by-side benchmark of the edit path: prints one JSON line per figure on stdout.

Every figure is a ratio against a reference measured in the same run, on the same random
full-SD 1.5-architecture InstructPix2Pix model (built once per run, saved to a temporary folder):

1. headless edit (ip2p.headless.editor.edit) ÷ diffusers' StableDiffusionInstructPix2PixPipeline: time of one
   edit (goal ≤ 1.00) and peak RSS (goal ≤ 1.00). Each side runs in its own process (peak memory is
   per process), loading the same diffusers folder; processes alternate ours, diffusers, ours, ...
2. image_cfg = 1 ÷ image_cfg = 1.5, time per sampling step, headless (goal ≤ 0.75: the UNet batch
   is 2 instead of 3). One process, runs interleaved.
3. our IP2PKSampler node ÷ ComfyUI's native graph (InstructPixToPixConditioning + DualCFGGuider +
   SamplerCustomAdvanced), time per step (goal ≤ 1.05), both on ComfyUI's own loaded model in one
   process. Needs COMFYUI_PATH (a ComfyUI checkout); --comfy-lib adds a run on ComfyUI's library
   of 2024-11 that scripts/test.sh installs.
4. on a CUDA GPU only: figures 1-3 again there, and seconds per 512 px / 100-step edit in
   fp16 / bf16, eager and torch.compile.

Defaults: 256 px, 10 steps, Euler ancestral, scheduler normal, text_cfg 7.5, image_cfg 1.5, 3 repeats,
medians. Timed runs during which other processes used more than --max-other-cpu cores are
discarded and repeated; each figure says how many were. Progress goes to stderr.

    python bench/edit.py                       # figures 1, 2, 4 (3 with COMFYUI_PATH set)
    COMFYUI_PATH=/path/to/ComfyUI python bench/edit.py --figures 3 --comfy-lib
    python bench/edit.py --size 128 --steps 4 --repeats 2      # a quick check that it all runs
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _workers  # bench/ is sys.path[0] when this file runs as a script
from _workers import RESULT_MARKER, median

from ip2p_hosts import comfy_lib

THIS = Path(__file__).resolve()
FIGURES = (1, 2, 3, 4)
MODEL_SEED = 0
EDIT_SEED = 42

logger = logging.getLogger("bench")


class WorkerError(RuntimeError):
    """A worker process failed; its log (on stderr) says why."""


# --------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--figures", default="1,2,3,4", help="comma-separated figures to run (default: 1,2,3,4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side; figures are medians (default 3)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels, a multiple of 8 (default 256)")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps, at least 2 (default 10)")
    parser.add_argument("--gpu-size", type=int, default=512, help="image side for the GPU figures (default 512)")
    parser.add_argument("--gpu-steps", type=int, default=100, help="sampling steps for the GPU figures (default 100)")
    parser.add_argument(
        "--comfy-lib",
        action="store_true",
        help="figure 3 also on ComfyUI's library of 2024-11 ($IP2P_COMFY_LIB, default .cache/comfy-lib)",
    )
    parser.add_argument(
        "--max-other-cpu",
        type=float,
        default=0.10,
        help="discard a timed run when other processes used more than this many cores meanwhile (default 0.10)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        help="timed attempts per sample before the least noisy one is kept anyway (default 3)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="seconds to wait for a quiet machine before each timed run (default 20)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the built model here and reuse it in later runs (default: a temporary folder, removed)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one measuring process
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    try:
        args.figures = sorted({int(f) for f in args.figures.split(",") if f.strip()})
    except ValueError:
        parser.error(f"--figures takes numbers from {FIGURES} separated by commas, got {args.figures!r}")
    if not args.figures or any(f not in FIGURES for f in args.figures):
        parser.error(f"--figures takes numbers from {FIGURES} separated by commas, got {args.figures}")
    for name in ("size", "gpu_size"):
        value = getattr(args, name)
        if value < 64 or value % 8:
            parser.error(f"--{name.replace('_', '-')} must be a multiple of 8, at least 64; got {value}")
    for name in ("steps", "gpu_steps"):
        if getattr(args, name) < 2:
            parser.error(f"--{name.replace('_', '-')} must be at least 2 (per-step times need two steps)")
    if args.repeats < 1 or args.max_attempts < 1:
        parser.error("--repeats and --max-attempts must be at least 1")
    if args.max_other_cpu < 0 or args.quiet_wait < 0:
        parser.error("--max-other-cpu and --quiet-wait cannot be negative")
    return args


# --------------------------------------------------------------------------------------------
# Running workers and printing figures


def run_worker(name: str, params: dict) -> dict:
    """Run one measuring process (this file with --worker) and return its result."""
    command = [sys.executable, str(THIS), "--worker", name, "--params", json.dumps(params)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "IP2P_BENCH_LOG": logging.getLevelName(logger.getEffectiveLevel())}
    logger.info("worker %s: starting", name)
    start = time.perf_counter()
    process = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, check=False)
    results = []
    for line in process.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            results.append(json.loads(line[len(RESULT_MARKER) :]))
        elif line.strip():
            sys.stderr.write(line + "\n")  # stray output of a library: keep stdout for figures
    if process.returncode != 0 or not results:
        raise WorkerError(f"worker {name} failed (exit status {process.returncode}); its log is above")
    logger.info("worker %s: done in %.1f s", name, time.perf_counter() - start)
    return results[-1]


def emit(record: dict) -> None:
    """Print one figure as a JSON line on stdout (the benchmark's only stdout output)."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def ratio_record(
    figure: int,
    name: str,
    unit: str,
    goal: float | None,
    ours: dict,
    reference: dict,
    settings: dict,
    **extra,
) -> dict:
    """A figure line: value = median(ours) ÷ median(reference), with both sides' medians and samples."""
    value = ours["median"] / reference["median"] if ours["median"] and reference["median"] else None
    record = {
        "figure": figure,
        "name": name,
        "value": round(value, 4) if value is not None else None,
        "unit": unit,
        "goal": f"<= {goal:.2f}" if goal is not None else None,
        "met": (value <= goal) if value is not None and goal is not None else None,
        "ours": ours,
        "reference": reference,
        **extra,
        "settings": settings,
    }
    return record


def side(label: str, samples: list[float], unit: str) -> dict:
    return {"label": label, "median": median(samples), "samples": samples, "unit": unit}


def noise_counts(timed: list[dict]) -> dict:
    """How many timed runs were thrown away, and how many kept runs were still noisy."""
    return {
        "discarded_runs": sum(t["discarded"] for t in timed),
        "noisy_runs_kept": sum(not t["clean"] for t in timed),
    }


def skipped(figure: int, name: str, reason: str, **extra) -> dict:
    return {"figure": figure, "name": name, "value": None, "skipped": reason, **extra}


def failed(figure: int, name: str, error: Exception) -> dict:
    return {"figure": figure, "name": name, "value": None, "error": str(error)}


class Bench:
    """One benchmark run: the model files, the options every worker gets, the figures."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.diffusers_dir = workdir / f"sd15_ip2p_seed{MODEL_SEED}"
        self.single_file = workdir / f"sd15_ip2p_seed{MODEL_SEED}.safetensors"
        self.noise = {
            "max_other_cpu": args.max_other_cpu,
            "max_attempts": args.max_attempts,
            "quiet_wait": args.quiet_wait,
        }
        self.threads: int | None = None

    # -- the model

    def ensure_model(self, single_file: bool) -> None:
        """Build and save the random model once (in its own process, so this one stays small)."""
        have_folder = (self.diffusers_dir / "model_index.json").is_file()
        have_file = self.single_file.is_file() or not single_file
        if have_folder and have_file:
            logger.info("reusing the random model in %s", self.workdir)
            return
        if have_folder:  # only the single file is missing: rebuild both (same seed, same weights)
            shutil.rmtree(self.diffusers_dir)
        logger.info("building the random SD 1.5 InstructPix2Pix model (seed %d) in %s", MODEL_SEED, self.workdir)
        run_worker(
            "build",
            {
                "seed": MODEL_SEED,
                "diffusers_dir": str(self.diffusers_dir),
                "single_file": str(self.single_file) if single_file else None,
            },
        )

    def settings(self, device: str, dtype: str, size: int, steps: int, **extra) -> dict:
        return {
            "size": size,
            "steps": steps,
            "sampler": _workers.SAMPLER,
            "scheduler": _workers.SCHEDULER,
            "text_cfg": _workers.TEXT_CFG,
            "image_cfg": _workers.IMAGE_CFG,
            "batch": 1,
            "seed": EDIT_SEED,
            "device": device,
            "dtype": dtype,
            "repeats": self.args.repeats,
            "max_other_cpu": self.args.max_other_cpu,
            "torch_threads": self.threads,
            **extra,
        }

    def params(self, device: str, dtype: str, size: int, steps: int, **extra) -> dict:
        return {
            "model": str(self.diffusers_dir),
            "device": device,
            "dtype": dtype,
            "size": size,
            "steps": steps,
            "seed": EDIT_SEED,
            "repeats": self.args.repeats,
            "noise": self.noise,
            **extra,
        }

    # -- figure 1

    def edit_vs_diffusers(self, figure: int, device: str, dtype: str, size: int, steps: int) -> list[dict]:
        runs: dict[str, list[dict]] = {"ours": [], "diffusers": []}
        for repeat in range(self.args.repeats):
            for name in runs:  # interleaved processes: ours, diffusers, ours, diffusers, ...
                logger.info("figure %d: %s edit, process %d/%d", figure, name, repeat + 1, self.args.repeats)
                result = run_worker("edit", self.params(device, dtype, size, steps, side=name))
                self.threads = self.threads or result["environment"]["threads"]
                runs[name].append(result)
        settings = self.settings(device, dtype, size, steps)
        seconds = {name: [r["values"]["seconds"] for r in results] for name, results in runs.items()}
        counts = noise_counts(runs["ours"] + runs["diffusers"])
        loads = {name: [r["load_seconds"] for r in results] for name, results in runs.items()}
        records = [
            ratio_record(
                figure,
                "headless_edit_time_vs_diffusers",
                "ratio of median edit seconds (ours / diffusers)",
                1.00,
                side("ip2p.headless.editor.edit", seconds["ours"], "s"),
                side("diffusers StableDiffusionInstructPix2PixPipeline", seconds["diffusers"], "s"),
                settings,
                **counts,
                load_seconds={name: median(values) for name, values in loads.items()},
            )
        ]
        memory = [("rss", "peak_rss_bytes", "peak RSS")]
        if device.startswith("cuda"):
            memory.append(("gpu_memory", "peak_gpu_bytes", "peak torch.cuda.max_memory_allocated"))
        for short, key, what in memory:
            peaks = {name: [r[key] for r in results] for name, results in runs.items()}
            records.append(
                ratio_record(
                    figure,
                    f"headless_peak_{short}_vs_diffusers",
                    f"ratio of median {what} per process (ours / diffusers)",
                    1.00,
                    side("ip2p.headless.editor.edit process", peaks["ours"], "bytes"),
                    side("diffusers pipeline process", peaks["diffusers"], "bytes"),
                    settings,
                )
            )
        return records

    # -- figure 2

    def image_cfg_one(self, figure: int, device: str, dtype: str, size: int, steps: int) -> list[dict]:
        result = run_worker("steps", self.params(device, dtype, size, steps))
        self.threads = self.threads or result["environment"]["threads"]
        samples = result["samples"]
        per_step = {name: [t["values"]["step_seconds"] for t in runs] for name, runs in samples.items()}
        whole = {name: [t["values"]["seconds"] for t in runs] for name, runs in samples.items()}
        edit_ratio = median(whole["image_cfg_1"]) / median(whole["image_cfg_1.5"])
        return [
            ratio_record(
                figure,
                "image_cfg_1_vs_1.5_step_time",
                "ratio of median seconds per step (image_cfg 1: UNet batch 2 / image_cfg 1.5: batch 3)",
                0.75,
                side("image_cfg = 1", per_step["image_cfg_1"], "s/step"),
                side("image_cfg = 1.5", per_step["image_cfg_1.5"], "s/step"),
                self.settings(device, dtype, size, steps),
                **noise_counts(samples["image_cfg_1"] + samples["image_cfg_1.5"]),
                whole_edit_ratio=round(edit_ratio, 4),
                whole_edit_seconds={name: median(values) for name, values in whole.items()},
            )
        ]

    # -- figure 3

    def comfy_hosts(self) -> list[tuple[str, str]]:
        hosts = []
        if os.environ.get("COMFYUI_PATH"):
            hosts.append(("checkout", os.environ["COMFYUI_PATH"]))
        if self.args.comfy_lib:
            hosts.append(("lib", str(comfy_lib.default_library())))
        return hosts

    def node_vs_native(self, figure: int, device: str, size: int, steps: int) -> list[dict]:
        name = "node_step_time_vs_native_comfy_graph"
        hosts = self.comfy_hosts()
        if not hosts:
            return [skipped(figure, name, "skipped: set COMFYUI_PATH", goal="<= 1.05")]
        records = []
        for host, path in hosts:
            try:
                result = run_worker(
                    "comfy",
                    self.params(
                        device, "comfy", size, steps, host=host, comfy_path=path, checkpoint=str(self.single_file)
                    ),
                )
            except WorkerError as error:
                records.append(failed(figure, name, error) | {"host": host, "comfy_path": path})
                continue
            samples = result["samples"]
            per_step = {k: [t["values"]["step_seconds"] for t in runs] for k, runs in samples.items()}
            whole = {k: [t["values"]["seconds"] for t in runs] for k, runs in samples.items()}
            records.append(
                ratio_record(
                    figure,
                    name,
                    "ratio of median seconds per step (IP2PKSampler / native graph)",
                    1.05,
                    side("IP2PKSampler node", per_step["node"], "s/step"),
                    side(
                        "InstructPixToPixConditioning + DualCFGGuider(7.5, 1.5) + SamplerCustomAdvanced",
                        per_step["native"],
                        "s/step",
                    ),
                    self.settings(
                        device,
                        "ComfyUI's choice",
                        size,
                        steps,
                        host=host,
                        comfy_path=path,
                        comfy_version=result["comfy_version"],
                        model_class=result["model_class"],
                    ),
                    **noise_counts(samples["node"] + samples["native"]),
                    whole_edit_ratio=round(median(whole["node"]) / median(whole["native"]), 4),
                    whole_edit_seconds={k: median(v) for k, v in whole.items()},
                )
            )
        return records

    # -- figure 4

    def gpu(self, figure: int) -> list[dict]:
        import torch

        if not torch.cuda.is_available():
            return [skipped(figure, "gpu", "no GPU: torch.cuda.is_available() is False; GPU figures not measured")]
        size, steps = self.args.gpu_size, self.args.gpu_steps
        device_name = torch.cuda.get_device_name(0)
        records: list[dict] = []
        sections = (
            ("figure 1 on GPU", lambda: self.edit_vs_diffusers(figure, "cuda", "float16", size, steps)),
            ("figure 2 on GPU", lambda: self.image_cfg_one(figure, "cuda", "float16", size, steps)),
            ("figure 3 on GPU", lambda: self.node_vs_native(figure, "cuda", size, steps)),
        )
        for label, make in sections:
            logger.info("figure %d: %s", figure, label)
            try:
                records += [{**r, "name": f"gpu_{r['name']}"} for r in make()]  # same figures, on the GPU
            except WorkerError as error:
                records.append(failed(figure, label, error))
        for dtype in ("float16", "bfloat16"):
            for compiled in (False, True):
                mode = "torch.compile" if compiled else "eager"
                name = f"gpu_seconds_per_edit_{dtype}_{'compile' if compiled else 'eager'}"
                logger.info("figure %d: %s, %s", figure, dtype, mode)
                try:
                    result = run_worker("speed", self.params("cuda", dtype, size, steps, compile=compiled))
                except WorkerError as error:
                    records.append(failed(figure, name, error))
                    continue
                seconds = [r["values"]["seconds"] for r in result["runs"]]
                records.append(
                    {
                        "figure": figure,
                        "name": name,
                        "value": round(median(seconds), 4),
                        "unit": "s per edit (median)",
                        "goal": "<= 1.00 on one H100 (the paper: about 9 s on one A100)",
                        "met": median(seconds) <= 1.0 if "H100" in device_name else None,
                        "samples": seconds,
                        "peak_gpu_bytes": result["peak_gpu_bytes"],
                        **noise_counts(result["runs"]),
                        "settings": self.settings("cuda", dtype, size, steps, mode=mode, gpu=device_name),
                    }
                )
        return records


def _needs_comfy_file(bench: Bench, figures: list[int]) -> bool:
    return (3 in figures or 4 in figures) and bool(bench.comfy_hosts())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return _workers.run_worker(args.worker, args.params)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    os.environ["HF_HUB_OFFLINE"] = "1"  # never fetch anything; the workers inherit it
    for module in ("ip2p", "diffusers", "transformers"):
        if importlib.util.find_spec(module) is None:
            logger.error(
                "%s is not importable: install the project with its headless extra: pip install -e '.[headless]'",
                module,
            )
            return 2
    start = time.perf_counter()
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ip2p-bench-")) if temporary else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, workdir)
    try:
        try:
            bench.ensure_model(single_file=_needs_comfy_file(bench, args.figures))
        except WorkerError as error:
            logger.error("could not build the benchmark model: %s", error)
            return 1
        for figure in args.figures:
            logger.info("figure %d", figure)
            if figure == 1:
                records = _guard(
                    figure,
                    "headless_vs_diffusers",
                    lambda: bench.edit_vs_diffusers(1, "cpu", "float32", args.size, args.steps),
                )
            elif figure == 2:
                records = _guard(
                    figure,
                    "image_cfg_1_vs_1.5_step_time",
                    lambda: bench.image_cfg_one(2, "cpu", "float32", args.size, args.steps),
                )
            elif figure == 3:
                records = bench.node_vs_native(3, "cpu", args.size, args.steps)
            else:
                records = bench.gpu(4)
            for record in records:
                emit(record)
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    logger.info("benchmark done in %.1f min", (time.perf_counter() - start) / 60)
    return 0


def _guard(figure: int, name: str, make) -> list[dict]:
    """A figure's records, or one line saying it failed (the other figures still run)."""
    try:
        return make()
    except WorkerError as error:
        return [failed(figure, name, error)]


if __name__ == "__main__":
    sys.exit(main())
