"""Side-by-side benchmark of Prompt-to-Prompt pair generation: prints one JSON line per figure.

Every figure is a ratio against a reference measured in the same run, on one random-weight base
model (``--model sd15``: the full SD 1.5 architecture, built once, about a minute; ``tiny`` for a
quick check), with the same two captions, Euler ancestral, cfg 7.5 and p = 0.9 (self-attention
shared for 90 % of the steps). Timed runs are interleaved (A, B, C, A, B, C, …) and the figures are
medians of ``--repeats``; warm-ups are one-step runs of every side, untimed. Each line records
``max_other_cpu_cores``, the most CPU other processes used during one of its timed runs: above about
0.1 the figure is noisy, run it again on an idle machine. Progress goes to stderr.

1. ``p2p_pairs_time_vs_plain_sampling``: :func:`ip2p.headless.p2p.generate_pairs` with the paper's
   controller ÷ the same call with diffusers' own attention processors left in place and no
   controller — plain classifier-free sampling of the same batch (``--batch`` seeds × 2 captions).
   Goal ≤ 1.05. Memory is not compared here (one process); figure 3's memory line has ours and
   plain sampling, each in its own process.
2. ``pairs_per_s_k_seeds_vs_one``: pairs per second with ``--batch`` seeds per UNet call ÷ one seed
   per call (the paper's loop). Goal ≥ 2 on a GPU (the CPU is compute-bound: about 1 expected).
3. Ours ÷ diffusers' community Prompt-to-Prompt pipeline, only with ``--community PATH`` (diffusers'
   ``examples/community/pipeline_prompt2prompt.py``; never vendored, loaded from the path and built
   from the same model's modules with an ``EulerAncestralDiscreteScheduler``). Its batch is its
   prompts, so it makes one pair per call; all figures are seconds per pair:

   - ``p2p_pair_time_vs_community_pipeline``: ours with ``--batch`` seeds per call ÷ the community
     pipeline, one call per seed. Goal ≤ 1.00.
   - ``p2p_pair_time_one_seed_vs_community_pipeline``: ours with one seed per call ÷ the community
     pipeline: the same UNet batch (2 captions × cond/uncond). Goal ≤ 1.00.
   - ``community_pair_time_vs_plain_sampling``: the community pipeline ÷ plain sampling, one seed
     per call both. No goal: it checks the issue's claim (about 1.21).
   - ``p2p_pair_peak_rss_vs_community_pipeline``: peak RSS while sampling one pair, ours ÷ community
     (goal ≤ 1.00), and each side's bytes over plain sampling (``extra_over_plain_bytes``; the
     issue's claim: the community pipeline about 1.3 GB over plain). Ours, plain and community each
     run in their own process that loads the same saved diffusers folder, warms up, drops what the
     warm-up left (the community pipeline keeps its last controller and attention store), then
     resets the peak (``/proc/self/clear_refs``) before the measured call. ``held_after_call_bytes``:
     what each side still holds after it. With a CUDA device, the same for peak allocated GPU memory.

   Its call: ``cross_attention_kwargs = COMMUNITY_KWARGS`` ("replace", self-attention replaced for
   90 % of the steps, cross-attention replaced for none), the closest it comes to the paper's
   variant; how it still differs is ``COMMUNITY_DIFFERENCES``, copied into the lines. One list of
   two same-seed generators per call gives both images of a pair the same noise, as ours do.
4. ``node_pair_time_vs_headless``: the ComfyUI node ``IP2PPairGenerator`` on ComfyUI's library host
   (notcomfy 0.1.0 in ``.cache/comfy-lib``, which scripts/test.sh installs) with the model saved as
   an fp16 single file and loaded by ComfyUI's checkpoint loader ÷ headless ``generate_pairs`` on
   the same file; the same seeds (the node's), ``--samples`` pairs in calls of ``--batch`` seeds, p
   and cfg fixed. Seconds per pair; both sides in one worker process (ComfyUI's host stays out of
   this one), interleaved. Goal ≤ 1.05. SD 1.5 only: ComfyUI detects the architecture from the
   weights and knows no "tiny" one, so ``--model tiny`` prints a ``skipped`` line.

``--figures`` picks figures (default all); figures that cannot run print a ``skipped`` line with
the reason, a worker that fails an ``error`` line, and the others still run. GPU figures need
``--device cuda``.

    python bench/pairs.py --community /path/to/pipeline_prompt2prompt.py     # sd15, 256 px, 10 steps, batch 4, 3 repeats
    python bench/pairs.py --model tiny --size 64 --steps 4 --repeats 2 --community PATH   # a quick check
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import importlib
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
import warnings
from collections.abc import Callable
from pathlib import Path

import _workers  # bench/ is sys.path[0] when this file runs as a script
import torch
from cpu_noise import CpuWindow

from ip2p_hosts import comfy_lib

logger = logging.getLogger("bench")

THIS = Path(__file__).resolve()
FIGURES = (1, 2, 3, 4)
MODEL_SEED = 0
# The same number of words: the community pipeline's "replace" edit refuses captions that differ in it.
CAPTIONS = ("a photo of a cat on a sofa", "a photo of a dog on a sofa")
INSTRUCTION = "turn the cat into a dog"
P2P_FRACTION = 0.9  # the paper's p: prompt 1's self-attention is prompt 0's for this share of the steps
CFG = 7.5
SAMPLER, SCHEDULER = "euler_ancestral", "normal"
COMMUNITY_KWARGS = {"edit_type": "replace", "n_self_replace": P2P_FRACTION, "n_cross_replace": 0.0}
COMMUNITY_DIFFERENCES = (
    "self-attention is shared only in layers of at most 16x16 = 256 query positions "
    "(AttentionControlEdit.replace_self_attention); the paper shares every self-attention layer",
    "self-attention is shared on the conditional rows only (AttentionControl.__call__ edits attn[h // 2:]); "
    "the paper shares the unconditional rows too",
    "it cannot switch cross-attention editing off: with n_cross_replace = 0.0 every cross-attention layer still "
    "computes the word-mapped maps at every step and blends them in with weight 0 (a no-op in result, not in cost)",
    "self-attention is shared for steps < int(0.9 * steps); ours while step / (steps - 1) < 0.9",
    "every layer materialises its attention probabilities (get_attention_scores + bmm, no fused attention), and "
    "AttentionStore keeps every map of at most 32x32 queries, summed over the steps",
)
RESULT_MARKER = _workers.RESULT_MARKER


class WorkerError(RuntimeError):
    """A worker process failed; its log (on stderr) says why."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="sd15", choices=("sd15", "tiny"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=4, help="seeds per UNet call (figures 1-4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float16", "bfloat16"),
        help="weights and sampling dtype of figures 1-3 (default float32; on a GPU: bfloat16)",
    )
    p.add_argument("--figures", default="1,2,3,4", help="comma-separated figures to run (default: 1,2,3,4)")
    p.add_argument(
        "--community",
        type=Path,
        help="diffusers' examples/community/pipeline_prompt2prompt.py, for figure 3 (not vendored)",
    )
    p.add_argument("--samples", type=int, help="figure 4: pairs per prompt, in calls of --batch (default: --batch)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one measuring process
    p.add_argument("--params", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    try:
        args.figures = sorted({int(f) for f in args.figures.split(",") if f.strip()})
    except ValueError:
        p.error(f"--figures takes numbers from {FIGURES} separated by commas, got {args.figures!r}")
    if not args.figures or any(f not in FIGURES for f in args.figures):
        p.error(f"--figures takes numbers from {FIGURES} separated by commas, got {args.figures}")
    if args.community is not None and not args.community.is_file():
        p.error(f"--community {args.community} is not a file; give the path of diffusers' pipeline_prompt2prompt.py")
    for name in ("steps", "batch", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    args.samples = args.batch if args.samples is None else args.samples
    if args.samples < 1:
        p.error(f"--samples must be at least 1, got {args.samples}")
    return args


def emit(record: dict) -> None:
    """One figure as a JSON line on stdout (the benchmark's only stdout output)."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def skipped(figure: int, name: str, reason: str) -> dict:
    return {"figure": figure, "name": name, "value": None, "skipped": reason}


def failed(figure: int, name: str, error: Exception) -> dict:
    return {"figure": figure, "name": name, "value": None, "error": str(error)}


def ratio(ours: float | None, reference: float | None) -> float | None:
    return round(ours / reference, 4) if ours is not None and reference else None


# --------------------------------------------------------------------------------------------
# The sides: each a function of the number of steps (1 for the warm-up)


def load_community(path: Path):
    """The ``Prompt2PromptPipeline`` class of diffusers' community file at ``path`` (imported from there)."""
    name = "ip2p_bench_community_prompt2prompt"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # registered while it runs, as an import would (dataclasses, pickling look it up)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    pipeline_class = getattr(module, "Prompt2PromptPipeline", None)
    if pipeline_class is None:
        raise RuntimeError(
            f"{path} defines no Prompt2PromptPipeline; give diffusers' examples/community/pipeline_prompt2prompt.py"
        )
    return pipeline_class


def community_pipeline(path: Path, model):
    """The community pipeline built from ``model``'s own modules (nothing copied, nothing loaded)."""
    from diffusers import EulerAncestralDiscreteScheduler

    pipe = load_community(path)(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=EulerAncestralDiscreteScheduler.from_config(model.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_sides(model, size: int, seeds: list[int], pipe=None) -> dict[str, Callable[[int], object]]:
    """Every side the figures time, on ``model``: name → run(steps)."""
    import ip2p.headless.p2p as p2p_module
    from ip2p.p2p import Controller

    @contextlib.contextmanager
    def untouched_attention(unet, controller):  # the reference: diffusers' own processors stay
        yield p2p_module.P2PSession(controller)

    def ours(steps: int, chunk: list[int] = seeds):
        return p2p_module.generate_pairs(
            model, *CAPTIONS, chunk, P2P_FRACTION, CFG, steps, size, SAMPLER, scheduler=SCHEDULER, progress=False
        )

    def plain(steps: int, chunk: list[int] = seeds):
        original = p2p_module.p2p_attention
        p2p_module.p2p_attention = untouched_attention
        try:
            return p2p_module.generate_pairs(
                model, *CAPTIONS, chunk, P2P_FRACTION, CFG, steps, size, SAMPLER, scheduler=SCHEDULER,
                controller=Controller(), progress=False,
            )  # fmt: skip
        finally:
            p2p_module.p2p_attention = original

    def community(steps: int):
        previous = model.unet.attn_processors  # it leaves its own processors installed: put ours back after
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # it calls the deprecated _encode_prompt
                return [
                    pipe(
                        list(CAPTIONS),
                        height=size,
                        width=size,
                        num_inference_steps=steps,
                        guidance_scale=CFG,
                        generator=[torch.Generator().manual_seed(seed) for _ in CAPTIONS],  # a pair shares its noise
                        output_type="pt",
                        cross_attention_kwargs=dict(COMMUNITY_KWARGS),
                    ).images
                    for seed in seeds
                ]
        finally:
            model.unet.set_attn_processor(previous)

    sides = {
        "ours": ours,
        "plain": plain,
        "ours_one_seed": lambda steps: [ours(steps, [seed]) for seed in seeds],
        "plain_one_seed": lambda steps: [plain(steps, [seed]) for seed in seeds],
    }
    if pipe is not None:
        sides["community"] = community
    return sides


SIDE_ORDER = ("ours", "plain", "ours_one_seed", "community", "plain_one_seed")  # one repeat runs them in turn
SIDES_OF = {  # what each in-process figure times
    1: ("ours", "plain"),
    2: ("ours", "ours_one_seed"),
    3: ("ours", "ours_one_seed", "community", "plain_one_seed"),
}


def side_names(figures: list[int]) -> list[str]:
    """The sides ``figures`` need, in the order one repeat runs them."""
    return [side for side in SIDE_ORDER if any(side in SIDES_OF.get(f, ()) for f in figures)]


def time_sides(sides: dict, names: list[str], steps: int, repeats: int, device: str) -> dict[str, dict]:
    """Interleaved timed runs of ``names`` after a one-step warm-up of each: name → seconds and other-CPU use."""

    def timed(run) -> tuple[float, float | None]:
        _workers.synchronize(device)
        window = CpuWindow()
        start = time.perf_counter()
        run(steps)
        _workers.synchronize(device)
        return time.perf_counter() - start, window.stop()

    results = {name: {"seconds": [], "other_cpu": []} for name in names}
    with torch.no_grad():
        for name in names:
            sides[name](1)  # warm-up: kernels, allocator, every shape of the timed runs
        for repeat in range(repeats):
            logger.info("repeat %d/%d …", repeat + 1, repeats)
            for name in names:
                seconds, others = timed(sides[name])
                results[name]["seconds"].append(seconds)
                results[name]["other_cpu"].append(others)
    return results


def max_other_cpu(*runs: dict) -> float | None:
    values = [v for run in runs for v in run["other_cpu"] if v is not None]
    return round(max(values), 3) if values else None


# --------------------------------------------------------------------------------------------
# Workers: figure 3's memory (one process per side) and figure 4 (ComfyUI's host)


def run_worker(name: str, params: dict) -> dict:
    """Run one measuring process (this file with --worker) and return its result."""
    command = [sys.executable, str(THIS), "--worker", name, "--params", json.dumps(params)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    logger.info("worker %s: starting", name)
    process = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, check=False)
    results = []
    for line in process.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            results.append(json.loads(line[len(RESULT_MARKER) :]))
        elif line.strip():
            sys.stderr.write(line + "\n")  # stray output of a library: keep stdout for figures
    if process.returncode != 0 or not results:
        raise WorkerError(f"worker {name} failed (exit status {process.returncode}); its log is above")
    return results[-1]


def _proc_status_bytes(key: str) -> int | None:
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux ≥ 4.0); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return _proc_status_bytes("VmHWM") is not None


def memory_worker(params: dict) -> dict:
    """Figure 3's memory: load the saved folder, warm up, reset the peak, sample one pair with one side."""
    from ip2p.headless.loading import load_edit_model

    device, side = params["device"], params["side"]
    model = load_edit_model(
        params["model_dir"], require_edit=False, device=device, dtype=_workers.torch_dtype(params["dtype"])
    )
    pipe = community_pipeline(Path(params["community"]), model) if side == "community" else None
    run = make_sides(model, params["size"], [params["seed"]], pipe)[side]
    with torch.no_grad():
        run(1)  # warm-up: first-call allocations, outside the measured peak
        if pipe is not None:  # it keeps its last controller (and that one's attention store) until the next call
            pipe.controller = None
        gc.collect()
        reset = _reset_peak_rss()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        before = _proc_status_bytes("VmRSS")
        run(params["steps"])
        _workers.synchronize(device)
    return {
        "side": side,
        "rss_before_bytes": before,
        "rss_after_bytes": _proc_status_bytes("VmRSS"),
        "peak_rss_bytes": _proc_status_bytes("VmHWM") if reset else None,
        "process_peak_rss_bytes": _workers.peak_rss_bytes(),
        "peak_gpu_bytes": _workers.gpu_peak_bytes(device),
    }


def node_worker(params: dict) -> dict:
    """Figure 4: IP2PPairGenerator on ComfyUI's library host ÷ headless generate_pairs, same file, interleaved."""
    device, size, steps = params["device"], params["size"], params["steps"]
    samples, per_call = params["samples"], params["seeds_per_call"]
    _workers.prepare_comfy("lib", str(comfy_lib.default_library()), device)
    import comfy.sd
    import comfy.utils

    from ip2p.headless.loading import load_edit_model
    from ip2p.headless.p2p import generate_pairs
    from ip2p.pairs import sample_plan

    comfy.utils.PROGRESS_BAR_ENABLED = False
    comfy_lib.import_pack()
    node = importlib.import_module("comfyui_ip2p.nodes.pairs").IP2PPairGenerator
    prompt_triple = importlib.import_module("comfyui_ip2p.ip2p.prompts").PromptTriple
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(params["single_file"], output_vae=True, output_clip=True)[
        :3
    ]
    headless = load_edit_model(params["single_file"], require_edit=False, device=device)
    triple = prompt_triple(CAPTIONS[0], INSTRUCTION, CAPTIONS[1])
    fixed = {"p2p_fraction": (P2P_FRACTION, P2P_FRACTION), "cfg": (CFG, CFG)}
    seeds = [s["seed"] for s in sample_plan(triple.key, samples, run_seed=0, **fixed)]  # the node's own seeds

    def run_node(n_steps: int, count: int = samples):
        return node.execute(
            model, clip, vae, [(0, triple)], count, per_call, 0, n_steps, size, SAMPLER, SCHEDULER,
            P2P_FRACTION, P2P_FRACTION, CFG, CFG,
        )  # fmt: skip

    def run_headless(n_steps: int, count: int = samples):
        chunks = [seeds[i : min(i + per_call, count)] for i in range(0, count, per_call)]
        options = {"scheduler": SCHEDULER, "progress": False}
        return [
            generate_pairs(headless, *CAPTIONS, c, P2P_FRACTION, CFG, n_steps, size, SAMPLER, **options) for c in chunks
        ]

    sides = {"node": run_node, "headless": run_headless}
    results = time_sides(sides, list(sides), steps, params["repeats"], device)
    return {
        "results": results,
        "model_class": type(model.model).__name__,
        "comfy_unet_dtype": str(model.model.get_dtype()),
        "comfy_version": _workers._comfy_version({"host": "lib"}),
        "seeds": seeds,
    }


WORKERS = {"memory": memory_worker, "node": node_worker}


def worker_main(name: str, params_json: str) -> int:
    """Entry of a worker process: run one worker and print its result line on stdout."""
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s", stream=sys.stderr)
    result = WORKERS[name](json.loads(params_json))
    result["environment"] = _workers.environment()
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------------------------
# The figures


def per_pair(seconds: list[float], pairs: int) -> dict:
    values = [s / pairs for s in seconds]
    return {"median_s_per_pair": statistics.median(values), "samples_s_per_pair": values}


def community_time_records(times: dict, settings: dict) -> list[dict]:
    pairs = settings["batch"]
    sides = {name: per_pair(times[name]["seconds"], pairs) for name in SIDES_OF[3]}
    med = {name: side["median_s_per_pair"] for name, side in sides.items()}
    labels = {
        "ours": f"generate_pairs, {pairs} seeds per call",
        "ours_one_seed": "generate_pairs, one seed per call",
        "community": "Prompt2PromptPipeline, one seed per call",
        "plain_one_seed": "generate_pairs without Prompt-to-Prompt (diffusers' processors), one seed per call",
    }
    noise = max_other_cpu(*(times[name] for name in SIDES_OF[3]))

    def record(name: str, ours: str, reference: str, goal: float | None, **extra) -> dict:
        value = ratio(med[ours], med[reference])
        return {
            "figure": 3,
            "name": name,
            "value": value,
            "unit": "ratio of median seconds per pair",
            "goal": f"<= {goal:.2f}" if goal is not None else None,
            "met": value <= goal if value is not None and goal is not None else None,
            "ours": {"label": labels[ours], **sides[ours]},
            "reference": {"label": labels[reference], **sides[reference]},
            **extra,
            "max_other_cpu_cores": noise,
            "settings": settings,
        }

    return [
        record("p2p_pair_time_vs_community_pipeline", "ours", "community", 1.0),
        record("p2p_pair_time_one_seed_vs_community_pipeline", "ours_one_seed", "community", 1.0),
        record(
            "community_pair_time_vs_plain_sampling",
            "community",
            "plain_one_seed",
            None,
            claim="about 1.21 (diffusers' community version costs about 21 % more time than plain sampling)",
        ),
    ]


def community_memory_record(model_dir: Path, args: argparse.Namespace, settings: dict) -> dict:
    name = "p2p_pair_peak_rss_vs_community_pipeline"
    sides = {"plain": "plain_one_seed", "ours": "ours_one_seed", "community": "community"}
    results = {}
    for label, side in sides.items():
        params = {
            "model_dir": str(model_dir),
            "community": str(args.community),
            "side": side,
            "size": args.size,
            "steps": args.steps,
            "seed": 0,
            "device": args.device,
            "dtype": args.dtype,
        }
        try:
            results[label] = run_worker("memory", params)
        except WorkerError as error:
            return failed(3, name, error)
    peak = {label: r["peak_rss_bytes"] for label, r in results.items()}
    scope = "sampling (peak reset after loading and warm-up)"
    if any(v is None for v in peak.values()):  # no /proc/self/clear_refs: the whole process's peak
        peak = {label: r["process_peak_rss_bytes"] for label, r in results.items()}
        scope = "whole process (load included): this system cannot reset the peak"
    value = ratio(peak["ours"], peak["community"])
    record = {
        "figure": 3,
        "name": name,
        "value": value,
        "unit": "ratio of peak RSS while sampling one pair, each side in its own process",
        "goal": "<= 1.00",
        "met": value <= 1.0 if value is not None else None,
        "peak_scope": scope,
        "peak_rss_bytes": peak,
        "extra_over_plain_bytes": {label: peak[label] - peak["plain"] for label in ("ours", "community")},
        "claim": "community about 1.3 GB over plain sampling",
        "rss_before_bytes": {label: r["rss_before_bytes"] for label, r in results.items()},
        "growth_bytes": {label: _minus(peak[label], r["rss_before_bytes"]) for label, r in results.items()},
        "held_after_call_bytes": {  # the community pipeline keeps its last attention store
            label: _minus(r["rss_after_bytes"], r["rss_before_bytes"]) for label, r in results.items()
        },
    }
    gpu = {label: r["peak_gpu_bytes"] for label, r in results.items()}
    if all(v is not None for v in gpu.values()):
        record["gpu_peak_allocated_bytes"] = gpu
        record["gpu_ratio"] = ratio(gpu["ours"], gpu["community"])
        record["gpu_extra_over_plain_bytes"] = {label: gpu[label] - gpu["plain"] for label in ("ours", "community")}
    return record | {"settings": {**settings, "batch": 1, "repeats": 1}}


def _minus(a: int | None, b: int | None) -> int | None:
    return a - b if a is not None and b is not None else None


def node_record(single_file: Path, args: argparse.Namespace, settings: dict) -> dict:
    name = "node_pair_time_vs_headless"
    params = {
        "single_file": str(single_file),
        "size": args.size,
        "steps": args.steps,
        "samples": args.samples,
        "seeds_per_call": args.batch,
        "repeats": args.repeats,
        "device": args.device,
    }
    try:
        result = run_worker("node", params)
    except WorkerError as error:
        return failed(4, name, error)
    times = result["results"]
    sides = {side: per_pair(times[side]["seconds"], args.samples) for side in ("node", "headless")}
    value = ratio(sides["node"]["median_s_per_pair"], sides["headless"]["median_s_per_pair"])
    return {
        "figure": 4,
        "name": name,
        "value": value,
        "unit": "ratio of median seconds per pair",
        "goal": "<= 1.05",
        "met": value <= 1.05 if value is not None else None,
        "ours": {"label": "IP2PPairGenerator node (ComfyUI's loader, fp16 file)", **sides["node"]},
        "reference": {"label": "headless generate_pairs on the same file", **sides["headless"]},
        "max_other_cpu_cores": max_other_cpu(times["node"], times["headless"]),
        "settings": {
            **settings,
            "samples": args.samples,
            "seeds_per_call": args.batch,
            "comfy_version": result["comfy_version"],
            "model_class": result["model_class"],
            "comfy_unet_dtype": result["comfy_unet_dtype"],
            "threads": result["environment"]["threads"],
        },
    }


def figure_problems(args: argparse.Namespace) -> dict[int, tuple[str, str]]:
    """Figures that cannot run here: figure → (name, reason)."""
    problems = {}
    if args.community is None:
        problems[3] = (
            "p2p_pairs_vs_community_pipeline",
            "skipped: give --community PATH (diffusers' examples/community/pipeline_prompt2prompt.py; not vendored)",
        )
    if args.model != "sd15":
        problems[4] = (
            "node_pair_time_vs_headless",
            f"skipped: --model {args.model}: ComfyUI detects the architecture from the weights and loads no "
            f"'{args.model}' model; run figure 4 with --model sd15",
        )
    else:
        missing = comfy_lib.library_problem(comfy_lib.default_library())
        if missing:
            problems[4] = ("node_pair_time_vs_headless", f"skipped: {missing}")
    return problems


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.params)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ["HF_HUB_OFFLINE"] = "1"  # never fetch anything; the workers inherit it
    from ip2p.headless.export import save_diffusers, save_single_file
    from ip2p.headless.random_model import build_random_model

    problems = figure_problems(args)
    figures = [f for f in args.figures if f not in problems]
    names = side_names(figures)
    broken: dict[int, Exception] = {}
    settings = {
        "model": args.model,
        "size": args.size,
        "steps": args.steps,
        "batch": args.batch,
        "repeats": args.repeats,
        "device": args.device,
        "dtype": args.dtype,
        "sampler": SAMPLER,
        "scheduler": SCHEDULER,
        "cfg": CFG,
        "p2p_fraction": P2P_FRACTION,
        "threads": torch.get_num_threads(),
    }
    workdir = Path(tempfile.mkdtemp(prefix="ip2p-bench-pairs-"))
    times: dict = {}
    try:
        if figures:
            logger.info("building the %s base model …", args.model)
            model = build_random_model(args.model, in_channels=4, seed=MODEL_SEED)
            if 3 in figures:
                save_diffusers(model, workdir / "model")  # figure 3's memory workers load it
            if 4 in figures:  # ComfyUI computes in fp32 on CPU whatever the file holds; fp16 halves the file
                save_single_file(model, workdir / "model.safetensors", dtype=torch.float16)
            for module in (model.unet, model.vae, model.text_encoder):
                module.to(args.device, _workers.torch_dtype(args.dtype))
            pipe = None
            if 3 in figures:
                try:
                    pipe = community_pipeline(args.community, model)
                except Exception as error:  # not the pipeline file, or one for another diffusers: figure 3 fails
                    logger.exception("figure 3: cannot build the community pipeline from %s", args.community)
                    broken[3] = error
                    names = side_names([f for f in figures if f != 3])
            sides = make_sides(model, args.size, list(range(args.batch)), pipe)
            times = time_sides(sides, names, args.steps, args.repeats, args.device) if names else {}
            del model, pipe, sides  # the workers below get the memory
            gc.collect()
        for figure in args.figures:
            logger.info("figure %d", figure)
            if figure in problems:
                emit(skipped(figure, *problems[figure]))
                continue
            if figure in broken:
                emit(failed(figure, "p2p_pairs_vs_community_pipeline", broken[figure]))
                continue
            if figure == 1:
                med = {k: statistics.median(times[k]["seconds"]) for k in SIDES_OF[1]}
                value = ratio(med["ours"], med["plain"])
                emit(
                    {
                        "figure": 1,
                        "name": "p2p_pairs_time_vs_plain_sampling",
                        "value": value,
                        "unit": "ratio",
                        "goal": "<= 1.05",
                        "met": value <= 1.05,
                        "ours": {"median_s": med["ours"], "samples": times["ours"]["seconds"]},
                        "reference": {"median_s": med["plain"], "samples": times["plain"]["seconds"]},
                        "max_other_cpu_cores": max_other_cpu(*(times[k] for k in SIDES_OF[1])),
                        "settings": settings,
                    }
                )
            elif figure == 2:
                med = {k: statistics.median(times[k]["seconds"]) for k in SIDES_OF[2]}
                emit(
                    {
                        "figure": 2,
                        "name": "pairs_per_s_k_seeds_vs_one",
                        "value": ratio(args.batch / med["ours"], args.batch / med["ours_one_seed"]),
                        "unit": "ratio",
                        "goal": ">= 2 on a GPU (the CPU is compute-bound: about 1 expected)",
                        "ours": {"pairs_per_s": args.batch / med["ours"], "samples": times["ours"]["seconds"]},
                        "reference": {
                            "pairs_per_s": args.batch / med["ours_one_seed"],
                            "samples": times["ours_one_seed"]["seconds"],
                        },
                        "max_other_cpu_cores": max_other_cpu(*(times[k] for k in SIDES_OF[2])),
                        "settings": settings,
                    }
                )
            elif figure == 3:
                community = {
                    "community_file": str(args.community),
                    "community_sha256": hashlib.sha256(args.community.read_bytes()).hexdigest(),
                    "community_kwargs": COMMUNITY_KWARGS,
                    "community_differences": list(COMMUNITY_DIFFERENCES),
                }
                for record in community_time_records(times, {**settings, **community}):
                    emit(record)
                emit(community_memory_record(workdir / "model", args, {**settings, **community}))
            else:
                emit(node_record(workdir / "model.safetensors", args, settings))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
