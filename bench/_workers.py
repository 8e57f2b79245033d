"""The measuring side of bench/edit.py: each worker runs in its own process and prints one result.

bench/edit.py starts ``python bench/edit.py --worker NAME --params JSON``; the worker logs to
stderr and ends by printing ``RESULT_MARKER`` + one JSON object on stdout. Peak memory is per
process, so every side whose memory is compared gets its own process.

Noise discipline: every timed run is bracketed by a CPU window that measures how much CPU
*other* processes used meanwhile (system busy time from /proc/stat minus this process's own
time). A run where others used more than ``max_other_cpu`` cores is discarded and repeated; the
count of discarded runs goes into the result.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import resource
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT_MARKER = "IP2P-BENCH-RESULT "
PACKAGE_NAME = "comfyui_ip2p"  # the repository imported as ComfyUI imports a custom node
INSTRUCTION = "turn the sky into a sunset"
TEXT_CFG = 7.5
IMAGE_CFG = 1.5
SAMPLER = "euler_ancestral"
SCHEDULER = "normal"

logger = logging.getLogger("bench")


# --------------------------------------------------------------------------------------------
# CPU noise from other processes


def _system_busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy since boot (all cores), or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process (every thread) and of its waited-for children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class CpuWindow:
    """Measures the CPU that other processes use between ``start`` and ``stop``, in cores."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.busy = _system_busy_seconds()
        self.own = _own_seconds()

    def stop(self) -> float | None:
        busy = _system_busy_seconds()
        if busy is None or self.busy is None:
            return None
        wall = max(time.perf_counter() - self.wall, 1e-6)
        others = (busy - self.busy) - (_own_seconds() - self.own)
        return max(others, 0.0) / wall


def wait_for_quiet(max_other_cpu: float, max_wait: float) -> float | None:
    """Wait (up to ``max_wait`` s) until other processes use at most ``max_other_cpu`` cores."""
    deadline = time.monotonic() + max_wait
    while True:
        window = CpuWindow()
        time.sleep(0.5)
        others = window.stop()
        if others is None or others <= max_other_cpu or time.monotonic() >= deadline:
            return others
        logger.info("waiting for a quiet machine: other processes use %.2f cores", others)
        time.sleep(1.0)


@dataclass
class Noise:
    """How a worker keeps other processes out of its timings (from the command line)."""

    max_other_cpu: float = 0.10  # cores other processes may use during a kept run
    max_attempts: int = 3  # timed runs per sample before the least noisy one is kept anyway
    quiet_wait: float = 20.0  # seconds to wait for a quiet machine before each timed run


@dataclass
class Timed:
    """One kept timed run: what it measured, and how noisy the machine was."""

    values: dict
    others: float | None  # cores used by other processes during the kept run
    discarded: int  # runs thrown away because other processes used the CPU
    clean: bool  # False when every attempt was noisy and the least noisy was kept
    discarded_others: list[float] = field(default_factory=list)


def timed_clean(run: Callable[[], dict], noise: Noise, label: str) -> Timed:
    """Run ``run`` until one run is free of other processes' CPU use (or attempts run out)."""
    discarded: list[float] = []
    fallback: tuple[float, dict] | None = None
    for attempt in range(1, noise.max_attempts + 1):
        wait_for_quiet(noise.max_other_cpu, noise.quiet_wait)
        window = CpuWindow()
        values = run()
        others = window.stop()
        if others is None or others <= noise.max_other_cpu:
            logger.info("%s: %s (others %s cores)", label, _fmt(values), _fmt(others))
            return Timed(values, others, len(discarded), True, discarded)
        logger.warning(
            "%s: discarded attempt %d/%d, other processes used %.2f cores", label, attempt, noise.max_attempts, others
        )
        discarded.append(others)
        if fallback is None or others < fallback[0]:
            fallback = (others, values)
    others, values = fallback
    logger.warning("%s: every attempt was noisy; keeping the least noisy (%.2f cores)", label, others)
    return Timed(values, others, len(discarded) - 1, False, discarded)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


# --------------------------------------------------------------------------------------------
# Shared helpers


def peak_rss_bytes() -> int:
    """This process's peak resident set size (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def test_image(size: int, seed: int = 1):
    """A smooth random RGB image (1, 3, size, size) in [0, 1]: smooth, like a photo, not like noise."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, size // 16), max(2, size // 16), generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def gpu_peak_bytes(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return int(torch.cuda.max_memory_allocated())


