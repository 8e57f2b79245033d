"""The ComfyUI library host of tests/comfy_lib: ComfyUI's ``comfy`` package of 2024-11 (PyPI's notcomfy 0.1.0).

scripts/test.sh installs it into its own folder (``IP2P_COMFY_LIB``, default ``.cache/comfy-lib``)
with the data files it lacks (scripts/comfy_lib_host.py). Loading this conftest then, before any
test module imports ``comfy``:

- appends that folder to ``sys.path`` (appended, so it can shadow nothing of ours);
- registers an empty ``torchvision._meta_registrations``: PyPI's torchvision 0.28.0 is CUDA-linked,
  its C++ ops do not load beside the CPU torch wheel and that module fails; ComfyUI uses no
  torchvision op for SD 1.5;
- sets ``comfy.cli_args.args.cpu`` before ``comfy.model_management`` is imported;
- stands in for the three ComfyUI *server* modules the library and our nodes use
  (``folder_paths``, ``node_helpers``, ``latent_preview``), each only if the real one is not
  importable. The stand-ins do what the server's do for a library caller, nothing more.

Fixtures: ``comfy_host`` (the set-up; fails, never skips, when the library is missing), ``pack``
(the repository imported as ComfyUI imports a custom node: the package ``comfyui_ip2p``),
``sd15_ip2p_checkpoint`` and ``sd15_ip2p_diffusers_dir`` (one random SD 1.5-architecture
InstructPix2Pix model per run, in the stand-in's ``checkpoints`` and ``diffusers`` folders).
"""

from __future__ import annotations

import ctypes
import gc
import importlib.abc
import importlib.util
import os
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_NAME = "comfyui_ip2p"  # the name ComfyUI would give the repository folder, as a Python package
COMFY_LIB = Path(os.environ.get("IP2P_COMFY_LIB", ROOT / ".cache" / "comfy-lib"))
LIBRARY_FILES = ("comfy/sd.py", "comfy/sd1_clip_config.json", "comfy/sd1_tokenizer/vocab.json")
MODEL_FOLDERS = ("checkpoints", "diffusers", "embeddings")
SUPPORTED_PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

_timings: dict[str, float] = {}  # fixture builds, reported at the end of the run
_test_seconds: list[float] = []


def _library_problem() -> str | None:
    missing = [name for name in LIBRARY_FILES if not (COMFY_LIB / name).is_file()]
    if not missing:
        return None
    return (
        f"ComfyUI's library (notcomfy 0.1.0) is not installed for the tests: {COMFY_LIB} lacks "
        f"{', '.join(missing)}. Run scripts/test.sh, which installs it (or set IP2P_COMFY_LIB to where it is)."
    )


class _MissingLibrary(importlib.abc.MetaPathFinder):
    """Turns ``import comfy`` into an error that says how to install the library."""

    def __init__(self, message: str) -> None:
        self.message = message

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in ("comfy", "comfy_extras"):
            raise ModuleNotFoundError(self.message, name=fullname)
        return None


# --- stand-ins for ComfyUI server modules (used only where the real ones are not importable) ---


def _folder_paths_standin() -> types.ModuleType:
    """ComfyUI's model-folder registry, reduced to the calls a node makes to find model files."""
    module = types.ModuleType("folder_paths", "Test stand-in for ComfyUI's server module folder_paths.")
    registry: dict[str, tuple[list[str], set[str]]] = {}

    def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
        paths, _ = registry.setdefault(folder_name, ([], SUPPORTED_PT_EXTENSIONS))
        if full_folder_path in paths:
            paths.remove(full_folder_path)
        if is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)

    def get_folder_paths(folder_name: str) -> list[str]:
        return list(registry[folder_name][0])  # KeyError for an unknown folder, as on the server

    def get_filename_list(folder_name: str) -> list[str]:
        paths, extensions = registry[folder_name]
        names = set()
        for base in paths:
            for dirpath, _, filenames in os.walk(base, followlinks=True):
                for filename in filenames:
                    if os.path.splitext(filename)[1].lower() in extensions:
                        names.add(os.path.relpath(os.path.join(dirpath, filename), base))
        return sorted(names)

    def get_full_path(folder_name: str, filename: str) -> str | None:
        if folder_name not in registry:
            return None
        relative = os.path.relpath(os.path.join("/", filename), "/")  # no escaping the folder
        for base in registry[folder_name][0]:
            candidate = os.path.join(base, relative)
            if os.path.isfile(candidate):
                return candidate
        return None

    def get_full_path_or_raise(folder_name: str, filename: str) -> str:
        path = get_full_path(folder_name, filename)
        if path is None:
            raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
        return path

    for name in MODEL_FOLDERS:
        registry[name] = ([], {"folder"} if name == "diffusers" else SUPPORTED_PT_EXTENSIONS)
    module.__dict__.update(
        folder_names_and_paths=registry,
        supported_pt_extensions=SUPPORTED_PT_EXTENSIONS,
        add_model_folder_path=add_model_folder_path,
        get_folder_paths=get_folder_paths,
        get_filename_list=get_filename_list,
        get_full_path=get_full_path,
        get_full_path_or_raise=get_full_path_or_raise,
    )
    return module


