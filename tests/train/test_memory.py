"""A process training a large model on a CPU gives freed activation-sized memory back to the system at
once (glibc, Linux); one training a small model keeps the allocator's faster default.

Each case runs in its own process (the allocator's settings are per process): 200 one-MiB tensors,
each allocated beside a smaller (96 KiB) long-lived one, as a backward pass frees activations while it
allocates gradients; then the big ones are freed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from ip2p_train.memory import LARGE_MODEL_PARAMETERS, return_freed_memory

    def rss():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024

    if sys.argv[1] == "large":
        assert return_freed_memory(LARGE_MODEL_PARAMETERS)
    if sys.argv[1] == "small":
        assert not return_freed_memory(LARGE_MODEL_PARAMETERS - 1)
    x = torch.ones(1 << 20); del x  # a freed 4 MB block: by default glibc raises its mmap threshold past it
    keep, big = [], []
    for _ in range(200):
        big.append(torch.ones(1 << 18))  # 1 MiB
        keep.append(torch.ones(24576))  # 96 KiB: too big for the small holes an import may leave below
    before = rss(); del big
    print((before - rss()) / 2**20)
    """
)


def _returned_mib(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_freed_activation_sized_tensors_go_back_to_the_system_when_a_large_model_trains():
    assert _returned_mib("large") >= 190  # of 200 MiB freed
    assert _returned_mib("small") <= 50  # the allocator's default keeps them: the setting is what returns them
