"""ComfyUI sampler / scheduler names mapped onto diffusers schedulers."""

from __future__ import annotations

import copy
import functools
import inspect
import re
from pathlib import Path

import pytest
import torch

from ip2p.errors import IP2PError
from ip2p.headless import schedulers
from ip2p.headless.random_model import sd15_scheduler_config

DOCS = Path(__file__).resolve().parents[2] / "docs" / "samplers.md"
REQUIRED_SAMPLERS = (
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
)


@pytest.fixture(scope="module")
def config() -> dict:
    return sd15_scheduler_config()


def _sigmas(config, sampler, scheduler, steps=8) -> torch.Tensor:
    instance = schedulers.make_scheduler(config, sampler, scheduler)
    instance.set_timesteps(steps)
    return instance.sigmas


def test_the_issue_samplers_and_schedulers_are_offered():
    assert set(REQUIRED_SAMPLERS) <= set(schedulers.SAMPLER_NAMES)
    assert {"normal", "karras", "exponential"} <= set(schedulers.SCHEDULER_NAMES)


@functools.cache
def _built(sampler: str, scheduler: str):
    """One constructed scheduler per pair (KDPM2's constructor alone takes half a second)."""
    return schedulers.make_scheduler(sd15_scheduler_config(), sampler, scheduler)


def _planned(sampler: str, scheduler: str, steps: int):
    """A fresh scheduler set to ``steps`` exactly as the editor sets it (checks included)."""
    instance = copy.deepcopy(_built(sampler, scheduler))
    schedulers.set_steps(instance, steps, sampler, scheduler)
    return instance


def _run(instance, steps: int | None = None) -> torch.Tensor:
    """Take ``steps`` steps (all by default) as the editor takes them: two images, one generator each."""
    generators = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)]
    kwargs = {"generator": generators} if "generator" in inspect.signature(instance.step).parameters else {}
    sample = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)) * instance.init_noise_sigma
    for t in instance.timesteps[:steps]:
        prediction = 0.1 * torch.randn(sample.shape, generator=torch.Generator().manual_seed(int(t)))
        sample = instance.step(prediction, t, instance.scale_model_input(sample, t), **kwargs, return_dict=False)[0]
    return sample


@pytest.mark.parametrize("sampler", schedulers.SAMPLER_NAMES)
@pytest.mark.parametrize("scheduler", schedulers.SCHEDULER_NAMES)
def test_every_pair_runs_to_a_finite_end_at_1_and_2_steps(sampler, scheduler):
    for steps in (1, 2):
        instance = _planned(sampler, scheduler, steps)
        assert len(instance.timesteps) >= steps
        assert torch.isfinite(_run(instance)).all(), f"{sampler}/{scheduler} at {steps} steps"


@pytest.mark.parametrize("sampler", schedulers.SAMPLER_NAMES)
@pytest.mark.parametrize("scheduler", schedulers.SCHEDULER_NAMES)
def test_every_pair_runs_the_most_steps_allowed(sampler, scheduler):
    try:
        steps, instance = schedulers.MAX_STEPS, _planned(sampler, scheduler, schedulers.MAX_STEPS)
    except IP2PError as exc:  # refused: then the most it names must run
        steps = int(re.search(r"at most (\d+) steps", str(exc)).group(1))
        instance = _planned(sampler, scheduler, steps)
    assert steps >= schedulers.MAX_STEPS - 2  # at most the last one or two are refused
    assert 0 <= float(instance.timesteps.min()) and float(instance.timesteps.max()) <= 999
    # The first steps, where a collapsed or overflowing schedule breaks (all 1000 take minutes for lms).
    assert torch.isfinite(_run(instance, 3)).all()


@pytest.mark.parametrize(
    ("sampler", "scheduler", "steps", "most"),
    [("ddim", "normal", 1000, 999), ("euler", "ddim_uniform", 1000, 999), ("dpmpp_2m", "normal", 999, 998)],
)
def test_steps_past_the_trained_timesteps_are_refused_with_the_most_that_fit(config, sampler, scheduler, steps, most):
    with pytest.raises(IP2PError, match=f"steps is {steps}.*{sampler}.*{scheduler}.*at most {most} steps"):
        schedulers.check_steps(sampler, scheduler, steps, config)


def test_uni_pc_bh1_ends_at_sigma_min_where_diffusers_would_divide_by_zero():
    instance = _planned("uni_pc", "normal", 6)
    assert instance.config.final_sigmas_type == "sigma_min"
    assert torch.isfinite(_run(instance)).all()


def test_a_repeated_first_timestep_runs_from_index_0():
    instance = _planned("dpmpp_2m", "beta", 50)
    assert instance.timesteps[0] == instance.timesteps[1]  # beta at 50 steps: diffusers alone would skip one
    assert torch.isfinite(_run(instance)).all()


@pytest.mark.parametrize(
    ("sampler", "scheduler", "hint"),
    [
        ("dpmpp_2m_karras", "normal", "--sampler dpmpp_2m --scheduler karras"),
        ("DPM++ 2M Karras", "normal", "--sampler dpmpp_2m --scheduler karras"),
        ("euler_a", "normal", "Did you mean 'euler_ancestral'"),
        ("eulr", "normal", "Did you mean 'euler'"),
        ("euler", "karas", "Did you mean 'karras'"),
        ("euler", "Karras", "Did you mean 'karras'"),
        ("euler", "uni_pc_exponential", "--sampler uni_pc --scheduler exponential"),
    ],
)
def test_unknown_names_get_a_suggestion(config, sampler, scheduler, hint):
    with pytest.raises(IP2PError, match=re.escape(hint)):
        schedulers.check_names(sampler, scheduler)