def _node_helpers_standin() -> types.ModuleType:
    module = types.ModuleType("node_helpers", "Test stand-in for ComfyUI's server module node_helpers.")

    def conditioning_set_values(conditioning: list, values: dict | None = None, append: bool = False) -> list:
        """A copy of ``conditioning`` whose option dicts carry ``values`` (added to old ones if ``append``)."""
        result = []
        for tensor, options in conditioning:
            options = dict(options)
            for key, value in (values or {}).items():
                if append and options.get(key) is not None:
                    value = options[key] + value
                options[key] = value
            result.append([tensor, options])
        return result

    module.conditioning_set_values = conditioning_set_values
    return module


def _latent_preview_standin() -> types.ModuleType:
    module = types.ModuleType("latent_preview", "Test stand-in for ComfyUI's server module latent_preview.")

    def prepare_callback(model, steps: int, x0_output_dict: dict | None = None):
        """A sampler callback that advances a ``comfy.utils.ProgressBar`` (no preview images here)."""
        import comfy.utils

        bar = comfy.utils.ProgressBar(steps)

        def callback(step, x0, x, total_steps):
            if x0_output_dict is not None:
                x0_output_dict["x0"] = x0
            bar.update_absolute(step + 1, total_steps, None)

        return callback

    module.prepare_callback = prepare_callback
    return module


_STANDINS = {
    "folder_paths": _folder_paths_standin,
    "node_helpers": _node_helpers_standin,
    "latent_preview": _latent_preview_standin,
}


@dataclass
class ComfyHost:
    """What the tests need to know about the host: where the library is and which stand-ins are in use."""

    library: Path
    standins: list[str] = field(default_factory=list)
    models: Path | None = None  # the session's model root: <models>/checkpoints, <models>/diffusers, ...

    def folder(self, name: str) -> Path:
        return self.models / name


def _prepare_host() -> ComfyHost | str:
    """Make ``import comfy`` work as described in the module docstring; a message if it cannot."""
    problem = _library_problem()
    if problem is not None:
        sys.meta_path.insert(0, _MissingLibrary(problem))
        return problem
    if "torchvision" not in sys.modules:
        sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    if str(COMFY_LIB) not in sys.path:
        sys.path.append(str(COMFY_LIB))
    import comfy.cli_args

    if "comfy.model_management" in sys.modules and not comfy.cli_args.args.cpu:
        return (
            "comfy.model_management was imported before the test host set --cpu; import comfy only in tests/comfy_lib."
        )
    comfy.cli_args.args.cpu = True
    host = ComfyHost(library=COMFY_LIB)
    for name, make in _STANDINS.items():
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = make()
            host.standins.append(name)
    return host


_HOST = _prepare_host()


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory) -> ComfyHost:
    """The ComfyUI library host, with per-session model folders registered in ``folder_paths``."""
    if isinstance(_HOST, str):
        pytest.fail(_HOST, pytrace=False)
    if _HOST.models is None:
        import folder_paths

        _HOST.models = tmp_path_factory.mktemp("comfy-models")
        for name in MODEL_FOLDERS:
            _HOST.folder(name).mkdir()
            folder_paths.add_model_folder_path(name, str(_HOST.folder(name)), is_default=True)
    return _HOST


@pytest.fixture(scope="session")
def pack(comfy_host) -> types.ModuleType:
    """The repository imported as ComfyUI imports a custom node: the package ``comfyui_ip2p``.

    Its core is then ``pack.ip2p`` (a different module from the installed ``ip2p``: catch
    ``pack.ip2p.errors.IP2PError`` for errors raised by nodes).
    """
    if PACKAGE_NAME in sys.modules:
        return sys.modules[PACKAGE_NAME]
    spec = importlib.util.spec_from_file_location(
        PACKAGE_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACKAGE_NAME]
        raise
    return module


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


def _build_random_sd15_ip2p():
    """Built straight in fp16 (the saved dtype): the peak memory stays near one fp32 UNet."""
    from ip2p.headless.random_model import build_random_model

    return build_random_model(size="sd15", in_channels=8, seed=0, dtype=torch.float16)


def _build_and_save(save, path: Path, label: str) -> Path:
    """Build the random model, ``save(model, path)``, free it, and record the cost under ``label``."""
    start = time.perf_counter()
    model = _build_random_sd15_ip2p()
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
