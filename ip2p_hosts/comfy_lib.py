"""ComfyUI's library as a host outside a server: the one set-up tests/comfy_lib and bench/ share.

The host is ComfyUI's ``comfy`` package, either PyPI's notcomfy 0.1.0 (ComfyUI of 2024-11, which
scripts/test.sh installs into its own folder, ``IP2P_COMFY_LIB``, default ``.cache/comfy-lib``,
completed by ``python -m ip2p_hosts.install_comfy_lib``) or a ComfyUI checkout.
:func:`prepare_host`, called before anything imports ``comfy``:

- puts the host on ``sys.path``: the library folder *appended* (it can shadow nothing of ours), a
  checkout *first* (its own server modules must win);
- registers an empty ``torchvision._meta_registrations`` before torchvision is imported: PyPI's
  torchvision 0.28.0 is CUDA-linked, its C++ ops do not load beside the CPU torch wheel and that
  module fails; ComfyUI uses no torchvision op for SD 1.5;
- sets ``comfy.cli_args.args.cpu`` before ``comfy.model_management`` is imported;
- stands in for the ComfyUI *server* modules the library and our nodes use (``folder_paths``,
  ``node_helpers``, ``latent_preview``), each only where the real one is not importable. The
  stand-ins do what the server's do for a library caller, nothing more.

:func:`import_pack` then imports the repository as ComfyUI imports a custom node (the package
``comfyui_ip2p``), and :func:`import_comfy_extra` imports a ``comfy_extras`` module that needs the
server's ``nodes`` module only for its constants.

This package lives at the repository root (not under ``ip2p/``, which never imports comfy) and is
reached through the project's editable install (``pip install -e .``), never through ``sys.path``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository (this package is installed editable)
PACKAGE_NAME = "comfyui_ip2p"  # the name ComfyUI gives the repository folder, as a Python package
LIBRARY_FILES = ("comfy/sd.py", "comfy/sd1_clip_config.json", "comfy/sd1_tokenizer/vocab.json")
MODEL_FOLDERS = (
    "checkpoints",
    "diffusers",
    "embeddings",
    "ip2p_clip",
    "ip2p_dino",
)  # ip2p_clip, ip2p_dino: what the pack registers on a server
SUPPORTED_PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
MAX_RESOLUTION = 16384  # ComfyUI's nodes.MAX_RESOLUTION


class HostError(RuntimeError):
    """The host cannot be set up; the message says how to fix it."""


def default_library() -> Path:
    """Where scripts/test.sh installs ComfyUI's library: ``$IP2P_COMFY_LIB``, default ``.cache/comfy-lib``."""
    return Path(os.environ.get("IP2P_COMFY_LIB", ROOT / ".cache" / "comfy-lib"))


def library_problem(library: Path) -> str | None:
    """Why ``library`` is not a usable ComfyUI library folder, or None."""
    missing = [name for name in LIBRARY_FILES if not (library / name).is_file()]
    if not missing:
        return None
    return (
        f"ComfyUI's library (notcomfy 0.1.0) is not installed: {library} lacks {', '.join(missing)}. "
        "Run scripts/test.sh, which installs it (or set IP2P_COMFY_LIB to where it is)."
    )


class MissingLibrary(importlib.abc.MetaPathFinder):
    """Turns ``import comfy`` into an error that says how to install the library."""

    def __init__(self, message: str) -> None:
        self.message = message

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in ("comfy", "comfy_extras"):
            raise ModuleNotFoundError(self.message, name=fullname)
        return None


# --- stand-ins for ComfyUI server modules (used only where the real ones are not importable) ---


def folder_paths_standin() -> types.ModuleType:
    """ComfyUI's model-folder registry, reduced to the calls a node makes to find model files."""
    module = types.ModuleType("folder_paths", "Stand-in for ComfyUI's server module folder_paths.")
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


def node_helpers_standin() -> types.ModuleType:
    module = types.ModuleType("node_helpers", "Stand-in for ComfyUI's server module node_helpers.")

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


def latent_preview_standin() -> types.ModuleType:
    module = types.ModuleType("latent_preview", "Stand-in for ComfyUI's server module latent_preview.")

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


STANDINS = {
    "folder_paths": folder_paths_standin,
    "node_helpers": node_helpers_standin,
    "latent_preview": latent_preview_standin,
}


@dataclass
class ComfyHost:
    """Where the host's ComfyUI is, which stand-ins are in use, and (once set) the model folders' root."""

    library: Path
    kind: str = "lib"  # "lib" (ComfyUI's library folder) or "checkout" (a ComfyUI checkout)
    standins: list[str] = field(default_factory=list)
    models: Path | None = None  # <models>/checkpoints, <models>/diffusers, ... once use_model_root ran

    def folder(self, name: str) -> Path:
        if self.models is None:
            raise HostError("no model root yet: call ComfyHost.use_model_root(DIR) first")
        return self.models / name

    def use_model_root(self, root: Path) -> None:
        """Create ``root``/checkpoints, diffusers, embeddings and register them first in ``folder_paths``."""
        import folder_paths

        self.models = Path(root)
        for name in MODEL_FOLDERS:
            self.folder(name).mkdir(parents=True, exist_ok=True)
            folder_paths.add_model_folder_path(name, str(self.folder(name)), is_default=True)


