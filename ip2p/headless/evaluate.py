"""``ip2p eval``'s engine: edit a dataset's examples at each guidance pair and score every edit.

With a model, each example's input is edited by its instruction at every (text_cfg, image_cfg)
pair and scored against the input, the captions and the dataset's edited image as the target
(:func:`ip2p.quality.scoring.score_edits`). Without one, the dataset's own pairs are scored (input → edited),
so a dataset can be judged before training on it. A metric whose inputs are missing (no CLIP or
DINO folder, no captions, no target) is reported as skipped with the reason, never as 0; an edit
that fails (NaN) is counted as failed with the reason, and the run goes on.

Toy-world examples (edit family and mask known) are also edited under a wrong instruction, another
family's, in the same editor call: the baseline ``toy.wrong_instruction_to_truth``.

Multi-turn (a dataset whose examples are the turns of one image, MagicBrush's): with a model, an
image's turns are edited in order, turn 1 from its source image and each later turn from the
previous turn's edit, as MagicBrush's multi-turn setting (``reanchor``: every turn from its own
source image, their single-turn setting); each turn is scored against its own target.

Sharded like ``ip2p generate``: process ``rank`` of ``world`` (``accelerate launch`` sets them)
takes every ``world``-th example, or for multi-turn data every ``world``-th image with all its
turns, so a chain never leaves its process. Processes append to the one ``per_example.jsonl`` in
turn, under the folder's lock (``.eval.lock``, dropped by the OS when a process dies), and the
last to finish writes ``metrics.json`` and the pictures; nobody waits for anybody. Every edit is
seeded with the seed alone (one generator per image), so its pixels depend neither on the process
nor on the batch it lands in, and a rerun with another number of processes continues the same
evaluation.

The output folder (``OUT``):

- ``eval.json``: what this evaluation is (model and scorer hashes, the dataset, the settings); a
  folder of another evaluation is refused with nothing overwritten;
- ``per_example.jsonl``: one line per (guidance pair, example), appended and flushed as each is
  scored, so a rerun after kill -9 or Ctrl-C continues where it stopped and never scores an
  example twice (a line cut short is dropped and redone);
- ``metrics.json``: per guidance pair, each metric's mean, 95 % bootstrap interval and count, the
  failed edits and the skipped metrics with their reasons; per edit family (the toy world), and per
  turn and at each image's final turn (multi-turn data);
- ``turns/``: a chain's edits, ``{img_id}-{turn}_t{text_cfg}_i{image_cfg}.png``, each written before
  its turn's line, so a rerun continues a chain from the saved edit;
- ``tradeoff.png`` (the paper's figure, the drawing of the trade-off node) and ``samples.png``
  (the first examples' inputs, edits and targets), from ``samples/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..datasets.locks import exclusive
from ..errors import IP2PError
from ..formats.atomic import atomic_file
from ..images import to_rgb_array, to_uint8
from ..quality import metrics as m
from ..quality.scoring import EditToScore, score_edits
from .components import EditModel
from .generate import shard

logger = logging.getLogger(__name__)

SETTINGS_FILE = "eval.json"
PER_EXAMPLE = "per_example.jsonl"
METRICS_FILE = "metrics.json"
PLOT_FILE = "tradeoff.png"
GRID_FILE = "samples.png"
SAMPLES = "samples"
TURNS = "turns"
LOCK = ".eval.lock"  # held to claim the folder and to append to, repair or read per_example.jsonl
SAMPLE_EXAMPLES = 4  # examples shown in samples.png
DEFAULT_IMAGE_CFG = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2)  # the paper's sweep (figs. 8 and 10)


@dataclass(frozen=True)
class EvalSettings:
    """How the edits are made (ignored without a model) and how many examples are scored."""

    text_cfg: tuple[float, ...] = (7.5,)
    image_cfg: tuple[float, ...] = DEFAULT_IMAGE_CFG
    steps: int = 100
    seed: int = 0
    sampler: str = "euler_ancestral"
    limit: int | None = None  # the first N examples only (multi-turn data: image by image, turn by turn)
    batch: int = 1  # examples of one size per editor call
    reanchor: bool = False  # multi-turn data: every turn edited from its own source image, not the previous edit

    def __post_init__(self) -> None:
        if not self.text_cfg or not self.image_cfg:
            raise IP2PError("Give at least one text_cfg and one image_cfg.")
        if self.limit is not None and self.limit < 1:
            raise IP2PError(f"--limit is {self.limit}; give 1 or more, or leave it out for every example.")
        if self.batch < 1:
            raise IP2PError(f"--batch is {self.batch}; give 1 or more.")

    def pairs(self) -> list[tuple[float, float]]:
        return [(float(t), float(s)) for t in self.text_cfg for s in self.image_cfg]


@dataclass
class Scorers:
    """The models that embed (each optional; the metrics needing a missing one are skipped)."""

    clip: object | None = None  # ip2p.clip_filter.ClipScorer
    dino: object | None = None  # ip2p.quality.dino.DinoScorer


@dataclass
class _Example:
    index: int
    key: str
    instruction: str
    input: torch.Tensor  # 1×3×H×W in [0, 1]
    target: torch.Tensor | None
    input_caption: str | None
    output_caption: str | None
    mask: torch.Tensor | None = None  # H×W bool: the pixels the edit should change (the toy world knows them)
    family: str | None = None  # the toy world's edit family: metrics are reported per family too
    source: torch.Tensor | None = None  # the dataset's input, where the edit starts from an earlier turn's edit
    turn_file: str | None = None  # where this turn's edit is saved for the next turn (under turns/)
    wrong_instruction: str | None = None  # a toy example's baseline: another family's instruction, edited too


def example_mask(extra: dict) -> torch.Tensor | None:
    """The edit mask an example carries: a toy example's ``edit_mask`` array, or a dataset's ``mask`` image."""
    value = extra.get("edit_mask", extra.get("mask"))
    if value is None:
        return None
    array = np.asarray(value.convert("L")) > 127 if hasattr(value, "convert") else np.asarray(value, dtype=bool)
    return torch.from_numpy(array)


def evaluate(
    dataset: Sequence,
    out: str | Path,
    settings: EvalSettings,
    *,
    record: dict,
    model: EditModel | None = None,
    scorers: Scorers | None = None,
    rank: int = 0,
    world: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict | None:
    """Evaluate process ``rank``'s share of ``dataset`` into ``out`` (see the module text); returns the
    contents of ``metrics.json``, or None while another process's share is still unscored (it writes them).

    ``record`` says what this evaluation is (hashes, dataset, settings): it is compared with the
    folder's ``eval.json`` so another evaluation's folder is refused.
    """
    out = Path(out)
    scorers = scorers or Scorers()
    order, mine, labels = plan(dataset, settings, rank, world)
    claim_folder(out, record)
    with exclusive(out / LOCK):
        done = read_rows(out / PER_EXAMPLE)
    seen = {(row["text_cfg"], row["image_cfg"], row["key"]) for row in done}
    pairs = settings.pairs() if model is not None else [(None, None)]
    chained = model is not None and bool(labels) and not settings.reanchor
    wrong = _WrongInstructions(dataset, order)  # chosen over every process's examples: the same in any share
    rounds = _rounds(mine, labels) if chained else [mine]
    for text_cfg, image_cfg in pairs:
        for indices in rounds:
            examples = (_load(dataset, i) for i in indices)
            if model is not None:
                examples = (wrong.given(e) for e in examples)
            if chained:
                examples = (_chained(e, labels[e.index], out, text_cfg, image_cfg) for e in examples)
            for chunk in _chunks(examples, settings.batch):
                todo = [e for e in chunk if (text_cfg, image_cfg, e.key) not in seen]
                if todo:
                    for row in _score_chunk(todo, model, scorers, settings, text_cfg, image_cfg, out):
                        row.update(labels.get(row["index"], {}))
                        append_row(out / PER_EXAMPLE, row)
                if progress:
                    progress(len(chunk))
    with exclusive(out / LOCK):  # one process at a time: the one that finds every row there summarizes
        rows = read_rows(out / PER_EXAMPLE)
        scored = {(row["text_cfg"], row["image_cfg"], row["index"]) for row in rows}
        if any((t, s, i) not in scored for t, s in pairs for i in order):
            return None
        summary = summarize_rows(rows, record)
        with atomic_file(out / METRICS_FILE) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        _draw(out, summary, pairs, model is not None)
    return summary


def plan(dataset: Sequence, settings: EvalSettings, rank: int = 0, world: int = 1) -> tuple[list, list, dict]:
    """The examples evaluated (indices, in :func:`turn_order`, up to ``settings.limit``), process ``rank``'s share
    of them (every ``world``-th example; multi-turn data: every ``world``-th image, all its turns) and the turns'
    labels."""
    order, labels = turn_order(dataset)
    order = order[: settings.limit]
    if not order:
        raise IP2PError("The dataset holds no examples to evaluate. Check --data (and --limit).")
    if not labels:
        return order, [order[i] for i in shard(len(order), rank, world)], labels
    images = list(dict.fromkeys(labels[i]["img_id"] for i in order))
    taken = {images[i] for i in shard(len(images), rank, world)}
    return order, [i for i in order if labels[i]["img_id"] in taken], labels


# ------------------------------------------------------------------------------------ the folder


def claim_folder(out: Path, record: dict) -> None:
    """Make ``out`` this evaluation's folder; one that holds another evaluation (or other files) is refused.

    Processes starting together claim it under the folder's lock: one writes ``eval.json``, the others
    find it and compare. A folder of other files is refused before any lock file is made in it."""
    path = out / SETTINGS_FILE
    if not path.is_file():
        if out.exists() and (not out.is_dir() or _others(out)):
            raise _not_an_evaluation(out)
        out.mkdir(parents=True, exist_ok=True)
        with exclusive(out / LOCK):
            if not path.is_file():
                if _others(out):
                    raise _not_an_evaluation(out)
                with atomic_file(path) as tmp:
                    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
                return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IP2PError(f"{path} is damaged ({exc}). Write the evaluation into a new --out.") from exc
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in record.items() if saved.get(k) != v]
    if changed:
        raise IP2PError(
            f"{out} holds another evaluation ({'; '.join(changed)}). Choose a new --out, or rerun with that "
            f"evaluation's own settings to continue it."
        )


def _others(out: Path) -> list[str]:
    """What ``out`` holds besides a claim: the lock, ``eval.json`` and its temporary (of a claim under way, or
    of one killed)."""
    return [p.name for p in out.iterdir() if not p.name.startswith((LOCK, SETTINGS_FILE, f".{SETTINGS_FILE}."))]


def _not_an_evaluation(out: Path) -> IP2PError:
    return IP2PError(f"--out {out} exists and is not an evaluation folder. Choose a missing or empty folder.")


def append_row(path: Path, row: dict) -> None:
    """Add ``row`` to ``per_example.jsonl`` for good (fsync: a kill -9 after it keeps it), under the folder's
    lock. Reopened for each line, as :func:`read_rows` may have replaced the file; a line cut short by a
    killed process is dropped first, so the new line starts on a line of its own."""
    with exclusive(path.parent / LOCK):
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                if existing.read(1) != b"\n":
                    read_rows(path)
        with open(path, "a", encoding="utf-8") as sink:
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            os.fsync(sink.fileno())


def read_rows(path: Path) -> list[dict]:
    """The scored rows of ``per_example.jsonl``; a line cut short by a kill is dropped (and the file rewritten
    without it, so the rerun's lines start on a line of their own). Call it holding the folder's lock."""
    if not path.is_file():
        return []
    rows, broken = [], False
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            broken = True
    if broken or (text and not text.endswith("\n")):
        with atomic_file(path) as tmp:
            tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return rows


# ------------------------------------------------------------------------------------- examples


def _pixels(image) -> torch.Tensor:
    return torch.from_numpy(to_rgb_array(image)).permute(2, 0, 1)[None]


def _load(dataset: Sequence, index: int) -> _Example | _Unreadable:
    """Example ``index`` as tensors, or the reason it cannot be read."""
    try:
        example = dataset[index]
        extra = dict(example.extra)
        target = example.edited_image
        return _Example(
            index=index,
            key=str(example.key),
            instruction=example.instruction,
            input=_pixels(example.input_image),
            target=_pixels(target) if target is not None else None,
            input_caption=extra.get("input_caption") or None,
            output_caption=extra.get("output_caption") or None,
            mask=example_mask(extra),
            family=extra.get("family") if isinstance(extra.get("family"), str) else None,
        )
    except (IP2PError, OSError, ValueError) as exc:
        return _Unreadable(index, f"#{index}", f"cannot be read: {exc}")


def _chunks(examples, batch: int):
    """Consecutive examples of one input size, at most ``batch`` at a time (unreadable ones alone)."""
    chunk: list = []
    for example in examples:
        if isinstance(example, _Unreadable):
            if chunk:
                yield chunk
                chunk = []
            yield [example]
            continue
        if chunk and (len(chunk) >= batch or chunk[0].input.shape != example.input.shape):
            yield chunk
            chunk = []
        chunk.append(example)
    if chunk:
        yield chunk


@dataclass
class _Unreadable:
    index: int
    key: str
    reason: str


class _WrongInstructions:
    """Each toy example's wrong instruction: another family's, by :func:`.toy_scores.wrong_instructions` over
    the evaluated examples in their order (so a rerun chooses the same). Read on the first example with a
    family, so data without families pays nothing."""

    def __init__(self, dataset: Sequence, order: list[int]) -> None:
        self.dataset, self.order, self.chosen = dataset, order, None

    def given(self, example):
        if isinstance(example, _Unreadable) or example.family is None:
            return example
        if self.chosen is None:
            from .toy_scores import wrong_instructions

            texts, families = [], []
            for index in self.order:
                try:
                    other = self.dataset[index]
                except (IP2PError, OSError, ValueError):  # unreadable: lends no instruction
                    other = None
                family = other.extra.get("family") if other is not None else None
                texts.append(other.instruction if other is not None else "")
                families.append(family if isinstance(family, str) else None)
            self.chosen = dict(zip(self.order, wrong_instructions(texts, families), strict=True))
        return dataclasses.replace(example, wrong_instruction=self.chosen[example.index])


# ------------------------------------------------------------------------------------------ turns


def turn_order(dataset: Sequence) -> tuple[list[int], dict[int, dict]]:
    """The order examples are evaluated in, and each turn's labels (img_id, turn_index, final_turn) by index.

    Plain data: the dataset's order, no labels. Multi-turn data (``dataset.turns``): image by image (in
    order of first appearance), each image's turns 1, 2, … in order, so ``--limit`` keeps whole chains'
    beginnings; an image whose turns do not run 1, 2, … is refused naming it.
    """
    turns = getattr(dataset, "turns", None)
    if turns is None:
        return list(range(len(dataset))), {}
    by_image: dict[str, list[tuple[int, int]]] = {}
    for index, (image, turn) in enumerate(turns):
        by_image.setdefault(image, []).append((turn, index))
    order, labels = [], {}
    for image, members in by_image.items():
        members.sort()
        got = [turn for turn, _ in members]
        if got != list(range(1, len(got) + 1)):
            missing = sorted(set(range(1, max(got) + 1)) - set(got))
            lacks = f"not turn {', '.join(map(str, missing))}" if missing else "some twice"
            raise IP2PError(
                f"Image {image!r} has turn(s) {', '.join(map(str, got))} but {lacks}: an image's turns run 1, 2, … "
                f"once each (turn n is edited from turn n − 1's edit). Add the missing rows or leave the image out."
            )
        for turn, index in members:
            order.append(index)
            labels[index] = {"img_id": image, "turn_index": turn, "final_turn": turn == got[-1]}
    return order, labels


def _rounds(order: list[int], labels: dict[int, dict]) -> list[list[int]]:
    """A chain's examples turn by turn: every image's turn n is edited before any turn n + 1."""
    last = max((labels[i]["turn_index"] for i in order), default=0)
    return [[i for i in order if labels[i]["turn_index"] == turn] for turn in range(1, last + 1)]


def _turn_file(image: str, turn: int, text_cfg: float, image_cfg: float) -> str:
    name = f"{image}-{turn}"
    safe = re.sub(r"[^\w.-]", "_", name)
    if safe != name:  # an id that is no file name: kept apart from one that reads the same once cleaned
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{safe}_t{text_cfg:g}_i{image_cfg:g}.png"


def _chained(example, label: dict, out: Path, text_cfg: float, image_cfg: float):
    """A chain's turn: turn 1 as it is, a later turn starting from the previous turn's saved edit."""
    if isinstance(example, _Unreadable):
        return example
    image, turn = label["img_id"], label["turn_index"]
    example = dataclasses.replace(example, turn_file=_turn_file(image, turn, text_cfg, image_cfg))
    if turn == 1:
        return example
    previous = out / TURNS / _turn_file(image, turn - 1, text_cfg, image_cfg)
    if not previous.is_file():
        return _Unreadable(
            example.index, example.key, f"turn {turn - 1} of image {image!r} has no edit (see its line) to start from"
        )
    from PIL import Image

    with Image.open(previous) as saved:
        return dataclasses.replace(example, input=_pixels(saved), source=example.input)


# ---------------------------------------------------------------------------------------- scoring


def _score_chunk(chunk, model, scorers: Scorers, settings: EvalSettings, text_cfg, image_cfg, out: Path) -> list[dict]:
    base = {"text_cfg": text_cfg, "image_cfg": image_cfg}
    if isinstance(chunk[0], _Unreadable):
        return [{**base, "key": e.key, "index": e.index, "failed": e.reason} for e in chunk]
    edits, failed = _edits(chunk, model, settings, text_cfg, image_cfg)
    rows = []
    scored = [i for i in range(len(chunk)) if i not in failed]
    values = score_edits(
        [_to_score(chunk[i], *edits[i]) for i in scored],
        clip=scorers.clip,
        dino=scorers.dino,
        edit_is_target=model is None,
    )
    for position, example in enumerate(chunk):
        row = {**base, "key": example.key, "index": example.index}
        if example.family is not None:
            row["family"] = example.family
        if position in failed:
            row["failed"] = failed[position]
        else:
            if example.turn_file is not None:  # before its line: a rerun continues the chain from it
                (out / TURNS).mkdir(exist_ok=True)
                _save_png(out / TURNS / example.turn_file, edits[position][0][0])
            row.update(values[scored.index(position)])
            if example.index < SAMPLE_EXAMPLES:
                _save_sample(out, example, edits[position][0], text_cfg, image_cfg)
        rows.append(row)
    return rows


def _to_score(example: _Example, edit: torch.Tensor, wrong_edit: torch.Tensor | None) -> EditToScore:
    return EditToScore(
        input=example.input,
        edit=edit,
        target=example.target,
        input_caption=example.input_caption,
        output_caption=example.output_caption,
        mask=example.mask,
        wrong_edit=wrong_edit,
    )


def _edits(chunk, model, settings: EvalSettings, text_cfg, image_cfg) -> tuple[list[tuple], dict[int, str]]:
    """Each example's (edit, edit under its wrong instruction or None), 1×3×H×W: the model's, or without a
    model the dataset's own edited image; and the examples that failed, with the reason."""
    if model is None:
        missing = {i: "the example has no edited image to score" for i, e in enumerate(chunk) if e.target is None}
        return [(e.target, None) for e in chunk], missing
    from .editor import EditSettings, NonFiniteEditError, edit

    edit_settings = EditSettings(
        instruction=chunk[0].instruction,
        steps=settings.steps,
        text_cfg=text_cfg,
        image_cfg=image_cfg,
        sampler=settings.sampler,
        seed=settings.seed,
    )
    wrong = [i for i, e in enumerate(chunk) if e.wrong_instruction is not None]  # in the same call, same seed
    images = torch.cat([e.input for e in chunk] + [chunk[i].input for i in wrong])
    texts = [e.instruction for e in chunk] + [chunk[i].wrong_instruction for i in wrong]
    try:
        edited = list(edit(model, images, edit_settings, instructions=texts, progress=False).split(1))
    except NonFiniteEditError as exc:
        if len(chunk) == 1:
            return [(None, None)], {0: f"the edit failed: {exc}"}
        # edit the others alone so one NaN costs one example
        results, failed = [], {}
        for position, example in enumerate(chunk):
            one, bad = _edits([example], model, settings, text_cfg, image_cfg)
            results += one
            if bad:
                failed[position] = bad[0]
        return results, failed
    wrong_edits = dict(zip(wrong, edited[len(chunk) :], strict=True))
    return [(edited[i], wrong_edits.get(i)) for i in range(len(chunk))], {}


