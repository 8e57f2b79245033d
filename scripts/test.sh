#!/usr/bin/env bash
# The project's test command. Installs what the tests need (once; re-runs skip finished steps), then
# runs a suite and exits with pytest's code.
#
#   scripts/test.sh [ARGS...]          default suite: tests/core tests/headless tests/train tests/comfy_lib
#   scripts/test.sh server [ARGS...]   full ComfyUI server suite: tests/server
#   scripts/test.sh learning [ARGS...] the trainer learns: a 2,000-step toy run, the toy recipe at full length (~35 min)
#   scripts/test.sh deepspeed [ARGS...] DeepSpeed ZeRO-2 on two CPU processes: tests/deepspeed (~1 min; installs
#                                      DeepSpeed into its own folder, which only this suite puts on the path)
#   scripts/test.sh kernels [ARGS...]  the tests that compare float computations (marker `numerics`, in the default
#                                      suite's folders) once per CPU kernel setting: ATEN_CPU_CAPABILITY in default,
#                                      avx2, avx512 (only where the processor has AVX-512) × ONEDNN_MAX_CPU_ISA in
#                                      AVX2, unset; fails if any setting fails (CONTRIBUTING.md, "Numerics")
#
# ARGS go to pytest. Needs python3 (3.10+) with pip; the CPU torch wheel must be installable by pip.
# Environment:
#   IP2P_VENV      the virtual environment (default: .venv at the repository root; created if missing)
#   IP2P_COMFY_LIB where ComfyUI's library is installed (default: .cache/comfy-lib)
#   IP2P_DEEPSPEED_LIB where the deepspeed suite installs DeepSpeed (default: .cache/deepspeed-lib)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

suite=default
if [ "${1:-}" = server ] || [ "${1:-}" = learning ] || [ "${1:-}" = deepspeed ] || [ "${1:-}" = kernels ]; then
    suite=$1
    shift
fi

# Pinned: an unpinned torch would pull a multi-GB CUDA build. torchvision and notcomfy go to their
# own folder with --no-deps for the same reason (see ip2p_hosts/install_comfy_lib.py).
torch_version=2.13.0
torchvision_version=0.28.0
notcomfy_version=0.1.0
open_clip_version=3.3.0
torchsde_version=0.2.6
deepspeed_version=0.19.8

venv=${IP2P_VENV:-$root/.venv}
comfy_lib=${IP2P_COMFY_LIB:-$root/.cache/comfy-lib}
export IP2P_COMFY_LIB=$comfy_lib
export HF_HUB_OFFLINE=1

if [ ! -x "$venv/bin/python" ]; then
    echo "test.sh: creating the virtual environment $venv"
    python3 -m venv "$venv"
fi
py=$venv/bin/python

# 1. The venv: torch first, then the project with its test extra, then the pure-Python modules that
#    ComfyUI's library imports, and open_clip_torch for the CLIP vocabulary it carries (both without
#    their dependencies, so they cannot touch torch).
venv_key="torch=$torch_version torchsde=$torchsde_version open_clip=$open_clip_version project=$(sha256sum pyproject.toml | cut -c1-16)"
venv_stamp=$venv/.ip2p-test-install
if [ "$(cat "$venv_stamp" 2>/dev/null)" != "$venv_key" ]; then
    echo "test.sh: installing into $venv"
    "$py" -m pip install --quiet "torch==$torch_version"
    "$py" -m pip install --quiet -e '.[test]'
    "$py" -m pip install --quiet scipy pyyaml psutil tqdm einops trampoline
    "$py" -m pip install --quiet --no-deps "torchsde==$torchsde_version" "open_clip_torch==$open_clip_version"
    echo "$venv_key" >"$venv_stamp"
fi

# 2. ComfyUI's library (comfy, comfy_extras) in its own folder, completed by ip2p_hosts.install_comfy_lib.
lib_key="$("$py" -V) notcomfy=$notcomfy_version torchvision=$torchvision_version host=$(sha256sum ip2p_hosts/install_comfy_lib.py | cut -c1-16)"
lib_stamp=$comfy_lib/.ip2p-comfy-lib
if [ "$(cat "$lib_stamp" 2>/dev/null)" != "$lib_key" ]; then
    echo "test.sh: installing ComfyUI's library into $comfy_lib"
    rm -rf "$comfy_lib"
    "$py" -m pip install --quiet --no-deps --target "$comfy_lib" \
        "notcomfy==$notcomfy_version" "torchvision==$torchvision_version"
    "$py" -m ip2p_hosts.install_comfy_lib "$comfy_lib"
    echo "$lib_key" >"$lib_stamp"
