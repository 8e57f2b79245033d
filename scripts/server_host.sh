#!/usr/bin/env bash
# Prepares what a full ComfyUI server needs beyond our venv, for the tests/server suite.
#
# - Pure-Python server dependencies (aiohttp, av, alembic, SQLAlchemy, ...) go into the venv; a
#   constraints file pins the installed torch so nothing can pull another torch build.
# - torchvision (and spandrel, which needs it) go into their own folder ($IP2P_SERVER_SITE, default
#   .cache/comfy-server-site) that only the server subprocess sees through PYTHONPATH: installed in
#   the venv, transformers would import torchvision in our headless tests. PyPI's torchvision 0.28.0 is CUDA-linked; beside the CPU torch
#   wheel its Python parts work once `torchvision._meta_registrations` is pre-registered, which the
#   sitecustomize.py written here does at interpreter start-up.
#   Without spandrel, UpscaleModelLoader is missing and frontend 1.27 fails to build any
#   checkpoint-loader node (a real install has it, so the test host has it too).
# - No frontend package: the suite starts the server with --front-end-root on an empty folder.
#
# Usage: scripts/server_host.sh            (PYTHON=... to pick the interpreter; idempotent)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
site=${IP2P_SERVER_SITE:-$root/.cache/comfy-server-site}
torchvision_version=${IP2P_TORCHVISION_VERSION:-0.28.0}
spandrel_version=0.4.2

if [ ! -x "$py" ]; then
    echo "server_host.sh: no Python interpreter at $py; create the venv first or set PYTHON=..." >&2
    exit 1
fi

torch_version=$("$py" -c 'import torch; print(torch.__version__)')
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==$torch_version" >"$constraints"

# What ComfyUI imports at start-up (its requirements.txt), minus torch/torchvision/torchaudio, the
# frontend packages and the optional torch-based extras (kornia; spandrel is below).
"$py" -m pip install --quiet --constraint "$constraints" \
    "aiohttp>=3.11.8" "yarl>=1.18.0" "av>=14.2.0" alembic SQLAlchemy "pydantic~=2.0" "pydantic-settings~=2.0" \
    requests torchsde scipy psutil tqdm pyyaml pillow einops "numpy>=1.25.0" "safetensors>=0.4.2" \
    "tokenizers>=0.13.3" "transformers>=4.37.2" sentencepiece

stamp="$site/.installed-torchvision-$torchvision_version-spandrel-$spandrel_version"
if [ ! -f "$stamp" ]; then
    rm -rf "$site"
    mkdir -p "$site"
    "$py" -m pip install --quiet --no-deps --target "$site" "torchvision==$torchvision_version" "spandrel==$spandrel_version"
    touch "$stamp"
fi

cat >"$site/sitecustomize.py" <<'EOF'
"""Runs at start-up of the ComfyUI server that tests/server launches (this folder is on its PYTHONPATH).

PyPI's torchvision is CUDA-linked; beside the CPU torch wheel its C++ ops do not load, and the module
that registers their meta kernels fails at import. An empty stand-in lets the Python parts import.
"""

import sys
import types

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
EOF

PYTHONPATH="$site" "$py" -c 'import torchvision, spandrel, av, aiohttp, sqlalchemy, alembic, torchsde'
echo "server host ready: PYTHONPATH=$site"
