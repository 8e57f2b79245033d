"""How far apart the float computations that tests compare are, under each CPU kernel setting.

Runs the tests marked ``numerics`` (the kernels suite's selection, CONTRIBUTING.md "Numerics") once
per kernel setting, each in its own pytest process, and records every comparison they make:
``torch.testing.assert_close``, ``pytest.approx`` and passing ``assert measured <= allowed`` (pytest's
assertion-pass hook, on a private bytecode cache). Prints one JSON line per comparison on stdout:

    {"test": nodeid, "site": "tests/...py:LINE", "call": n, "kind": "assert_close" | "approx" | "bound",
     "allowed": {"atol": ..., "rtol": ...}, "within": {"ATEN=avx2 ONEDNN=unset": max |a - b|, ...},
     "across_settings": max |a - b|, "worst": ..., "margin": allowed / worst}

``within``: what the test itself compares, under each setting. ``across_settings``: side a under
one setting against side b under any setting, i.e. what the comparison would see on a processor where
the two sides' kernels are chosen differently (the spread between kernel levels; this is how a
difference that is 0 on one processor shows up here; an upper proxy, since it also counts the inputs a test
draws with ``torch.randn``, whose vectorised kernel rounds differently per level). ``worst`` is the larger of the two, ``margin``
the allowed tolerance over it (null where every value was bit-identical). A relative comparison
(``pytest.approx(rel=...)``) gives relative differences; a hand-written bound (``kind: bound``) gives
``within`` only, and so does a float64 comparison (its inputs, drawn in float32, differ across settings).
Then one line per setting with its pass/fail counts and seconds (``"setting": ...``).

Settings: the kernels suite's own (scripts/test.sh kernels: ATEN_CPU_CAPABILITY in default, avx2,
avx512 × ONEDNN_MAX_CPU_ISA in AVX2, unset; avx512 only on a processor with AVX-512, where torch
would otherwise stop on an illegal instruction) and, with ``--extra``, other kernel paths this
processor has: oneDNN at SSE4.1, MKL at SSE4.2, one thread instead of all.

    .venv/bin/python bench/kernel_spread.py                  # the suite's settings
    .venv/bin/python bench/kernel_spread.py --extra          # and the extra ones
    .venv/bin/python bench/kernel_spread.py -- -k guider     # ARGS after -- go to pytest
    .venv/bin/python bench/kernel_spread.py --setting ATEN_CPU_CAPABILITY=default --setting OMP_NUM_THREADS=1

The recorder also rides along a kernels-suite run, so that the suite's settings need not run twice;
``--log`` then adds settings to its records and ``--report-only`` reports on them:

    IP2P_KERNEL_SPREAD_LOG=/tmp/spread/records.jsonl PYTHONPATH=bench PYTHONPYCACHEPREFIX=/tmp/spread/pycache \
        bash scripts/test.sh kernels -p kernel_spread -o enable_assertion_pass_hook=true
    .venv/bin/python bench/kernel_spread.py --log /tmp/spread/records.jsonl --setting ONEDNN_MAX_CPU_ISA=SSE41

Needs the environment scripts/test.sh sets up (the venv and ComfyUI's library in .cache/comfy-lib).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["tests/core", "tests/headless", "tests/train", "tests/comfy_lib"]
LOG_VARIABLE = "IP2P_KERNEL_SPREAD_LOG"


# -- the settings -------------------------------------------------------------------------------------


def has_avx512(python: str) -> bool:
    """Whether torch on this processor can run its AVX-512 kernels (its own detection, no override)."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    found = subprocess.run([python, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    return found.strip().startswith("AVX512")