fi

if [ "$suite" = server ]; then
    # --- Server suite hook: scripts/server_host.sh (owned by the server suite) installs what a full
    # --- ComfyUI server needs beyond the venv; the suite itself finds the checkout via COMFYUI_PATH.
    if [ -f scripts/server_host.sh ]; then
        PYTHON=$py bash scripts/server_host.sh
    fi
    paths=(tests/server)
elif [ "$suite" = deepspeed ]; then
    # DeepSpeed and its pure-Python needs, without dependencies (torch stays the pinned CPU wheel; its setup reads
    # the installed torch, hence no build isolation). Its CPU communication op is compiled on first use (g++, ninja).
    deepspeed_lib=${IP2P_DEEPSPEED_LIB:-$root/.cache/deepspeed-lib}
    ds_key="$("$py" -V) deepspeed=$deepspeed_version"
    if [ "$(cat "$deepspeed_lib/.ip2p-deepspeed" 2>/dev/null)" != "$ds_key" ]; then
        echo "test.sh: installing DeepSpeed into $deepspeed_lib"
        rm -rf "$deepspeed_lib"
        "$py" -m pip install --quiet --no-deps --no-build-isolation --target "$deepspeed_lib" \
            "deepspeed==$deepspeed_version" "hjson==3.1.0" "msgpack==1.2.4" "ninja==1.13.2" "py-cpuinfo==9.0.0"
        echo "$ds_key" >"$deepspeed_lib/.ip2p-deepspeed"
    fi
    export PYTHONPATH="$deepspeed_lib${PYTHONPATH:+:$PYTHONPATH}" PATH="$deepspeed_lib/bin:$PATH"
    paths=(tests/deepspeed)
elif [ "$suite" = learning ]; then
    paths=(tests/learning)  # the trainer learns: the toy world's bar after 2,000 steps and after the full recipe
else
    paths=(tests/core tests/headless tests/train tests/comfy_lib)
fi

if [ "$suite" = kernels ]; then
    # float32 results depend on the kernels the processor selects (instruction set, batch size): each setting runs the
    # `numerics` tests in its own pytest process (torch and oneDNN read these variables once, at start). A later -m in
    # ARGS replaces `-m numerics`. Forcing avx512 on a processor without it stops torch on an illegal instruction, so
    # that level runs only where torch itself detects AVX-512.
    native=$(env -u ATEN_CPU_CAPABILITY "$py" -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    status=0
    results=()
    for aten in default avx2 avx512; do
        if [ "$aten" = avx512 ] && [[ "$native" != AVX512* ]]; then
            results+=("ATEN_CPU_CAPABILITY=avx512: not run, this processor has no AVX-512 (torch detects $native)")
            continue
        fi
        for isa in AVX2 unset; do
            setting="ATEN_CPU_CAPABILITY=$aten ONEDNN_MAX_CPU_ISA=$isa"
            echo "test.sh: kernels: $setting"
            onednn=(ONEDNN_MAX_CPU_ISA="$isa")
            [ "$isa" = unset ] && onednn=(-u ONEDNN_MAX_CPU_ISA)
            start=$SECONDS
            code=0
            env "${onednn[@]}" ATEN_CPU_CAPABILITY="$aten" "$py" -m pytest "${paths[@]}" -m numerics "$@" 2>&1 |
                tee "$log" || code=$?
            [ "$code" -eq 5 ] && code=1  # no test collected: fail, as below
            counts=$(grep -E '^=* ?[0-9]+ (passed|failed|errors?)|no tests ran' "$log" | tail -n 1 | tr -d '=')
            results+=("$setting: exit $code, $((SECONDS - start)) s, $(echo $counts)")
            [ "$code" -eq 0 ] || status=1
        done
    done
    echo "test.sh: kernels suite, one line per setting:"
    printf '  %s\n' "${results[@]}"
    exit "$status"
fi

status=0
"$py" -m pytest "${paths[@]}" "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "test.sh: pytest collected no tests: failing" >&2
    status=1
fi
exit "$status"