def step_seconds(stamps: list[float]) -> float:
    """Seconds per sampling step from one timestamp per step (the first step's start is excluded)."""
    if len(stamps) < 2:
        raise ValueError("per-step timing needs at least 2 steps")
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def environment() -> dict:
    import torch

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# --------------------------------------------------------------------------------------------
# Workers


def build(params: dict) -> dict:
    """Build the random SD 1.5-architecture InstructPix2Pix model once and save what the figures load."""
    import torch

    from ip2p.headless.export import save_diffusers, save_single_file
    from ip2p.headless.random_model import build_random_model

    start = time.perf_counter()
    model = build_random_model("sd15", in_channels=8, seed=params["seed"], dtype=torch.float32)
    logger.info("built the random SD 1.5 InstructPix2Pix model in %.1f s", time.perf_counter() - start)
    save_diffusers(model, params["diffusers_dir"])
    logger.info("saved the diffusers folder %s", params["diffusers_dir"])
    if params.get("single_file"):
        # ComfyUI computes in fp32 on CPU whatever the file holds; fp16 halves the file and its load.
        save_single_file(model, params["single_file"], dtype=torch.float16)
        logger.info("saved the single file %s", params["single_file"])
    return {"seconds": time.perf_counter() - start}


def _edit_settings(params: dict, steps: int):
    from ip2p.headless.editor import EditSettings

    return EditSettings(
        instruction=INSTRUCTION,
        steps=steps,
        text_cfg=params.get("text_cfg", TEXT_CFG),
        image_cfg=params.get("image_cfg", IMAGE_CFG),
        sampler=SAMPLER,
        scheduler=SCHEDULER,
        seed=params["seed"],
        resize="keep",  # the test image is already at the working size
        max_side=max(64, params["size"]),
    )


def _load_ours(params: dict):
    from ip2p.headless.loading import load_edit_model

    return load_edit_model(params["model"], device=params["device"], dtype=torch_dtype(params["dtype"]))


def edit_side(params: dict) -> dict:
    """One side of figure 1: load the saved folder, warm up, time one edit; report time and peak memory.

    ``params["side"]`` is "ours" (ip2p.headless.editor.edit) or "diffusers" (StableDiffusionInstructPix2PixPipeline
    with its own EulerAncestralDiscreteScheduler), both on the same folder, seed, image and settings.
    """
    import torch

    device, size, steps, noise = params["device"], params["size"], params["steps"], Noise(**params["noise"])
    image = test_image(size).to(device)
    start = time.perf_counter()
    if params["side"] == "ours":
        from ip2p.headless.editor import edit

        model = _load_ours(params)

        def run_edit(n_steps: int):
            return edit(model, image, _edit_settings(params, n_steps), progress=False)

    elif params["side"] == "diffusers":
        from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

        with warnings.catch_warnings():  # newer diffusers call torch_dtype "dtype"; older ones know only torch_dtype
            warnings.simplefilter("ignore", FutureWarning)
            pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
                params["model"],
                torch_dtype=torch_dtype(params["dtype"]),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
                local_files_only=True,
            ).to(device)
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)

        def run_edit(n_steps: int):
            return pipe(
                INSTRUCTION,
                image=image,
                negative_prompt="",
                num_inference_steps=n_steps,
                guidance_scale=TEXT_CFG,
                image_guidance_scale=IMAGE_CFG,
                generator=torch.Generator().manual_seed(params["seed"]),
                output_type="pt",
            ).images

    else:
        raise ValueError(f"unknown side {params['side']!r}")
    load_seconds = time.perf_counter() - start

    def timed_edit() -> dict:
        synchronize(device)
        begin = time.perf_counter()
        result = run_edit(steps)
        synchronize(device)
        seconds = time.perf_counter() - begin
        if not torch.isfinite(result).all():
            raise RuntimeError(f"{params['side']}: the edit produced non-finite pixels")
        return {"seconds": seconds}

    with torch.no_grad():
        run_edit(1)  # warm-up: first-call allocations and kernel selection, outside the timing
        timed = timed_clean(timed_edit, noise, f"{params['side']} edit")
    return {
        "side": params["side"],
        "load_seconds": load_seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_bytes": gpu_peak_bytes(device),
        **asdict(timed),
    }


