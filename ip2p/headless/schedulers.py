"""ComfyUI sampler and scheduler names, mapped to the closest diffusers scheduler.

The headless editor speaks ComfyUI's vocabulary so a setting copied from a workflow means the
same thing on the command line. ComfyUI's samplers are k-diffusion functions over a sigma
schedule; diffusers' are scheduler classes over timesteps. Where the two are the same algorithm
on the same schedule they agree to float precision; elsewhere the mapping is the closest
diffusers offers, and ``docs/samplers.md`` says how close.

Each :class:`SamplerSpec` and :class:`ScheduleSpec` below carries its mapping and how close it is
to ComfyUI's sampler of that name; ``docs/samplers.md`` shows them as a table (a test keeps the
two in step). In short: euler, heun and ddim (ComfyUI's ddim is Euler) are the same algorithm;
the ancestral and SDE samplers take the same step with other noise; the rest are close.

Schedulers (``--scheduler``): ``normal`` is the model's own timestep spacing from its scheduler
config (what diffusers' pipeline uses, so the parity promise holds for it; note that ComfyUI's
"normal" is linspace spacing, while SD 1.5 configs say "leading" — ComfyUI's ``ddim_uniform``);
``karras``, ``exponential`` and ``beta`` are diffusers' ``use_*_sigmas`` conversions over the full
sigma range (as ComfyUI computes them); ``simple`` is "trailing" spacing; ``ddim_uniform`` is
"leading" spacing with offset 1.

Explicit sigmas (cross-backend checks) follow ComfyUI's conventions — the model is called at the
timestep whose sigma is nearest in log space — and are accepted by the one-sigma-per-step samplers
(euler, euler_ancestral, ddim).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import IP2PError
from . import INSTALL_HINT


@dataclass(frozen=True)
class SamplerSpec:
    """How one ComfyUI sampler name maps onto diffusers."""

    name: str
    scheduler_class: str  # diffusers class name
    options: dict[str, Any] = field(default_factory=dict)  # config overrides for that class
    parity: str = ""  # how close it is to ComfyUI's sampler of that name (docs/samplers.md)


@dataclass(frozen=True)
class ScheduleSpec:
    """How one ComfyUI scheduler name maps onto diffusers config options."""

    name: str
    options: dict[str, Any]
    sigma_conversion: str | None = None  # the diffusers flag that converts sigmas, if any
    parity: str = ""


SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec("euler", "EulerDiscreteScheduler", {}, "exact: the same Euler ODE step on the same sigmas"),
        SamplerSpec(
            "euler_ancestral",
            "EulerAncestralDiscreteScheduler",
            {},
            "same step (eta 1); the per-step noise comes from our generator, not ComfyUI's",
        ),
        SamplerSpec("heun", "HeunDiscreteScheduler", {}, "exact: the same 2nd-order Heun step"),
        SamplerSpec(
            "dpm_2",
            "KDPM2DiscreteScheduler",
            {},
            "close: same DPM-2 step; ComfyUI drops the penultimate sigma, diffusers interpolates mid-points",
        ),
        SamplerSpec(
            "dpm_2_ancestral",
            "KDPM2AncestralDiscreteScheduler",
            {},
            "close: as dpm_2, plus other per-step noise",
        ),
        SamplerSpec(
            "lms",
            "LMSDiscreteScheduler",
            {},
            "close: order 4 in both; diffusers integrates the coefficients on its own grid",
        ),
        SamplerSpec(
            "dpmpp_2m",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2},
            "close: same DPM-Solver++(2M) update and first-order final step; diffusers rounds timesteps",
        ),
        SamplerSpec(
            "dpmpp_2m_sde",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint"},
            "same SDE solver (midpoint); noise from our generator, not ComfyUI's Brownian tree",
        ),
        SamplerSpec(
            "dpmpp_3m_sde",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
            "same SDE solver; noise from our generator, not ComfyUI's Brownian tree",
        ),
        SamplerSpec(
            "ddim",
            "DDIMScheduler",
            {"clip_sample": False, "thresholding": False},
            "exact step: ComfyUI's ddim is Euler, and DDIM with eta 0 is the same ODE step "
            "(diffusers stops at sigma_min instead of 0 unless set_alpha_to_one); sigma schedules use Euler",
        ),
        SamplerSpec(
            "uni_pc",
            "UniPCMultistepScheduler",
            # bh1's last step to sigma 0 is 0·inf = NaN in diffusers: end at sigma_min, as ComfyUI ends at 0.001.
            {"solver_type": "bh1", "solver_order": 3, "predict_x0": True, "final_sigmas_type": "sigma_min"},
            "close: UniPC bh1 order 3 in both; ComfyUI drops the penultimate sigma; ends at sigma_min, not 0",
        ),
        SamplerSpec(
            "uni_pc_bh2",
            "UniPCMultistepScheduler",
            {"solver_type": "bh2", "solver_order": 3, "predict_x0": True},
            "close: UniPC bh2 order 3 in both; ComfyUI drops the penultimate sigma",
        ),
        SamplerSpec(
            "deis",
            "DEISMultistepScheduler",
            {"algorithm_type": "deis", "solver_order": 3},
            "close: DEIS order 3; ComfyUI uses tabulated coefficients",
        ),
    )
}

SCHEDULES: dict[str, ScheduleSpec] = {
    spec.name: spec
    for spec in (
        ScheduleSpec("normal", {}, None, "the model's own spacing (diffusers' pipeline default)"),
        ScheduleSpec(
            "karras",
            {"use_karras_sigmas": True, "timestep_spacing": "linspace"},
            "use_karras_sigmas",
            "exact sigmas (rho 7 between the model's sigma_min and sigma_max)",
        ),
        ScheduleSpec(
            "exponential",
            {"use_exponential_sigmas": True, "timestep_spacing": "linspace"},
            "use_exponential_sigmas",
            "exact sigmas (log-linear between sigma_max and sigma_min)",
        ),
        ScheduleSpec(
            "beta",
            {"use_beta_sigmas": True, "timestep_spacing": "linspace"},
            "use_beta_sigmas",
            "close: beta(0.6, 0.6) in both; ComfyUI snaps to the model's sigmas",
        ),
        ScheduleSpec(
            "simple", {"timestep_spacing": "trailing"}, None, "exact when steps divides 1000 (trailing spacing)"
        ),
        ScheduleSpec(
            "ddim_uniform",
            {"timestep_spacing": "leading", "steps_offset": 1},
            None,
            "exact when 1000 // steps steps cover the range (leading spacing, offset 1)",
        ),
    )
}

SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULES)

# Samplers that take one model call per sigma and so accept an explicit sigma schedule.
EXPLICIT_SIGMA_SAMPLERS = ("euler", "euler_ancestral", "ddim")


MAX_STEPS = 1000  # SD's training schedule has 1000 timesteps: more steps cannot add any
SD_TRAIN_TIMESTEPS = 1000
# Samplers whose diffusers class repeats timesteps on purpose (two model calls per step).
_INTERLEAVED = ("heun", "dpm_2", "dpm_2_ancestral")


def _normalise(name: str) -> str:
    """A1111 / k-diffusion spellings in ComfyUI's form: "DPM++ 2M Karras" → "dpmpp_2m_karras"."""
    text = name.strip().lower().replace("++", "pp").replace("+", "p")
    text = "_".join(text.replace("-", " ").replace(".", " ").replace("_", " ").split())
    if text.startswith("k_"):
        text = text[2:]
    return {"euler_a": "euler_ancestral", "unipc": "uni_pc", "dpm2": "dpm_2", "dpm2_a": "dpm_2_ancestral"}.get(
        text, text
    )


