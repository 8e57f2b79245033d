"""A process training a large model on a CPU hands the memory that backward frees back to the system while
backward runs (glibc, Linux); one training a small model keeps the allocator's default.

Each case runs in its own process (the allocator's state is per process): 200 one-MiB tensors, each
allocated beside a smaller (96 KiB) long-lived one, stand for the activations a backward pass frees; once
they are freed, a backward pass over 16 trainable tensors completes 16 gradients.
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
    from ip2p_train.memory import LARGE_MODEL_PARAMETERS, TRIM_EVERY_GRADIENTS, trim_heap_during_backward

    def rss():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024

    trainable = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2 * TRIM_EVERY_GRADIENTS)]
    size = LARGE_MODEL_PARAMETERS if sys.argv[1] == "large" else LARGE_MODEL_PARAMETERS - 1
    assert trim_heap_during_backward(size, trainable) == (sys.argv[1] == "large")
    x = torch.ones(1 << 20); del x  # a freed 4 MB block: by default glibc raises its mmap threshold past it
    keep, activations = [], []
    for _ in range(200):
        activations.append(torch.ones(1 << 18))  # 1 MiB
        keep.append(torch.ones(24576))  # 96 KiB: too big for the small holes an import may leave below
    del activations
    before = rss()
    sum(t.sum() for t in trainable).backward()
    print((before - rss()) / 2**20)
    """
)


def _returned_mib(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_memory_freed_before_backward_goes_back_to_the_system_when_a_large_model_trains():
    assert _returned_mib("large") >= 190  # of 200 MiB freed
    assert _returned_mib("small") <= 10  # the allocator's default keeps it: the trims are what return it
