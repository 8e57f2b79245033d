"""How much CPU other processes use while a benchmark runs, and timed runs kept only when that was little.

Every timed run is bracketed by a :class:`CpuWindow` that measures how much CPU *other* processes
used meanwhile (system busy time from /proc/stat minus this process's own time). :func:`timed_clean`
discards a run where others used more than ``Noise.max_other_cpu`` cores and repeats it; the count
of discarded runs goes into the result.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger("bench")


def _system_busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy since boot (all cores), or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process (every thread) and of its waited-for children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class CpuWindow:
    """Measures the CPU that other processes use between ``start`` and ``stop``, in cores."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.busy = _system_busy_seconds()
        self.own = _own_seconds()

    def stop(self) -> float | None:
        busy = _system_busy_seconds()
        if busy is None or self.busy is None:
            return None
        wall = max(time.perf_counter() - self.wall, 1e-6)
        others = (busy - self.busy) - (_own_seconds() - self.own)
        return max(others, 0.0) / wall


def wait_for_quiet(max_other_cpu: float, max_wait: float) -> float | None:
    """Wait (up to ``max_wait`` s) until other processes use at most ``max_other_cpu`` cores."""
    deadline = time.monotonic() + max_wait
    while True:
        window = CpuWindow()
        time.sleep(0.5)
        others = window.stop()
        if others is None or others <= max_other_cpu or time.monotonic() >= deadline:
            return others
        logger.info("waiting for a quiet machine: other processes use %.2f cores", others)
        time.sleep(1.0)


@dataclass
class Noise:
    """How a worker keeps other processes out of its timings (from the command line)."""

    max_other_cpu: float = 0.10  # cores other processes may use during a kept run
    max_attempts: int = 3  # timed runs per sample before the least noisy one is kept anyway
    quiet_wait: float = 20.0  # seconds to wait for a quiet machine before each timed run


@dataclass
class Timed:
    """One kept timed run: what it measured, and how noisy the machine was."""

    values: dict
    others: float | None  # cores used by other processes during the kept run
    discarded: int  # runs thrown away because other processes used the CPU
    clean: bool  # False when every attempt was noisy and the least noisy was kept
    discarded_others: list[float] = field(default_factory=list)


def timed_clean(run: Callable[[], dict], noise: Noise, label: str) -> Timed:
    """Run ``run`` until one run is free of other processes' CPU use (or attempts run out)."""
    discarded: list[float] = []
    fallback: tuple[float, dict] | None = None
    for attempt in range(1, noise.max_attempts + 1):
        wait_for_quiet(noise.max_other_cpu, noise.quiet_wait)
        window = CpuWindow()
        values = run()
        others = window.stop()
        if others is None or others <= noise.max_other_cpu:
            logger.info("%s: %s (others %s cores)", label, _fmt(values), _fmt(others))
            return Timed(values, others, len(discarded), True, discarded)
        logger.warning(
            "%s: discarded attempt %d/%d, other processes used %.2f cores", label, attempt, noise.max_attempts, others
        )
        discarded.append(others)
        if fallback is None or others < fallback[0]:
            fallback = (others, values)
    others, values = fallback
    logger.warning("%s: every attempt was noisy; keeping the least noisy (%.2f cores)", label, others)
    return Timed(values, others, len(discarded) - 1, False, discarded)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)