def step_ratio(params: dict) -> dict:
    """Figure 2: time per sampling step at image_cfg = 1 (2 branches) and 1.5 (3 branches), interleaved."""
    import torch

    from ip2p.headless.editor import edit

    device, size, steps, noise = params["device"], params["size"], params["steps"], Noise(**params["noise"])
    model = _load_ours(params)
    image = test_image(size).to(device)
    stamps: list[float] = []

    def stamp(module, args):  # one UNet call per step: its start time
        synchronize(device)
        stamps.append(time.perf_counter())

    handle = model.unet.register_forward_pre_hook(stamp)
    cases = {"image_cfg_1": 1.0, "image_cfg_1.5": IMAGE_CFG}

    def run(image_cfg: float, n_steps: int) -> dict:
        stamps.clear()
        settings = _edit_settings({**params, "image_cfg": image_cfg}, n_steps)
        begin = time.perf_counter()
        edit(model, image, settings, progress=False)
        synchronize(device)
        seconds = time.perf_counter() - begin
        if len(stamps) != n_steps:
            raise RuntimeError(f"expected {n_steps} UNet calls (one per step), got {len(stamps)}")
        return {"step_seconds": step_seconds(stamps) if n_steps > 1 else None, "seconds": seconds}

    samples: dict[str, list] = {name: [] for name in cases}
    try:
        with torch.no_grad():
            for image_cfg in cases.values():
                run(image_cfg, 1)  # warm-up for both batch sizes
            for repeat in range(params["repeats"]):
                for name, image_cfg in cases.items():  # interleaved: A B A B ...
                    timed = timed_clean(
                        lambda cfg=image_cfg: run(cfg, steps), noise, f"{name} run {repeat + 1}/{params['repeats']}"
                    )
                    samples[name].append(asdict(timed))
    finally:
        handle.remove()
    return {"samples": samples}


def speed(params: dict) -> dict:
    """Figure 4: seconds per edit with our editor on the GPU (dtype, eager or torch.compile)."""
    import torch

    from ip2p.headless.editor import edit

    device, size, steps, noise = params["device"], params["size"], params["steps"], Noise(**params["noise"])
    model = _load_ours(params)
    if params["compile"]:
        model.unet = torch.compile(model.unet)
    image = test_image(size).to(device)

    def run(n_steps: int) -> dict:
        synchronize(device)
        begin = time.perf_counter()
        edit(model, image, _edit_settings(params, n_steps), progress=False)
        synchronize(device)
        return {"seconds": time.perf_counter() - begin}

    with torch.no_grad():
        for _ in range(2 if params["compile"] else 1):
            run(2)  # warm-up (compilation happens here)
        runs = [asdict(timed_clean(lambda: run(steps), noise, f"speed run {i + 1}")) for i in range(params["repeats"])]
    return {"runs": runs, "peak_gpu_bytes": gpu_peak_bytes(device)}


# --------------------------------------------------------------------------------------------
# Figure 3: our node against ComfyUI's native InstructPix2Pix graph, inside one ComfyUI


def _find_torchvision(comfy_lib: Path) -> None:
    """Make ``import torchvision`` work: the environment's own, else the copy scripts/test.sh installed.

    ComfyUI imports torchvision but uses no torchvision op for SD 1.5. The copy beside ComfyUI's
    library is PyPI's CUDA-linked build, whose C++ ops do not load beside the CPU torch wheel: an
    empty ``torchvision._meta_registrations`` lets its Python parts import (as tests/comfy_lib does).
    """
    if importlib.util.find_spec("torchvision") is not None:
        return
    server_site = Path(os.environ.get("IP2P_SERVER_SITE", ROOT / ".cache" / "comfy-server-site"))
    for folder in (server_site, comfy_lib):
        if (folder / "torchvision" / "__init__.py").is_file():
            sys.modules.setdefault(
                "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
            )
            sys.path.append(str(folder))  # appended: it can shadow nothing
            return
    raise RuntimeError(
        "ComfyUI imports torchvision, which is not installed. Run scripts/test.sh (it installs one into "
        f"{comfy_lib}) or install the torchvision that matches your torch."
    )


def _library_standins() -> None:
    """The two ComfyUI server modules that comfy_extras.nodes_custom_sampler imports, where none exist.

    Only for ComfyUI's library without its server (PyPI's notcomfy): a checkout has the real ones.
    """
    if importlib.util.find_spec("node_helpers") is None:
        module = types.ModuleType("node_helpers", "bench stand-in for ComfyUI's server module node_helpers")

        def conditioning_set_values(conditioning, values=None, append=False):
            out = []
            for tensor, options in conditioning:
                options = dict(options)
                for key, value in (values or {}).items():
                    options[key] = options[key] + value if append and options.get(key) is not None else value
                out.append([tensor, options])
            return out

        module.conditioning_set_values = conditioning_set_values
        sys.modules["node_helpers"] = module
    if importlib.util.find_spec("latent_preview") is None:
        module = types.ModuleType("latent_preview", "bench stand-in for ComfyUI's server module latent_preview")

        def prepare_callback(model, steps, x0_output_dict=None):
            import comfy.utils

            bar = comfy.utils.ProgressBar(steps)

            def callback(step, x0, x, total_steps):
                if x0_output_dict is not None:
                    x0_output_dict["x0"] = x0
                bar.update_absolute(step + 1, total_steps, None)

            return callback

        module.prepare_callback = prepare_callback
        sys.modules["latent_preview"] = module