def settings(python: str, extra: bool) -> list[dict[str, str]]:
    capabilities = ["default", "avx2"] + (["avx512"] if has_avx512(python) else [])
    chosen = [
        {"ATEN_CPU_CAPABILITY": aten, **({"ONEDNN_MAX_CPU_ISA": isa} if isa else {})}
        for aten in capabilities
        for isa in ("AVX2", None)
    ]
    if extra:
        chosen += [{"ONEDNN_MAX_CPU_ISA": "SSE41"}, {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, {"OMP_NUM_THREADS": "1"}]
    return chosen


def label(setting: Mapping[str, str]) -> str:
    names = {"ATEN_CPU_CAPABILITY": "ATEN", "ONEDNN_MAX_CPU_ISA": "ONEDNN", "MKL_ENABLE_INSTRUCTIONS": "MKL",
             "OMP_NUM_THREADS": "THREADS"}  # fmt: skip
    shown = dict(setting)
    if "ATEN_CPU_CAPABILITY" in shown and "ONEDNN_MAX_CPU_ISA" not in shown:
        shown["ONEDNN_MAX_CPU_ISA"] = "unset"
    return " ".join(f"{names[k]}={v}" for k, v in shown.items())


# -- the recorder: loaded into each pytest process with -p kernel_spread ----------------------------------

SETTING_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS")


def current_setting() -> str:
    return label({k: os.environ[k] for k in SETTING_VARIABLES if k in os.environ}) or "native"


def _append(record: dict) -> None:
    record["setting"] = current_setting()
    with open(os.environ[LOG_VARIABLE], "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")


def _site() -> str:
    for frame in reversed(traceback.extract_stack()[:-3]):
        path = Path(frame.filename)
        if "tests" in path.parts and path.name != "numerics.py":
            return f"{path.relative_to(ROOT)}:{frame.lineno}"
    return "?"


def _differences(actual, expected):
    """(max |a - b|, max |a - b| / |b|) over every float pair of two matching structures, or None."""
    import torch

    if isinstance(actual, Mapping) and isinstance(expected, Mapping):
        pairs = [_differences(actual[k], expected[k]) for k in actual if k in expected]
    elif isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor):
        if actual.shape != expected.shape or not actual.is_floating_point() or actual.numel() == 0:
            return None
        a, b = actual.detach().double().cpu(), expected.detach().double().cpu()
        gap = (a - b).abs()
        return float(gap.max()), float((gap / b.abs()).nan_to_num(0.0, posinf=0.0).max())
    elif isinstance(actual, Sequence) and isinstance(expected, Sequence) and not isinstance(actual, str):
        pairs = [_differences(a, b) for a, b in zip(actual, expected, strict=False)]
    elif isinstance(actual, (int, float)) and isinstance(expected, (int, float)):
        gap = abs(float(actual) - float(expected))
        return gap, gap / abs(expected) if expected else 0.0
    else:
        return None
    pairs = [p for p in pairs if p is not None]
    return (max(p[0] for p in pairs), max(p[1] for p in pairs)) if pairs else None


_calls: dict[tuple[str, str], int] = {}


def _record(kind: str, actual, expected, **allowed) -> None:
    import torch

    found = _differences(actual, expected)
    if found is None:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
    site = _site()
    call = _calls[test, site] = _calls.get((test, site), -1) + 1  # the n-th comparison at this site in this test
    record = {"test": test, "site": site, "call": call, "kind": kind, "max_abs": found[0], "max_rel": found[1],
              "allowed": {k: v for k, v in allowed.items() if isinstance(v, (int, float))}}  # fmt: skip
    if isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor):
        # Both sides kept, so that the runner can also compare them across settings (one kernel choice against another).
        sides = Path(os.environ[LOG_VARIABLE]).with_suffix("") / f"{os.getpid()}-{len(_calls)}-{call}.pt"
        sides.parent.mkdir(exist_ok=True)
        torch.save((actual.detach().double().cpu(), expected.detach().double().cpu()), sides)
        record["sides"], record["dtype"] = str(sides), str(actual.dtype).removeprefix("torch.")
    elif isinstance(actual, (int, float)) and isinstance(expected, (int, float)):
        record["sides"] = [float(actual), float(expected)]
    _append(record)


def pytest_configure(config) -> None:
    if LOG_VARIABLE not in os.environ:
        return
    import _pytest.approx
    import torch

    assert_close = torch.testing.assert_close

    def recorded_assert_close(actual, expected, *args, **kwargs):
        _record("assert_close", actual, expected, atol=kwargs.get("atol"), rtol=kwargs.get("rtol"))
        return assert_close(actual, expected, *args, **kwargs)

    torch.testing.assert_close = recorded_assert_close
    scalar_eq = _pytest.approx.ApproxScalar.__eq__

    def recorded_eq(self, actual):
        if isinstance(self.expected, (int, float)) and isinstance(actual, (int, float)):
            _record("approx", actual, self.expected, rel=self.rel, abs=self.abs)
        return scalar_eq(self, actual)

    _pytest.approx.ApproxScalar.__eq__ = recorded_eq


_NUMBER = r"(?:[\w.]+\()?(-?[\d.]+(?:e[-+]?\d+)?|inf|nan)\)?"
_BOUND = re.compile(rf"^{_NUMBER} <=? {_NUMBER}$")


def pytest_assertion_pass(item, lineno, orig, expl) -> None:
    """``assert measured <= allowed``: a hand-written tolerance (e.g. ``difference <= TOLERANCE``)."""
    match = _BOUND.match(expl.splitlines()[0].strip()) if LOG_VARIABLE in os.environ else None
    if match and " <" in orig:
        measured, allowed = (float(x) for x in match.groups())
        record = {"test": item.nodeid, "site": f"{Path(item.path).relative_to(ROOT)}:{lineno}", "kind": "bound",
                  "max_abs": measured, "max_rel": None, "allowed": {"bound": allowed}}  # fmt: skip
        _append(record)


# -- the runner ----------------------------------------------------------------------------------------