# --------------------------------------------------------------------------------------- summary


def summarize_rows(rows: list[dict], record: dict) -> dict:
    """``metrics.json``: per guidance pair, each metric's mean, 95 % bootstrap interval and n; failures and
    skipped metrics with their reasons; the same summaries per edit family and per turn and final turn
    where the rows carry them."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["text_cfg"], row["image_cfg"]), []).append(row)
    pairs = []
    for (text_cfg, image_cfg), members in groups.items():
        failed = Counter(row["failed"] for row in members if "failed" in row)
        scored = [row for row in members if "failed" not in row]
        skipped = {}
        for name in m.ALL_METRICS:
            reasons = Counter(row["skipped"][name] for row in scored if name in row.get("skipped", {}))
            if reasons:
                skipped[name] = dict(reasons)
        entry = {
            "text_cfg": text_cfg,
            "image_cfg": image_cfg,
            "examples": len(members),
            "failed": dict(failed),
            "metrics": _summaries(scored),
            "skipped": skipped,
        }
        families = sorted({row["family"] for row in scored if "family" in row})
        if families:
            entry["per_family"] = {f: _summaries([r for r in scored if r.get("family") == f]) for f in families}
        turns = sorted({row["turn_index"] for row in scored if "turn_index" in row})
        if turns:
            entry["per_turn"] = {str(t): _summaries([r for r in scored if r.get("turn_index") == t]) for t in turns}
            entry["final_turn"] = _summaries([r for r in scored if r.get("final_turn")])
        pairs.append(entry)
    pairs.sort(key=lambda p: (p["text_cfg"] is None, p["text_cfg"] or 0, p["image_cfg"] or 0))
    return {"evaluation": record, "definitions": "docs/metrics.md", "pairs": pairs}


def _summaries(rows: list[dict]) -> dict:
    """Each metric's summary over ``rows`` (those it was computed on), in the order of :data:`ALL_METRICS`."""
    values = {name: [row["metrics"][name] for row in rows if name in row["metrics"]] for name in m.ALL_METRICS}
    return {name: m.summarize(v) for name, v in values.items() if v}