def prepare_comfy(host: str, path: str, device: str) -> None:
    """Make ``import comfy`` the ComfyUI of ``host``: "checkout" (COMFYUI_PATH, first on sys.path) or "lib"."""
    folder = Path(path)
    if not (folder / "comfy" / "sd.py").is_file():
        if host == "checkout":
            raise RuntimeError(f"COMFYUI_PATH={path} is not a ComfyUI checkout (no comfy/sd.py); point it at one.")
        raise RuntimeError(f"ComfyUI's library is not installed in {folder}: run scripts/test.sh (it installs it).")
    # Before either ComfyUI goes on sys.path: the library's folder also holds a torchvision.
    _find_torchvision(
        folder if host == "lib" else Path(os.environ.get("IP2P_COMFY_LIB", ROOT / ".cache" / "comfy-lib"))
    )
    if host == "checkout":
        sys.path.insert(0, str(folder))  # this worker process only: the checkout's comfy and server modules
    elif str(folder) not in sys.path:
        sys.path.append(str(folder))  # appended, as tests/comfy_lib does: it can shadow nothing of ours
    import comfy.cli_args

    comfy.cli_args.args.cpu = not device.startswith("cuda")  # must be set before comfy.model_management loads
    _library_standins()


def import_pack() -> types.ModuleType:
    """The repository imported as ComfyUI imports a custom node: the package ``comfyui_ip2p``."""
    if PACKAGE_NAME in sys.modules:
        return sys.modules[PACKAGE_NAME]
    spec = importlib.util.spec_from_file_location(
        PACKAGE_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE_NAME] = module
    spec.loader.exec_module(module)
    if not getattr(module, "NODE_CLASS_MAPPINGS", None):
        raise RuntimeError("the pack registered no nodes: ComfyUI's comfy package did not import")
    return module


def call_node(node_class, **inputs) -> tuple:
    """Run a ComfyUI node's function as the executor does: V3 (``execute`` classmethod) or V1 (``FUNCTION``)."""
    if hasattr(node_class, "define_schema"):
        output = node_class.execute(**inputs)
        return tuple(output.result if hasattr(output, "result") else output)
    return tuple(getattr(node_class(), node_class.FUNCTION)(**inputs))


