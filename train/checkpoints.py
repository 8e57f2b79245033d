"""The run folder: which checkpoints are complete, which one to resume, which to delete, metrics on disk.

A checkpoint is ``checkpoints/step-N/``: accelerate's ``save_state`` (model, optimizer, scheduler,
RNG states, EMA; a LoRA run's model file holds the trainable parameters only), the resolved
``config.yaml``, ``trainer_state.json`` (the step, the process count and, when the held-out set was
scored at that step, each metric's mean: what ``checkpoints.keep_best`` ranks, so a resumed run
knows its best too), and a ``complete`` marker written last. A folder without the marker (a save
cut short) is never resumed and never counted by the total limit; the next save of the same step
replaces it.

``metrics.jsonl`` holds one line per optimizer step (``loss``, ``lr``, …) and one per held-out
scoring (``{"step", "eval"}``); :func:`read_metrics` and :func:`read_evals` read each kind.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

from ip2p.errors import IP2PError
from ip2p.formats.atomic import atomic_file

CHECKPOINTS = "checkpoints"
COMPLETE = "complete"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step}"


def _steps(output_dir: str | Path) -> list[tuple[int, Path]]:
    folder = Path(output_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE).is_file()


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, folder), ...]`` of the complete checkpoints, oldest first."""
    return [(step, path) for step, path in _steps(output_dir) if is_complete(path)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    done = complete_checkpoints(output_dir)
    return done[-1][1] if done else None


def resolve_resume(resume: str, output_dir: str | Path) -> Path:
    """``--resume latest`` -> the highest complete checkpoint of the run; a path -> that complete checkpoint."""
    if resume == "latest":
        found = latest_checkpoint(output_dir)
        if found is None:
            raise IP2PError(
                f"--resume latest: {Path(output_dir) / CHECKPOINTS} holds no complete checkpoint. Start without "
                f"--resume, or point output_dir at the run to continue."
            )
        return found
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise IP2PError(f"--resume {resume}: no such checkpoint folder. Give `latest` or a checkpoints/step-N folder.")
    if not is_complete(path):
        raise IP2PError(
            f"--resume {resume}: the checkpoint is incomplete (no {COMPLETE!r} marker: its save was cut short). "
            f"Resume from an earlier one, or use --resume latest."
        )
    return path


def read_step(checkpoint: Path) -> int:
    try:
        return int(json.loads((checkpoint / STATE).read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IP2PError(f"{checkpoint / STATE} is missing or damaged ({exc}); resume from another checkpoint.") from exc


def prepare_step_dir(output_dir: str | Path, step: int) -> Path:
    """An empty ``checkpoints/step-N`` (a leftover incomplete or older one of the same step is replaced)."""
    path = step_dir(output_dir, step)
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def read_processes(checkpoint: Path) -> int | None:
    """The number of processes that wrote the checkpoint (None: a checkpoint older than the record)."""
    try:
        value = json.loads((checkpoint / STATE).read_text(encoding="utf-8")).get("processes")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) else None


def read_base_model_hash(checkpoint: Path) -> str | None:
    """The base a LoRA checkpoint's adapters were trained on (None: a full fine-tuning checkpoint)."""
    try:
        value = json.loads((checkpoint / STATE).read_text(encoding="utf-8")).get("base_model_hash")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def finish(
    checkpoint: Path,
    step: int,
    config_yaml: str,
    processes: int = 1,
    base_model_hash: str | None = None,
    evaluation: dict[str, float] | None = None,
) -> None:
    """Write the config, the trainer state and, last, the ``complete`` marker.

    ``base_model_hash``: a LoRA run's checkpoint holds the adapters only, so the base they sit on is recorded.
    ``evaluation``: the held-out means of this step's weights, by metric.
    """
    write_text_atomic(checkpoint / CONFIG, config_yaml)
    state = {"step": step, "processes": processes}
    if base_model_hash is not None:
        state["base_model_hash"] = base_model_hash
    if evaluation is not None:
        state["eval"] = evaluation
    write_text_atomic(checkpoint / STATE, json.dumps(state) + "\n")
    write_text_atomic(checkpoint / COMPLETE, f"step {step}\n")


def read_evaluation(checkpoint: Path) -> dict[str, float]:
    """The held-out means recorded with a checkpoint ({} when its step was not scored)."""
    try:
        value = json.loads((checkpoint / STATE).read_text(encoding="utf-8")).get("eval")
    except (OSError, ValueError, AttributeError):
        return {}
    return value if isinstance(value, dict) else {}


def best_checkpoint(output_dir: str | Path, metric: str) -> tuple[int, Path, float] | None:
    """``(step, folder, value)`` of the complete checkpoint with the best recorded ``metric`` (the latest of
    equals; lower or higher is better as :data:`ip2p.quality.metrics.HIGHER_IS_BETTER` says), None when none
    has a finite value."""
    from ip2p.quality.metrics import HIGHER_IS_BETTER

    sign = 1.0 if HIGHER_IS_BETTER.get(metric, True) else -1.0
    scored = [
        (step, path, value)
        for step, path in complete_checkpoints(output_dir)
        if isinstance(value := read_evaluation(path).get(metric), (int, float)) and math.isfinite(value)
    ]
    return max(scored, key=lambda s: (sign * s[2], s[0]), default=None)


def prune(output_dir: str | Path, total_limit: int | None, keep_best: str | None = None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``total_limit``, except the best by ``keep_best`` (a metric
    name); incomplete ones are left alone."""
    if total_limit is None:
        return []
    done = complete_checkpoints(output_dir)
    best = best_checkpoint(output_dir, keep_best) if keep_best else None
    doomed = [path for _, path in done[: max(0, len(done) - total_limit)] if best is None or path != best[1]]
    for path in doomed:
        (path / COMPLETE).unlink(missing_ok=True)  # never half-deleted yet still marked complete
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def truncate_metrics(output_dir: str | Path, step: int) -> None:
    """Keep the metrics of steps ≤ ``step`` only (a resumed run rewrites the later ones)."""
    path = Path(output_dir) / METRICS
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _metric_lines(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_metrics(output_dir: str | Path) -> list[dict]:
    """The per-step training records of ``metrics.jsonl`` (``step``, ``loss``, ``lr``, …), in order."""
    return [row for row in _metric_lines(output_dir) if "eval" not in row]


def read_evals(output_dir: str | Path) -> list[dict]:
    """The held-out scorings of ``metrics.jsonl``, ``{"step", "eval"}`` each, in order."""
    return [row for row in _metric_lines(output_dir) if "eval" in row]