# ------------------------------------------------------------------------------------- pictures


def _sample_name(index: int, text_cfg, image_cfg) -> str:
    return f"{index:04d}_dataset.png" if text_cfg is None else f"{index:04d}_t{text_cfg:g}_i{image_cfg:g}.png"


def _save_png(path: Path, image: torch.Tensor) -> None:
    from PIL import Image

    with atomic_file(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG")


def _save_sample(out: Path, example: _Example, edit: torch.Tensor, text_cfg, image_cfg) -> None:
    folder = out / SAMPLES
    folder.mkdir(exist_ok=True)
    if not (folder / f"{example.index:04d}_input.png").is_file():
        shown = example.source if example.source is not None else example.input
        _save_png(folder / f"{example.index:04d}_input.png", shown[0])
        if example.target is not None:
            _save_png(folder / f"{example.index:04d}_target.png", example.target[0])
    _save_png(folder / _sample_name(example.index, text_cfg, image_cfg), edit[0])


def _draw(out: Path, summary: dict, pairs: list, with_model: bool) -> None:
    from PIL import Image

    from ..grid import labelled_grid
    from ..plot import TradeoffPoint, tradeoff_plot

    points = [
        TradeoffPoint(p["image_cfg"], p["text_cfg"], p["metrics"]["directional"]["mean"], p["metrics"]["image"]["mean"])
        for p in summary["pairs"]
        if p["text_cfg"] is not None and {"directional", "image"} <= p["metrics"].keys()
    ]
    if with_model and points:
        with atomic_file(out / PLOT_FILE) as tmp:
            tradeoff_plot(points).save(tmp, format="PNG")
    folder = out / SAMPLES
    indices = sorted({int(p.name[:4]) for p in folder.glob("*_input.png")}) if folder.is_dir() else []
    if not indices:
        return
    columns = ["input", *(("edit" if t is None else f"text {t:g}, image {s:g}") for t, s in pairs), "target"]
    cell = 128
    cells = []
    for index in indices:
        names = [f"{index:04d}_input.png", *(_sample_name(index, t, s) for t, s in pairs), f"{index:04d}_target.png"]
        for name in names:
            path = folder / name
            image = (
                Image.open(path).convert("RGB").resize((cell, cell))
                if path.is_file()
                else Image.new("RGB", (cell, cell), "white")
            )
            cells.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0))
    grid = labelled_grid(torch.stack(cells), [f"example {i}" for i in indices], columns)
    with atomic_file(out / GRID_FILE) as tmp:
        Image.fromarray((grid.numpy() * 255).round().astype(np.uint8)).save(tmp, format="PNG")