def make_torchvision_importable(extra_folders: tuple[Path, ...]) -> None:
    """Make ``import torchvision`` work: the environment's own, else the first copy in ``extra_folders``.

    Either way an empty ``torchvision._meta_registrations`` is registered first (see the module docstring).
    """
    if "torchvision" in sys.modules:
        return
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    if importlib.util.find_spec("torchvision") is not None:
        return
    for folder in extra_folders:
        if (folder / "torchvision" / "__init__.py").is_file():
            sys.path.append(str(folder))  # appended: it can shadow nothing
            return


def prepare_host(library: Path | None = None, *, kind: str = "lib", cpu: bool = True) -> ComfyHost:
    """Make ``import comfy`` the ComfyUI at ``library`` (see the module docstring); idempotent.

    ``kind`` is "lib" (ComfyUI's library folder, default :func:`default_library`) or "checkout" (a
    ComfyUI checkout, whose torchvision may also come from the library folder or ``IP2P_SERVER_SITE``).
    Raises :class:`HostError` with the fix when the host is missing; for a missing library,
    ``import comfy`` then raises the same message.
    """
    library = Path(library) if library is not None else default_library()
    if kind == "lib":
        problem = library_problem(library)
        if problem is not None:
            if not any(isinstance(finder, MissingLibrary) for finder in sys.meta_path):
                sys.meta_path.insert(0, MissingLibrary(problem))
            raise HostError(problem)
        torchvision_folders: tuple[Path, ...] = (library,)
    elif kind == "checkout":
        if not (library / "comfy" / "sd.py").is_file():
            raise HostError(f"{library} is not a ComfyUI checkout (no comfy/sd.py); point COMFYUI_PATH at one.")
        server_site = Path(os.environ.get("IP2P_SERVER_SITE", ROOT / ".cache" / "comfy-server-site"))
        torchvision_folders = (server_site, default_library())
    else:
        raise ValueError(f"kind is {kind!r}; expected 'lib' or 'checkout'")
    make_torchvision_importable(torchvision_folders)  # before the host goes on sys.path: the library holds one too
    if str(library) not in sys.path:
        if kind == "checkout":
            sys.path.insert(0, str(library))  # its comfy and server modules come first
        else:
            sys.path.append(str(library))  # appended: it can shadow nothing of ours
    import comfy.cli_args

    if "comfy.model_management" in sys.modules and comfy.cli_args.args.cpu != cpu:
        raise HostError(
            "comfy.model_management was imported before the host set --cpu; call prepare_host before importing comfy."
        )
    comfy.cli_args.args.cpu = cpu
    host = ComfyHost(library=library, kind=kind)
    for name, make in STANDINS.items():
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = make()
            sys.modules[name].IP2P_STANDIN = True
        if getattr(sys.modules.get(name), "IP2P_STANDIN", False):
            host.standins.append(name)
    return host


def import_pack() -> types.ModuleType:
    """The repository imported as ComfyUI imports a custom node: the package ``comfyui_ip2p``.

    Its core is then ``pack.ip2p``, a different module from the installed ``ip2p``: catch
    ``pack.ip2p.errors.IP2PError`` for errors raised by nodes.
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
    if not module.NODE_CLASS_MAPPINGS:
        del sys.modules[PACKAGE_NAME]
        raise HostError("the pack registered no nodes: ComfyUI's comfy package is not importable (call prepare_host)")
    return module


def import_comfy_extra(name: str) -> types.ModuleType:
    """``comfy_extras.<name>``, whose ``import nodes`` gets ComfyUI's constants where no server is loaded.

    Several comfy_extras modules read only ``nodes.MAX_RESOLUTION`` from the server's ``nodes``
    module. Without a server, a stand-in holding the constant is in ``sys.modules["nodes"]`` while
    the module imports, and removed afterwards (our repository has a ``nodes`` package too).
    """
    real = sys.modules.get("nodes")
    if real is not None and hasattr(real, "NODE_CLASS_MAPPINGS") and hasattr(real, "MAX_RESOLUTION"):
        return importlib.import_module(f"comfy_extras.{name}")
    standin = types.ModuleType("nodes", "Stand-in for ComfyUI's server module nodes (its constants only).")
    standin.MAX_RESOLUTION = MAX_RESOLUTION
    sys.modules["nodes"] = standin
    try:
        return importlib.import_module(f"comfy_extras.{name}")
    finally:
        if real is None:
            sys.modules.pop("nodes", None)
        else:
            sys.modules["nodes"] = real
