"""The measuring side of bench/edit.py: each worker runs in its own process and prints one result.

bench/edit.py starts ``python bench/edit.py --worker NAME --params JSON``; the worker logs to
stderr and ends by printing ``RESULT_MARKER`` + one JSON object on stdout. Peak memory is per
process, so every side whose memory is compared gets its own process.

Noise discipline: every timed run goes through ``cpu_noise.timed_clean``, which discards and
repeats runs during which other processes used the CPU (bench/cpu_noise.py). Figure 3's ComfyUI
host is set up by ``ip2p_hosts.comfy_lib``, the harness tests/comfy_lib uses too.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from cpu_noise import Noise, timed_clean  # bench/ is sys.path[0]: workers run as `python bench/edit.py`

from ip2p_hosts import comfy_lib

RESULT_MARKER = "IP2P-BENCH-RESULT "
INSTRUCTION = "turn the sky into a sunset"
TEXT_CFG = 7.5
IMAGE_CFG = 1.5
SAMPLER = "euler_ancestral"
SCHEDULER = "normal"

logger = logging.getLogger("bench")


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


def prepare_comfy(host: str, path: str, device: str) -> None:
    """Make ``import comfy`` the ComfyUI of ``host``: "checkout" (COMFYUI_PATH, first on sys.path) or "lib".

    The set-up is tests/comfy_lib's, shared through ``ip2p_hosts.comfy_lib`` (this worker process only).
    """
    try:
        comfy_lib.prepare_host(Path(path), kind=host, cpu=not device.startswith("cuda"))
    except comfy_lib.HostError as error:
        raise RuntimeError(str(error)) from error


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

    pack = comfy_lib.import_pack()
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