@pytest.mark.parametrize(
    ("sampler", "cls", "option", "value"),
    [
        ("uni_pc", "UniPCMultistepScheduler", "solver_type", "bh1"),
        ("uni_pc_bh2", "UniPCMultistepScheduler", "solver_type", "bh2"),
        ("dpmpp_2m", "DPMSolverMultistepScheduler", "algorithm_type", "dpmsolver++"),
        ("dpmpp_2m_sde", "DPMSolverMultistepScheduler", "algorithm_type", "sde-dpmsolver++"),
        ("ddim", "DDIMScheduler", "clip_sample", False),
    ],
)
def test_samplers_map_to_the_documented_diffusers_variant(config, sampler, cls, option, value):
    instance = schedulers.make_scheduler(config, sampler, "normal")
    assert type(instance).__name__ == cls and instance.config[option] == value


def test_normal_keeps_the_models_own_spacing(config):
    instance = schedulers.make_scheduler(config, "euler", "normal")
    assert instance.config.timestep_spacing == config["timestep_spacing"]
    assert instance.config.steps_offset == config["steps_offset"]


@pytest.mark.parametrize("scheduler", ["karras", "exponential"])
def test_sigma_schedules_span_the_models_full_sigma_range(config, scheduler):
    sigmas = _sigmas(config, "euler", scheduler)
    table = schedulers.model_sigmas(schedulers.make_scheduler(config, "euler", "normal"))
    assert sigmas[0] == pytest.approx(float(table[-1]), rel=1e-5)
    assert sigmas[-2] == pytest.approx(float(table[0]), rel=1e-4)
    assert sigmas[-1] == 0


def test_karras_sigmas_follow_rho_7(config):
    sigmas = _sigmas(config, "euler", "karras", steps=8)[:-1].double()
    ramp = torch.linspace(0, 1, 8, dtype=torch.float64)
    high, low = sigmas[0] ** (1 / 7), sigmas[-1] ** (1 / 7)
    torch.testing.assert_close(sigmas, (high + ramp * (low - high)) ** 7, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scheduler", ["karras", "exponential", "beta"])
def test_euler_ancestral_runs_on_the_sigmas_euler_uses(config, scheduler):
    torch.testing.assert_close(_sigmas(config, "euler_ancestral", scheduler), _sigmas(config, "euler", scheduler))


def test_ddim_on_a_sigma_schedule_is_euler_as_in_comfyui(config):
    instance = schedulers.make_scheduler(config, "ddim", "karras")
    assert type(instance).__name__ == "EulerDiscreteScheduler" and instance.config.use_karras_sigmas


def test_simple_is_trailing_and_ddim_uniform_is_leading_with_offset_1(config):
    simple = schedulers.make_scheduler(config, "euler", "simple")
    simple.set_timesteps(4)
    assert simple.timesteps.tolist() == [999, 749, 499, 249]
    uniform = schedulers.make_scheduler(config, "euler", "ddim_uniform")
    uniform.set_timesteps(4)
    assert uniform.timesteps.tolist() == [751, 501, 251, 1]


def test_unknown_sampler_lists_the_valid_names(config):
    with pytest.raises(IP2PError, match="Unknown sampler 'euler_a'.*euler_ancestral.*uni_pc"):
        schedulers.make_scheduler(config, "euler_a", "normal")


def test_unknown_scheduler_lists_the_valid_names(config):
    with pytest.raises(IP2PError, match="Unknown scheduler 'cosine'.*normal.*karras"):
        schedulers.make_scheduler(config, "euler", "cosine")


def test_explicit_sigmas_run_at_the_nearest_model_timestep(config):
    instance = schedulers.explicit_sigma_scheduler(config, "euler", "normal")
    table = schedulers.model_sigmas(instance)
    sigmas = torch.tensor([float(table[999]), float(table[500]) * 1.001, float(table[20]), 0.0])
    timesteps = schedulers.set_sigmas(instance, sigmas)
    assert timesteps.tolist() == [999, 500, 20]
    torch.testing.assert_close(instance.sigmas, sigmas)


def test_explicit_sigmas_are_refused_for_multistep_samplers(config):
    with pytest.raises(IP2PError, match="Explicit sigmas work with the samplers euler"):
        schedulers.explicit_sigma_scheduler(config, "dpmpp_2m", "normal")


@pytest.mark.parametrize("bad", [[14.6], [1.0, 2.0, 0.0], [float("nan"), 0.0], [1.0, -1.0]])
def test_malformed_sigmas_are_refused(config, bad):
    instance = schedulers.explicit_sigma_scheduler(config, "euler", "normal")
    with pytest.raises(IP2PError, match="sigmas must be"):
        schedulers.set_sigmas(instance, torch.tensor(bad))


def test_every_name_is_documented():
    text = DOCS.read_text(encoding="utf-8")
    for name in schedulers.SAMPLER_NAMES + schedulers.SCHEDULER_NAMES:
        assert f"| `{name}`" in text, f"docs/samplers.md has no row for {name}"
