#!/usr/bin/env bash
# The README's main job: `ip2p demo`: the shipped toy model (trained by `ip2p train`) edits held-out
# toy images through `ip2p edit`, and the edits are scored against the true edits and two baselines.
# Sets up what it needs first (a .venv with the CPU torch wheel and the headless extra; `--train`
# needs the train extra, installed when asked for).
#
#   scripts/demo.sh [--out DIR] [--steps N] [--seed S] [--examples N] [--train]
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
if [[ " $* " == *" --train "* ]] && ! "$venv/bin/python" -c "import ip2p_train, yaml" 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet -e '.[train]'
fi
exec "$venv/bin/ip2p" demo "$@"