def _split_combined(name: str) -> tuple[str, str] | None:
    """(sampler, scheduler) when ``name`` is an A1111-style combination such as ``dpmpp_2m_karras``."""
    text = _normalise(name)
    for schedule in SCHEDULER_NAMES:
        if text.endswith("_" + schedule) and _normalise(text[: -len(schedule) - 1]) in SAMPLERS:
            return _normalise(text[: -len(schedule) - 1]), schedule
    return None


def _hint(name: str, valid: tuple[str, ...]) -> str:
    """ " Did you mean …?" for a mistyped name, or the split of an A1111 sampler+scheduler name."""
    combined = _split_combined(name)
    if combined is not None:
        return f" It looks like an A1111-style name: use --sampler {combined[0]} --scheduler {combined[1]}."
    normalised = _normalise(name)
    if normalised in valid:
        return f" Did you mean {normalised!r}?"
    close = difflib.get_close_matches(normalised, valid, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_names(sampler: str, scheduler: str) -> None:
    """Refuse unknown sampler or scheduler names, with a suggestion and the valid ones."""
    if sampler not in SAMPLERS:
        raise IP2PError(
            f"Unknown sampler {sampler!r}.{_hint(str(sampler), SAMPLER_NAMES)} Choose one of: "
            f"{', '.join(SAMPLER_NAMES)} (ComfyUI's names; see docs/samplers.md for how each maps to diffusers)."
        )
    if scheduler not in SCHEDULES:
        raise IP2PError(
            f"Unknown scheduler {scheduler!r}.{_hint(str(scheduler), SCHEDULER_NAMES)} "
            f"Choose one of: {', '.join(SCHEDULER_NAMES)}."
        )


def check_steps(sampler: str, scheduler: str, steps: int, scheduler_config: dict | None = None) -> None:
    """Refuse a number of steps the sampler/scheduler pair cannot run on this noise schedule.

    ``scheduler_config`` is the model's (SD 1.5's when not given). See :func:`set_steps`.
    """
    check_names(sampler, scheduler)
    problem = _schedule_problem(sampler, scheduler, steps, _config_key(scheduler_config))
    if problem:
        raise IP2PError(problem)


def set_steps(instance, steps: int, sampler: str, scheduler: str, device: str | torch.device | None = None) -> None:
    """``instance.set_timesteps(steps)`` as the editor runs it, refusing a schedule that cannot run.

    Besides the bound of :data:`MAX_STEPS`, some diffusers schedulers break near the number of
    training timesteps: with "leading" spacing (SD 1.5's "normal", and "ddim_uniform") the offset
    pushes the first timestep past the last trained one, and the multistep solvers'
    ``T // (steps + 1)`` ratio collapses every timestep to one. Those are refused here rather than
    crashing or returning NaN mid-edit. The step index starts at 0 even when a schedule repeats
    its first timestep (beta, karras with many steps): diffusers would otherwise take the second
    match, as for img2img, and step past the end.
    """
    instance.set_timesteps(steps, device=device)
    if hasattr(instance, "set_begin_index"):
        instance.set_begin_index(0)
    train_steps = int(instance.config.get("num_train_timesteps", SD_TRAIN_TIMESTEPS))
    if _runs(instance, steps, train_steps):
        return
    config = {k: v for k, v in dict(instance.config).items() if not k.startswith("_")}
    start = min(steps, train_steps)
    below = range(start - 1, max(0, start - 16), -1)  # the fit is never far below
    fits = (n for n in below if _runs(_planned(config, sampler, scheduler, n), n, train_steps))
    most = next((f"at most {n} steps" for n in fits), "fewer steps")
    spacing = f"{instance.config.get('timestep_spacing', 'linspace')!r} spacing"
    raise IP2PError(
        f"steps is {steps}, but the {sampler!r} sampler on scheduler {scheduler!r} ({spacing}) cannot run that "
        f"many on this model's {train_steps} training timesteps (diffusers would crash or return NaN). "
        f"Use {most}, or --scheduler simple or karras."
    )


def _planned(config: dict, sampler: str, scheduler: str, steps: int):
    instance = make_scheduler(config, sampler, scheduler)
    instance.set_timesteps(steps)
    return instance


def _runs(instance, steps: int, train_steps: int) -> bool:
    """Whether the timesteps lie on the trained ones and have not collapsed to one value."""
    timesteps = instance.timesteps.double()
    in_range = 0 <= float(timesteps.min()) and float(timesteps.max()) <= train_steps - 1
    return in_range and (steps == 1 or timesteps.unique().numel() > 1)


def _config_key(scheduler_config: dict | None) -> str:
    if scheduler_config is None:
        from .random_model import sd15_scheduler_config

        scheduler_config = sd15_scheduler_config()
    config = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
    return json.dumps(config, sort_keys=True, default=str)


@functools.lru_cache(maxsize=256)
def _schedule_problem(sampler: str, scheduler: str, steps: int, config_key: str) -> str:
    """Why ``steps`` steps of ``sampler`` on ``scheduler`` cannot run on this schedule ("" when they can)."""
    try:
        set_steps(make_scheduler(json.loads(config_key), sampler, scheduler), steps, sampler, scheduler)
    except IP2PError as exc:
        return str(exc)
    return ""


def _diffusers_class(name: str):
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise IP2PError(f"Headless sampling needs diffusers, which is not installed: {INSTALL_HINT}") from exc
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise IP2PError(f"The installed diffusers {diffusers.__version__} has no {name}; upgrade it: {INSTALL_HINT}")
    return cls


def _accepts(cls, option: str) -> bool:
    return option in inspect.signature(cls.__init__).parameters


def make_scheduler(scheduler_config: dict, sampler: str, scheduler: str):
    """A diffusers scheduler for ComfyUI's ``sampler`` / ``scheduler`` names on the model's schedule.

    ``scheduler_config`` is the model's own (``EditModel.scheduler_config``): its betas, prediction
    type and spacing. The result is used as diffusers' pipelines use one: ``set_timesteps(steps)``,
    then ``scale_model_input`` / ``step`` per timestep.
    """
    check_names(sampler, scheduler)
    spec, schedule = SAMPLERS[sampler], SCHEDULES[scheduler]
    config = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}

    if schedule.sigma_conversion and sampler == "ddim":
        # ComfyUI's ddim is the Euler sampler, so on a sigma schedule it is Euler there too.
        spec = SAMPLERS["euler"]
    cls = _diffusers_class(spec.scheduler_class)
    options = {**spec.options, **schedule.options}

    if schedule.sigma_conversion and not _accepts(cls, schedule.sigma_conversion):
        if sampler == "euler_ancestral":
            return _euler_ancestral_on_sigma_schedule(config, schedule)
        raise IP2PError(
            f"The scheduler {scheduler!r} is not available for the sampler {sampler!r} in the installed diffusers. "
            f"Use --scheduler normal, or upgrade diffusers: {INSTALL_HINT}"
        )
    try:
        instance = cls.from_config(config, **options)
    except ImportError as exc:  # e.g. use_beta_sigmas needs scipy
        raise IP2PError(
            f"The scheduler {scheduler!r} needs a missing package: {exc}. Install it, or pick another."
        ) from exc
    if schedule.sigma_conversion and not instance.config.get(schedule.sigma_conversion):
        raise IP2PError(
            f"The installed diffusers ignored {schedule.sigma_conversion} for {sampler!r}; upgrade it: {INSTALL_HINT}"
        )
    return instance


