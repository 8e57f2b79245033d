"""The ComfyUI library host of tests/comfy_lib: ComfyUI's ``comfy`` package of 2024-11 (PyPI's notcomfy 0.1.0).

scripts/test.sh installs it into its own folder (``IP2P_COMFY_LIB``, default ``.cache/comfy-lib``)
with the data files it lacks (``python -m ip2p_hosts.install_comfy_lib``). Loading this conftest
then sets the host up with ``ip2p_hosts.comfy_lib.prepare_host`` (the same set-up bench/ uses; its
docstring says what it does) before any test module imports ``comfy``.

Fixtures: ``comfy_host`` (the set-up; fails, never skips, when the library is missing), ``pack``
(the repository imported as ComfyUI imports a custom node: the package ``comfyui_ip2p``),
``sd15_ip2p_checkpoint`` and ``sd15_ip2p_diffusers_dir`` (one random SD 1.5-architecture
InstructPix2Pix model per run, in the stand-in's ``checkpoints`` and ``diffusers`` folders).
"""

from __future__ import annotations

import ctypes
import gc
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from ip2p_hosts import comfy_lib

_timings: dict[str, float] = {}  # fixture builds, reported at the end of the run
_test_seconds: list[float] = []


def _prepare_host() -> comfy_lib.ComfyHost | str:
    """The host, or the message that says how to fix it (every test that needs the host then fails with it)."""
    try:
        return comfy_lib.prepare_host(comfy_lib.default_library())
    except comfy_lib.HostError as error:
        return str(error)


_HOST = _prepare_host()


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory) -> comfy_lib.ComfyHost:
    """The ComfyUI library host, with per-session model folders registered in ``folder_paths``."""
    if isinstance(_HOST, str):
        pytest.fail(_HOST, pytrace=False)
    if _HOST.models is None:
        _HOST.use_model_root(tmp_path_factory.mktemp("comfy-models"))
    return _HOST


@pytest.fixture(scope="session")
def pack(comfy_host) -> types.ModuleType:
    """The repository imported as ComfyUI imports a custom node: the package ``comfyui_ip2p``.

    Its core is then ``pack.ip2p`` (a different module from the installed ``ip2p``: catch
    ``pack.ip2p.errors.IP2PError`` for errors raised by nodes).
    """
    return comfy_lib.import_pack()


def _release_memory() -> None:
    """Drop every model ComfyUI still holds, so one test module's model is gone before the next loads.

    glibc keeps freed model-sized blocks in its arenas; ``malloc_trim`` hands them back to the
    system (≈ 2 GB after a full SD 1.5 load), which matters on a machine shared by several runs.
    """
    management = sys.modules.get("comfy.model_management")
    if management is not None:
        management.unload_all_models()
        management.soft_empty_cache()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


@pytest.fixture(scope="module", autouse=True)
def _one_model_at_a_time():
    yield
    _release_memory()


def _build_random_sd15(in_channels: int = 8):
    """Built straight in fp16 (the saved dtype): the peak memory stays near one fp32 UNet."""
    from ip2p.headless.random_model import build_random_model

    return build_random_model(size="sd15", in_channels=in_channels, seed=0, dtype=torch.float16)


def _build_and_save(save, path: Path, label: str, in_channels: int = 8) -> Path:
    """Build the random model, ``save(model, path)``, free it, and record the cost under ``label``."""
    start = time.perf_counter()
    model = _build_random_sd15(in_channels)
    save(model, path)
    del model
    _release_memory()
    _timings[f"build + save {label}"] = time.perf_counter() - start
    return path


@pytest.fixture(scope="session")
def sd15_ip2p_checkpoint(comfy_host) -> Path:
    """A random SD 1.5-architecture InstructPix2Pix model as an original-layout fp16 single file (≈ 2 GB).

    Built once per run, in the ``checkpoints`` folder (``folder_paths`` lists it); the model
    itself is freed after saving. Deterministic: ``build_random_model(size="sd15", seed=0)`` in fp16.
    """
    from ip2p.headless.export import save_single_file

    path = comfy_host.folder("checkpoints") / "sd15_ip2p_random.safetensors"
    return _build_and_save(save_single_file, path, "sd15_ip2p_checkpoint")


@pytest.fixture(scope="session")
def sd15_ip2p_diffusers_dir(comfy_host) -> Path:
    """The same random model as ``sd15_ip2p_checkpoint`` (same seed), as an fp16 diffusers folder."""
    from ip2p.headless.export import save_diffusers

    path = comfy_host.folder("diffusers") / "sd15_ip2p_random"
    return _build_and_save(save_diffusers, path, "sd15_ip2p_diffusers_dir")


@pytest.fixture(scope="session")
def sd15_base_checkpoint(comfy_host) -> Path:
    """A random SD 1.5 *base* (text-to-image, 4-channel) model as an fp16 single file: what pairs are made with."""
    from ip2p.headless.export import save_single_file

    path = comfy_host.folder("checkpoints") / "sd15_base_random.safetensors"
    return _build_and_save(save_single_file, path, "sd15_base_checkpoint", in_channels=4)


# --- the cost of this suite, for the terminal summary ---


def pytest_runtest_logreport(report) -> None:
    # A conftest's runtest hooks see only the tests below its folder: these are tests/comfy_lib's.
    _test_seconds.append(report.duration)


def pytest_terminal_summary(terminalreporter) -> None:
    if not _test_seconds:
        return
    terminalreporter.write_sep("-", "tests/comfy_lib cost")
    terminalreporter.write_line(f"tests/comfy_lib: {sum(_test_seconds):.1f} s of test time (setup, call, teardown)")
    for name, seconds in _timings.items():
        terminalreporter.write_line(f"  of which {name}: {seconds:.1f} s")
