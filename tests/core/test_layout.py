"""The layout's rules (docs/architecture.md), checked on the source so a violation fails here first."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "ip2p"
# Names ComfyUI or notcomfy own at the top level of site-packages; a package of ours must not shadow them.
TAKEN_TOP_LEVEL = {"train", "tests", "utils", "nodes", "models", "comfy", "comfy_extras", "app"}


def _imports(path: Path, module_level_only: bool = False) -> set[str]:
    """Absolute module names a file imports (relative imports are within the package by rule).

    ``module_level_only``: what importing the file loads, leaving out imports inside functions.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level_only else ast.walk(tree)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _top(name: str) -> str:
    return name.split(".")[0]


CORE_FILES = sorted(CORE.rglob("*.py"))


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_never_imports_comfy_nor_itself_by_absolute_name(path):
    tops = {_top(name) for name in _imports(path)}
    assert not tops & {"comfy", "comfy_extras", "nodes", "folder_paths"}, "the core knows nothing of ComfyUI"
    assert "ip2p" not in tops, "inside ip2p/ imports are relative, so the package also works as a ComfyUI subpackage"


DIFFUSERS_FREE = sorted(CORE.glob("*.py")) + sorted((CORE / "formats").glob("*.py"))


@pytest.mark.parametrize("path", DIFFUSERS_FREE, ids=lambda p: str(p.relative_to(ROOT)))
def test_formats_and_the_pure_modules_load_without_diffusers(path):
    tops = {_top(name) for name in _imports(path, module_level_only=True)}
    assert not tops & {"diffusers", "transformers", "accelerate"}, "the ComfyUI nodes import these modules"


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_every_package_folder_is_installed():
    config = _setuptools()
    folders = {config["package-dir"].get(name, name.replace(".", "/")): name for name in config["packages"]}
    for init in sorted(CORE.rglob("__init__.py")):
        folder = init.parent.relative_to(ROOT).as_posix()
        assert folder in folders, f"{folder} is a package but pyproject.toml does not install it"


def test_no_installed_package_takes_a_generic_top_level_name():
    tops = {_top(name) for name in _setuptools()["packages"]}
    assert not tops & TAKEN_TOP_LEVEL
    assert _setuptools()["package-dir"]["ip2p_train"] == "train"