def _euler_ancestral_on_sigma_schedule(config: dict, schedule: ScheduleSpec):
    """Euler ancestral on a karras/exponential/beta schedule, which diffusers' class lacks.

    The sigmas (and their fractional timesteps) come from EulerDiscreteScheduler with the same
    options; the ancestral step itself only reads ``sigmas[i]`` and ``sigmas[i + 1]``.
    """
    euler_cls = _diffusers_class("EulerDiscreteScheduler")
    ancestral_cls = _diffusers_class("EulerAncestralDiscreteScheduler")

    class EulerAncestralOnSigmaSchedule(ancestral_cls):
        def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
            planner = euler_cls.from_config(self.config, **schedule.options)
            planner.set_timesteps(num_inference_steps, device=device)
            super().set_timesteps(num_inference_steps, device=device)
            self.sigmas = planner.sigmas.to("cpu")
            self.timesteps = planner.timesteps.to(device)

    options = {k: v for k, v in schedule.options.items() if k != schedule.sigma_conversion}
    return EulerAncestralOnSigmaSchedule.from_config(config, **options)


def model_sigmas(scheduler) -> torch.Tensor:
    """The model's training sigmas, sqrt((1 - ᾱ_t) / ᾱ_t) for t = 0 … T-1, in float32."""
    alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()