def encode_text(clip, text: str) -> list:
    """CONDITIONING as ComfyUI's CLIPTextEncode node makes it, on this host."""
    tokens = clip.tokenize(text)
    if hasattr(clip, "encode_from_tokens_scheduled"):
        return clip.encode_from_tokens_scheduled(tokens)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def comfy_graphs(params: dict) -> dict:
    """Figure 3: IP2PKSampler ÷ the native graph, both on ComfyUI's own loaded model, interleaved.

    Native graph: CLIPTextEncode ×2 → InstructPixToPixConditioning → DualCFGGuider (cfg_conds =
    text_cfg, cfg_cond2_negative = image_cfg; its negative is the raw empty prompt, so the third
    branch sees no image) → SamplerCustomAdvanced (RandomNoise, KSamplerSelect, BasicScheduler) →
    VAEDecode. Per-step time comes from the progress-bar hook that both paths drive once per step.
    """
    device, size, steps, noise = params["device"], params["size"], params["steps"], Noise(**params["noise"])
    prepare_comfy(params["host"], params["comfy_path"], device)

    import comfy.model_management
    import comfy.sd
    import comfy.utils
    import torch
    from comfy_extras import nodes_custom_sampler as custom
    from comfy_extras import nodes_ip2p

    pack = import_pack()
    ksampler_node = pack.nodes.IP2PKSampler
    comfy.utils.PROGRESS_BAR_ENABLED = False  # no tqdm bars on either path (both read this flag)
    stamps: list[float] = []

    def progress_hook(value, total, preview=None, **kwargs):
        synchronize(device)
        stamps.append(time.perf_counter())

    comfy.utils.set_progress_bar_global_hook(progress_hook)

    start = time.perf_counter()
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(params["checkpoint"], output_vae=True, output_clip=True)[
        :3
    ]
    load_seconds = time.perf_counter() - start
    logger.info("ComfyUI (%s) loaded %s as %s", params["host"], params["checkpoint"], type(model.model).__name__)
    image = test_image(size).movedim(1, -1).contiguous()  # ComfyUI's IMAGE: BHWC
    guider_inputs = custom.DualCFGGuider.INPUT_TYPES()["required"]
    style = {"style": "regular"} if "style" in guider_inputs else {}

    def ours(n_steps: int):
        edited, _ = ksampler_node.execute(
            model=model,
            vae=vae,
            image=image,
            instruction=INSTRUCTION,
            negative="",
            seed=params["seed"],
            steps=n_steps,
            text_cfg=TEXT_CFG,
            image_cfg=IMAGE_CFG,
            sampler_name=SAMPLER,
            scheduler=SCHEDULER,
            denoise=1.0,
            resize="keep",
            max_side=max(64, size),
            clip=clip,
        )
        return edited

    def native(n_steps: int):
        positive, negative = encode_text(clip, INSTRUCTION), encode_text(clip, "")
        cond_positive, cond_negative, latent = call_node(
            nodes_ip2p.InstructPixToPixConditioning, positive=positive, negative=negative, vae=vae, pixels=image
        )
        (guider,) = call_node(
            custom.DualCFGGuider,
            model=model,
            cond1=cond_positive,
            cond2=cond_negative,
            negative=negative,
            cfg_conds=TEXT_CFG,
            cfg_cond2_negative=IMAGE_CFG,
            **style,
        )
        (sampler,) = call_node(custom.KSamplerSelect, sampler_name=SAMPLER)
        (sigmas,) = call_node(custom.BasicScheduler, model=model, scheduler=SCHEDULER, steps=n_steps, denoise=1.0)
        (noise_source,) = call_node(custom.RandomNoise, noise_seed=params["seed"])
        output = call_node(
            custom.SamplerCustomAdvanced,
            noise=noise_source,
            guider=guider,
            sampler=sampler,
            sigmas=sigmas,
            latent_image=latent,
        )[0]
        return vae.decode(output["samples"])  # what the VAEDecode node does for an image model

    graphs = {"node": ours, "native": native}

    def run(name: str, n_steps: int) -> dict:
        stamps.clear()
        synchronize(device)
        begin = time.perf_counter()
        with torch.no_grad():
            edited = graphs[name](n_steps)
        synchronize(device)
        seconds = time.perf_counter() - begin
        if len(stamps) != n_steps:
            raise RuntimeError(f"{name}: expected {n_steps} progress updates (one per step), got {len(stamps)}")
        if not torch.isfinite(edited).all():
            raise RuntimeError(f"{name}: the edit produced non-finite pixels")
        return {"step_seconds": step_seconds(stamps) if n_steps > 1 else None, "seconds": seconds}

    for name in graphs:
        run(name, 1)  # warm-up: model placement, first-call allocations
    samples: dict[str, list] = {name: [] for name in graphs}
    for repeat in range(params["repeats"]):
        for name in graphs:  # interleaved: A B A B ...
            timed = timed_clean(lambda n=name: run(n, steps), noise, f"{name} run {repeat + 1}/{params['repeats']}")
            samples[name].append(asdict(timed))
    comfy.utils.set_progress_bar_global_hook(None)
    version = _comfy_version(params)
    comfy.model_management.unload_all_models()
    return {
        "samples": samples,
        "load_seconds": load_seconds,
        "model_class": type(model.model).__name__,
        "comfy_version": version,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def _comfy_version(params: dict) -> str:
    if params["host"] == "lib":
        return "notcomfy 0.1.0 (ComfyUI library, 2024-11)"
    try:
        return importlib.import_module("comfyui_version").__version__
    except (ImportError, AttributeError):
        return "unknown"


WORKERS: dict[str, Callable[[dict], dict]] = {
    "build": build,
    "edit": edit_side,
    "steps": step_ratio,
    "speed": speed,
    "comfy": comfy_graphs,
}


def run_worker(name: str, params_json: str) -> int:
    """Entry of a worker process: run one worker and print its result line on stdout."""
    logging.basicConfig(
        level=os.environ.get("IP2P_BENCH_LOG", "INFO"), format=f"%(asctime)s [{name}] %(message)s", stream=sys.stderr
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    params = json.loads(params_json)
    result = WORKERS[name](params)
    result["environment"] = environment()
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
