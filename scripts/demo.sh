#!/usr/bin/env bash
# The README's main job: `ip2p demo`, i.e. `ip2p edit` end to end on the embedded default model.
# Sets up what it needs first (a .venv with the CPU torch wheel and the headless extra).
#
#   scripts/demo.sh [--out DIR] [--steps N] [--seed S]
#
# Until the trainer's toy model exists the embedded default has RANDOM weights: the demo proves the
# plumbing (build, save, load, dual-guidance sampling, PNG metadata), not the quality of an edit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${IP2P_VENV:-$root/.venv}
export HF_HUB_OFFLINE=1

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import ip2p.cli, diffusers, transformers" 2>/dev/null; then
    echo "demo.sh: installing into $venv"
    "$venv/bin/python" -m pip install --quiet "torch==2.13.0"  # pinned: anything else pulls a CUDA build
    "$venv/bin/python" -m pip install --quiet -e '.[headless]'
fi
exec "$venv/bin/ip2p" demo "$@"