def timesteps_for_sigmas(scheduler, sigmas: torch.Tensor) -> torch.Tensor:
    """ComfyUI's discrete-model convention: the timestep whose sigma is nearest in log space."""
    log_table = model_sigmas(scheduler).log()
    log_sigmas = sigmas.float().clamp(min=1e-10).log()
    return (log_sigmas[None, :] - log_table[:, None]).abs().argmin(dim=0).float()


def set_sigmas(scheduler, sigmas: torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
    """Run ``scheduler`` over an explicit sigma schedule (ComfyUI's, for cross-backend checks).

    ``sigmas`` is decreasing, non-negative, one more than the number of steps (ComfyUI's layout,
    usually ending in 0). Only one-sigma-per-step Euler schedulers accept it; returns the timesteps.
    """
    euler = _diffusers_class("EulerDiscreteScheduler")
    ancestral = _diffusers_class("EulerAncestralDiscreteScheduler")
    if not isinstance(scheduler, (euler, ancestral)):
        raise IP2PError(
            f"Explicit sigmas work with the samplers {', '.join(EXPLICIT_SIGMA_SAMPLERS)}; "
            f"got a {type(scheduler).__name__}. Pick one of those, or pass no sigmas."
        )
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).flatten().cpu()
    if sigmas.numel() < 2 or not torch.isfinite(sigmas).all() or (sigmas < 0).any() or (sigmas[1:] > sigmas[:-1]).any():
        raise IP2PError(
            f"sigmas must be at least two finite, non-negative, non-increasing values (e.g. ending in 0); "
            f"got {sigmas.tolist()}."
        )
    steps = sigmas.numel() - 1
    scheduler.set_timesteps(steps, device=device)
    timesteps = timesteps_for_sigmas(scheduler, sigmas[:-1])
    scheduler.sigmas = sigmas
    scheduler.timesteps = timesteps.to(device)
    scheduler.set_begin_index(0)
    return scheduler.timesteps


def explicit_sigma_scheduler(scheduler_config: dict, sampler: str, scheduler: str):
    """:func:`make_scheduler` for a run over explicit sigmas: ComfyUI's ddim is Euler there."""
    check_names(sampler, scheduler)
    if sampler not in EXPLICIT_SIGMA_SAMPLERS:
        raise IP2PError(
            f"Explicit sigmas work with the samplers {', '.join(EXPLICIT_SIGMA_SAMPLERS)}, not {sampler!r}. "
            f"Pick one of those, or pass no sigmas."
        )
    return make_scheduler(scheduler_config, "euler" if sampler == "ddim" else sampler, "normal")