def run_setting(python: str, setting: dict[str, str], pytest_args: list[str], log: Path) -> dict:
    workdir = log.parent
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    env.update(setting)
    env.update({
        LOG_VARIABLE: str(log),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "bench"), env.get("PYTHONPATH")])),
        "PYTHONPYCACHEPREFIX": str(workdir / "pycache"),  # assertions rewritten with the pass hook, kept apart
        "IP2P_COMFY_LIB": env.get("IP2P_COMFY_LIB", str(ROOT / ".cache" / "comfy-lib")),
        "HF_HUB_OFFLINE": "1",
    })  # fmt: skip
    command = [python, "-m", "pytest", *PATHS, "-m", "numerics", "-q", "-p", "no:cacheprovider", "-p", "kernel_spread",
               "-o", "enable_assertion_pass_hook=true", *pytest_args]  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.monotonic() - start
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|error|errors|skipped|deselected)", tail)}
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + "\n")
    return {"setting": label(setting), "returncode": done.returncode, **counts, "seconds": round(seconds, 1)}


def _sides(record):
    import torch

    sides = record.get("sides")
    return torch.load(sides) if isinstance(sides, str) else sides


def cross_spread(by_setting: dict[str, dict], relative: bool) -> float | None:
    """The largest |a - b| (or |a - b| / |b|) with side a under one setting and side b under any setting:
    what the comparison would see where the two sides' kernels are chosen differently (another processor)."""
    import torch

    loaded = {name: _sides(record) for name, record in by_setting.items() if record.get("sides") is not None}
    worst = None
    for a, _ in loaded.values():
        for _, b in loaded.values():
            if isinstance(a, torch.Tensor):
                if a.shape != b.shape:
                    continue
                gap = (a - b).abs()
                value = float((gap / b.abs()).nan_to_num(0.0, posinf=0.0).max() if relative else gap.max())
            else:
                value = abs(a - b) / abs(b) if relative and b else abs(a - b)
            worst = value if worst is None else max(worst, value)
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra", action="store_true", help="also oneDNN SSE4.1, MKL SSE4.2 and one thread")
    parser.add_argument("--setting", action="append", metavar="VAR=VALUE[,VAR=VALUE]",
                        help="run these settings instead (repeatable), e.g. --setting ATEN_CPU_CAPABILITY=default")  # fmt: skip
    parser.add_argument("--log", type=Path, help="keep the records in this file (appended) and report on all it holds")
    parser.add_argument("--report-only", action="store_true", help="run nothing: report on the records of --log")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the test venv")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest (e.g. -k guider)")
    args = parser.parse_args(argv)
    if args.report_only and not args.log:
        parser.error("--report-only needs --log")

    summaries = []
    with tempfile.TemporaryDirectory(prefix="kernel-spread-") as tmp:
        log = args.log.resolve() if args.log else Path(tmp) / "records.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()
        chosen = [dict(v.split("=", 1) for v in given.split(",")) for given in args.setting or []]
        for setting in [] if args.report_only else chosen or settings(args.python, args.extra):
            sys.stderr.write(f"kernel_spread: {label(setting)}\n")
            summaries.append(run_setting(args.python, setting, args.pytest_args, log))
        comparisons: dict[tuple, dict[str, dict]] = {}  # (test, site, call, kind) -> {setting: record}
        for line in log.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            comparisons.setdefault((r["test"], r["site"], r.get("call", 0), r["kind"]), {})[r["setting"]] = r
        for (test, site, call, kind), by_setting in sorted(comparisons.items(), key=lambda item: (item[0][1], item[0])):
            allowed = next(iter(by_setting.values()))["allowed"]
            relative = kind == "approx" and bool(allowed.get("rel"))
            within = {name: r["max_rel"] if relative else r["max_abs"] for name, r in by_setting.items()}
            # float64 comparisons check algebra within one process: their inputs (drawn in float32) differ across
            # settings, so a cross-setting figure would measure the draw, not the comparison
            float64 = next(iter(by_setting.values())).get("dtype") == "float64"
            across = None if float64 else cross_spread(by_setting, relative)
            worst = max([*within.values(), *([across] if across is not None else [])])
            bound = allowed.get("bound", allowed.get("rel") if relative else allowed.get("atol"))
            margin = bound / worst if bound is not None and worst > 0 and math.isfinite(worst) else None
            line = {"test": test, "site": site, "call": call, "kind": kind, "allowed": allowed, "within": within,
                    "across_settings": across, "worst": worst,
                    "margin": None if margin is None else round(margin, 1)}  # fmt: skip
            sys.stdout.write(json.dumps(line) + "\n")
    for summary in summaries:
        sys.stdout.write(json.dumps(summary) + "\n")
    return max([s["returncode"] for s in summaries], default=0)


if __name__ == "__main__":
    sys.exit(main())
