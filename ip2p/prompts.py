"""Prompt sources of the data engine: where (input caption, instruction, edited caption) triples come from.

- **Files of triples** (:func:`read_prompts`, by extension):

  - ``.jsonl`` — one JSON object a line with the paper's keys: ``caption`` (the generator's key) or
    ``input`` (the released prompts' key), ``edit``, ``output``; other keys are kept in ``extra``;
  - ``.csv`` / ``.tsv`` — a header row with the same names;
  - ``.json`` / ``.yaml`` / ``.yml`` — a template file, expanded (:func:`read_templates`).

  ``columns`` maps the roles ``caption``, ``edit``, ``output`` to other key or column names. Bad lines
  are skipped and reported with their line numbers; duplicates (same :attr:`PromptTriple.key`) are
  dropped keeping the first; a file with no usable triple is an :class:`IP2PError`.
- **Templates** (:func:`expand_templates`): caption templates × edit templates × placeholder values.
- **A local causal LM** (:func:`load_llm`, :func:`generate_edits`): writes the instruction and the
  edited caption for each input caption from a few-shot prompt in the paper's format; malformed
  answers are counted and dropped.
- **Resuming** (:func:`pending`): the triples not yet done, with their index in the source.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import os
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import IP2PError
from .formats.atomic import atomic_file

logger = logging.getLogger(__name__)

ROLES = ("caption", "edit", "output")  # the paper's keys; a line's ``input`` is read as ``caption``
TRIPLE_SUFFIXES = (".jsonl", ".csv", ".tsv")
TEMPLATE_SUFFIXES = (".json", ".yaml", ".yml")
_LISTED = 8  # malformed lines named in a summary before "… and N more"


def _clean(text: str) -> str:
    """One line of text: outer spaces gone, inner runs of whitespace (newlines too) one space."""
    return " ".join(text.split())


def _norm(text: str) -> str:
    """The comparison form: Unicode-normalised, case-folded, whitespace collapsed."""
    return _clean(unicodedata.normalize("NFKC", text)).casefold()


# ------------------------------------------------------------------------------------- the triple


@dataclass(frozen=True, eq=False)
class PromptTriple:
    """One prompt of the data engine. Equality and :attr:`key` ignore case, spacing and ``extra``."""

    input_caption: str
    instruction: str
    edited_caption: str
    extra: dict = field(default_factory=dict)  # what the source adds: url, template values …

    @property
    def key(self) -> str:
        """16 hex digits of the normalised triple: stable across runs, for deduplication and resuming."""
        text = "\n".join(_norm(t) for t in (self.input_caption, self.instruction, self.edited_caption))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PromptTriple) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def as_prompt(self) -> dict:
        """The paper's ``prompt.json`` object: ``caption``, ``edit``, ``output`` over ``extra``."""
        return {**self.extra, "caption": self.input_caption, "edit": self.instruction, "output": self.edited_caption}


def deduplicate(triples: Iterable[PromptTriple]) -> tuple[list[PromptTriple], int]:
    """The triples without repeated keys (the first kept, order kept), and how many were dropped."""
    seen: set[str] = set()
    kept, dropped = [], 0
    for triple in triples:
        if triple.key in seen:
            dropped += 1
        else:
            seen.add(triple.key)
            kept.append(triple)
    return kept, dropped


@dataclass
class PromptSet(Sequence):
    """Triples read from one source and what was left out: ``malformed`` (line, reason), ``duplicates``."""

    triples: list[PromptTriple]
    source: str
    malformed: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0

    def __len__(self) -> int:
        return len(self.triples)

    def __getitem__(self, index):
        return self.triples[index]

    def summary(self) -> str:
        """One line: how many triples, which lines were skipped and why, how many duplicates."""
        parts = [f"{self.source}: {len(self.triples)} prompt triple(s)"]
        if self.malformed:
            named = "; ".join(f"line {line}: {reason}" for line, reason in self.malformed[:_LISTED])
            more = f"; … and {len(self.malformed) - _LISTED} more" if len(self.malformed) > _LISTED else ""
            parts.append(f"skipped {len(self.malformed)} malformed line(s) ({named}{more})")
        if self.duplicates:
            parts.append(f"dropped {self.duplicates} duplicate(s)")
        return ", ".join(parts)


# ----------------------------------------------------------------------------------------- files


class _Malformed(Exception):
    """One unusable line; its message is the reason shown in the summary."""


def _roles(columns: Mapping[str, str] | None) -> dict[str, tuple[str, ...]]:
    """Role → the names to look for, in order (``caption`` is ``caption`` then ``input`` by default)."""
    names = {"caption": ("caption", "input"), "edit": ("edit",), "output": ("output",)}
    for role, name in (columns or {}).items():
        if role not in ROLES:
            raise IP2PError(
                f"Unknown column role {role!r} in columns={dict(columns)!r}; the roles are {', '.join(ROLES)} "
                f"(e.g. columns={{'edit': 'instruction'}})."
            )
        names[role] = (name,)
    return names


def _triple(record: Mapping, roles: Mapping[str, tuple[str, ...]]) -> PromptTriple:
    """A triple from one line's fields; raises :class:`_Malformed` naming what is wrong."""
    texts, used = {}, set()
    for role, names in roles.items():
        name = next((n for n in names if n in record), None)
        if name is None:
            raise _Malformed(f"missing {' or '.join(repr(n) for n in names)}")
        value = record[name]
        if not isinstance(value, str):
            raise _Malformed(f"{name!r} is {type(value).__name__}, not text")
        if not value.strip():
            raise _Malformed(f"empty {name!r}")
        texts[role] = _clean(value)
        used.add(name)
    extra = {k: v for k, v in record.items() if k not in used}
    return PromptTriple(texts["caption"], texts["edit"], texts["output"], extra)


def _read_jsonl(path: Path, roles) -> tuple[list[PromptTriple], list[tuple[int, str]]]:
    triples, malformed = [], []
    with path.open(encoding="utf-8-sig", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise _Malformed(f"not JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise _Malformed(f"a JSON {type(record).__name__}, not an object")
                triples.append(_triple(record, roles))
            except _Malformed as exc:
                malformed.append((number, str(exc)))
    return triples, malformed


def _read_csv(path: Path, roles, delimiter: str) -> tuple[list[PromptTriple], list[tuple[int, str]]]:
    triples, malformed = [], []
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        rows = csv.DictReader(handle, delimiter=delimiter)
        header = rows.fieldnames or []
        for role, names in roles.items():
            if not any(n in header for n in names):
                raise IP2PError(
                    f"{path} has no {' or '.join(repr(n) for n in names)} column for the {role!r} role; its header "
                    f"is {header!r}. Name the columns {', '.join(ROLES)} in the header, or map yours with "
                    f"columns={{'{role}': '<your column>'}}."
                )
        for row in rows:
            number = rows.line_num  # the row's last physical line (a quoted cell may span several)
            try:
                if None in row:
                    raise _Malformed(f"{len(header) + len(row[None])} fields, the header has {len(header)}")
                if None in row.values():
                    raise _Malformed(f"{sum(v is not None for v in row.values())} fields, the header has {len(header)}")
                triples.append(_triple(row, roles))
            except _Malformed as exc:
                malformed.append((number, str(exc)))
    return triples, malformed


def read_prompts(path: str | os.PathLike, columns: Mapping[str, str] | None = None) -> PromptSet:
    """Read prompt triples from a ``.jsonl``, ``.csv``, ``.tsv`` or template file (see the module docstring).

    Skipped lines and duplicates are in the result (``summary()``) and logged as one warning.
    Raises :class:`IP2PError` for a missing file, an unknown extension, a CSV without a needed
    column, or a file with no usable triple.
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in TRIPLE_SUFFIXES + TEMPLATE_SUFFIXES:
        raise IP2PError(
            f"{path} is a {suffix or 'suffix-less'} file; prompts are read from "
            f"{', '.join(TRIPLE_SUFFIXES)} (triples) or {', '.join(TEMPLATE_SUFFIXES)} (templates). Rename or convert it."
        )
    if not path.is_file():
        raise IP2PError(f"Prompt file not found: {path}. Check the path.")
    if suffix in TEMPLATE_SUFFIXES:
        if columns:
            raise IP2PError(f"{path} is a template file; columns={dict(columns)!r} applies to .jsonl/.csv/.tsv only.")
        triples, malformed = read_templates(path), []
    else:
        roles = _roles(columns)
        if suffix == ".jsonl":
            triples, malformed = _read_jsonl(path, roles)
        else:
            triples, malformed = _read_csv(path, roles, "\t" if suffix == ".tsv" else ",")
    kept, duplicates = deduplicate(triples)
    prompts = PromptSet(kept, path.name, malformed, duplicates)
    if not kept:
        raise IP2PError(
            f"{path} holds no usable prompt triple ({prompts.summary()}). Each line needs a non-empty "
            f"input caption ('caption' or 'input'), instruction ('edit') and edited caption ('output')."
        )
    (logger.warning if malformed or duplicates else logger.info)(prompts.summary())
    return prompts


def write_prompts(path: str | os.PathLike, triples: Iterable[PromptTriple]) -> Path:
    """Write triples as JSONL in the paper's keys (``caption``, ``edit``, ``output``, then ``extra``), atomically."""
    path = Path(path).expanduser()
    text = "".join(json.dumps(t.as_prompt(), ensure_ascii=False) + "\n" for t in triples)
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------- templates

TEMPLATE_KEYS = ("values", "captions", "edits")
_EDIT_KEYS = ("instruction", "output")
_CAPTION = "caption"  # the placeholder an edit template uses for the expanded input caption


def _placeholders(template: str, known: Sequence[str], where: str) -> list[str]:
    """The names a template uses, in order; an unknown, empty or formatted placeholder is an error."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise IP2PError(
            f"{where} {template!r} has unbalanced braces ({exc}); write a literal brace as {{{{ or }}}}."
        ) from exc
    names = []
    for name, spec, conv in fields:
        if not name.isidentifier() or spec or conv:
            raise IP2PError(
                f"{where} {template!r} has the placeholder {{{name}{'!' + conv if conv else ''}"
                f"{':' + spec if spec else ''}}}; placeholders are plain names such as {{animal}}."
            )
        if name not in known:
            raise IP2PError(
                f"{where} {template!r} uses the unknown placeholder {{{name}}}; the known ones are "
                f"{', '.join('{' + k + '}' for k in known) or 'none'}. Add {name!r} to 'values' or fix the template."
            )
        if name not in names:
            names.append(name)
    return names


def expand_templates(
    captions: Sequence[str],
    edits: Sequence[Mapping[str, str] | tuple[str, str]],
    values: Mapping[str, Sequence[str]],
    *,
    max_triples: int = 100_000,
) -> list[PromptTriple]:
    """Every caption template × every edit template × every combination of the placeholders they use.

    ``edits``: ``{"instruction": …, "output": …}`` (or ``(instruction, output)``) templates, where
    ``{caption}`` stands for the expanded input caption. Order: captions, then edits, in the given
    order, then values with the placeholder listed last in ``values`` varying fastest. Each triple's
    ``extra["template_values"]`` holds the values it used. More than ``max_triples`` is an error
    (a runaway product), as are unknown placeholders and empty value lists.
    """
    names = list(values)
    for name, options in values.items():
        if name == _CAPTION or not str(name).isidentifier():
            raise IP2PError(f"Template value name {name!r} is not allowed: use a plain name other than 'caption'.")
        if isinstance(options, str) or not options or not all(_is_value(o) for o in options):
            raise IP2PError(f"Template values {name!r} must be a non-empty list of texts; got {options!r}.")
    pairs = []
    for i, edit in enumerate(edits):
        pair = tuple(edit.get(k) for k in _EDIT_KEYS) if isinstance(edit, Mapping) else tuple(edit)
        if len(pair) != 2 or not all(isinstance(t, str) and t.strip() for t in pair):
            raise IP2PError(f"Edit template {i} is {edit!r}; expected {{'instruction': '…', 'output': '…'}}.")
        pairs.append(pair)
    if not captions or not pairs:
        raise IP2PError("Templates need at least one caption and one edit ('captions' and 'edits' lists).")

    plans, total = [], 0
    for caption in captions:
        if not isinstance(caption, str) or not caption.strip():
            raise IP2PError(f"Caption template {caption!r} must be non-empty text.")
        in_caption = _placeholders(caption, names, "Caption template")
        for instruction, output in pairs:
            used = set(in_caption)
            for template in (instruction, output):
                used.update(_placeholders(template, [*names, _CAPTION], "Edit template"))
            order = [n for n in names if n in used]
            plans.append((caption, instruction, output, order))
            total += _product_size(values, order)
    if total > max_triples:
        raise IP2PError(
            f"The templates expand to {total:,} triples, more than max_triples={max_triples:,}. "
            f"Use fewer values, or raise max_triples if you mean it."
        )
    triples = []
    for caption, instruction, output, order in plans:
        for combo in itertools.product(*(values[n] for n in order)):
            chosen = {n: _clean(str(v)) for n, v in zip(order, combo, strict=True)}
            filled = _clean(caption.format(**chosen))
            triples.append(
                PromptTriple(
                    filled,
                    _clean(instruction.format(**chosen, caption=filled)),
                    _clean(output.format(**chosen, caption=filled)),
                    {"template_values": chosen},
                )
            )
    return triples


def _is_value(option) -> bool:
    """Text, or a number YAML read from unquoted digits (not a YAML yes/no)."""
    return isinstance(option, str | int | float) and not isinstance(option, bool)


def _product_size(values: Mapping[str, Sequence], order: Sequence[str]) -> int:
    size = 1
    for name in order:
        size *= len(values[name])
    return size


def read_templates(path: str | os.PathLike, *, max_triples: int = 100_000) -> list[PromptTriple]:
    """Expand a template file: JSON or YAML with ``values``, ``captions``, ``edits`` (see :func:`expand_templates`).

    ::

        {"values":   {"animal": ["cat", "dog"], "style": ["watercolor", "pixel art"]},
         "captions": ["a photo of a {animal}"],
         "edits":    [{"instruction": "make it {style}", "output": "a {style} photo of a {animal}"}]}
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise IP2PError(f"Template file not found: {path}. Check the path.")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IP2PError(f"Template file {path} is not valid JSON: {exc}.") from exc
    else:
        try:
            import yaml
        except ImportError as exc:
            raise IP2PError(f"Reading {path} needs PyYAML ({exc}): pip install pyyaml, or write it as .json.") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise IP2PError(f"Template file {path} is not valid YAML: {exc}.") from exc
    if not isinstance(data, dict):
        raise IP2PError(f"Template file {path} must hold an object with {', '.join(TEMPLATE_KEYS)}.")
    unknown = sorted(set(data) - set(TEMPLATE_KEYS))
    if unknown:
        raise IP2PError(f"Template file {path} has unknown key(s) {unknown}; the keys are {', '.join(TEMPLATE_KEYS)}.")
    try:
        return expand_templates(
            data.get("captions") or [], data.get("edits") or [], data.get("values") or {}, max_triples=max_triples
        )
    except IP2PError as exc:
        raise IP2PError(f"Template file {path}: {exc}") from exc


# ------------------------------------------------------------------------------------ resuming


def pending(
    triples: Iterable[PromptTriple],
    done: Container[str] | Callable[[PromptTriple], bool],
    *,
    start: int = 0,
) -> Iterator[tuple[int, PromptTriple]]:
    """``(index, triple)`` for each triple from ``start`` on that is not done yet, in order.

    ``done``: the keys already done (a set, or any container), or a callback that says whether a
    triple is done. It is asked lazily, as the iteration reaches each triple, so work finished while
    iterating (by this or another process) is seen. The index is the triple's position in ``triples``.
    """
    is_done = done if callable(done) else (lambda triple: triple.key in done)
    for index, triple in enumerate(triples):
        if index >= start and not is_done(triple):
            yield index, triple


# ---------------------------------------------------------------------------- local language model

CAPTION_END = "##"  # after the input caption
EDIT_SEPARATOR = "%%"  # between the instruction and the edited caption
ANSWER_END = "END"  # after the edited caption

# Few-shot examples of our own, in the spirit of the paper's human-written prompts.
FEW_SHOT_EXAMPLES: tuple[PromptTriple, ...] = (
    PromptTriple("a red barn in a snowy field at dawn", "make it summer", "a red barn in a green summer field at dawn"),
    PromptTriple("a cat sleeping on a windowsill", "turn the cat into a tiger", "a tiger sleeping on a windowsill"),
    PromptTriple(
        "an oil painting of a harbour at sunset", "make it night time", "an oil painting of a harbour at night"
    ),
    PromptTriple(
        "a man riding a bicycle down a city street", "have him ride a horse", "a man riding a horse down a city street"
    ),
    PromptTriple(
        "a bowl of apples on a wooden table",
        "make it a watercolor",
        "a watercolor of a bowl of apples on a wooden table",
    ),
)


def _block(caption: str) -> str:
    return f"{_clean(caption)}\n{CAPTION_END}\n"


def few_shot_prompt(caption: str, examples: Sequence[PromptTriple] = FEW_SHOT_EXAMPLES) -> str:
    """The text the model continues: each example as ``caption\\n##\\ninstruction\\n%%\\nedited\\nEND``,
    a blank line between them, then ``caption\\n##\\n`` for the caption to edit."""
    blocks = [
        f"{_block(e.input_caption)}{_clean(e.instruction)}\n{EDIT_SEPARATOR}\n{_clean(e.edited_caption)}\n{ANSWER_END}"
        for e in examples
    ]
    return "\n\n".join([*blocks, _block(caption)])


class MalformedAnswer(ValueError):
    """A model's answer that is not a usable edit; ``reason`` is one of the ``ANSWER_*`` texts."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


ANSWER_UNFINISHED = "no END line (unfinished answer)"
ANSWER_RUNAWAY = "runs into another example (## line)"
ANSWER_NO_SEPARATOR = "no %% separator"
ANSWER_SEPARATORS = "several %% separators"
ANSWER_EMPTY_INSTRUCTION = "empty instruction"
ANSWER_EMPTY_OUTPUT = "empty edited caption"
ANSWER_REPEATS_CAPTION = "instruction repeats the caption"
ANSWER_UNCHANGED = "edited caption equals the input caption"
_END_LINE = re.compile(rf"^[ \t]*{ANSWER_END}[ \t]*$", re.MULTILINE)


def parse_answer(caption: str, answer: str) -> PromptTriple:
    """The triple a model's continuation of :func:`few_shot_prompt` gives, or :class:`MalformedAnswer`.

    The answer is ``instruction\\n%%\\nedited caption\\nEND``; text after the ``END`` line is ignored.
    """
    end = _END_LINE.search(answer.replace("\r\n", "\n"))
    if end is None:
        raise MalformedAnswer(ANSWER_UNFINISHED)
    lines = [line.strip() for line in answer.replace("\r\n", "\n")[: end.start()].split("\n")]
    if CAPTION_END in lines:
        raise MalformedAnswer(ANSWER_RUNAWAY)
    separators = [i for i, line in enumerate(lines) if line == EDIT_SEPARATOR]
    if not separators:
        raise MalformedAnswer(ANSWER_NO_SEPARATOR)
    if len(separators) > 1:
        raise MalformedAnswer(ANSWER_SEPARATORS)
    instruction = _clean(" ".join(lines[: separators[0]]))
    edited = _clean(" ".join(lines[separators[0] + 1 :]))
    if not instruction:
        raise MalformedAnswer(ANSWER_EMPTY_INSTRUCTION)
    if not edited:
        raise MalformedAnswer(ANSWER_EMPTY_OUTPUT)
    if _norm(instruction) == _norm(caption):
        raise MalformedAnswer(ANSWER_REPEATS_CAPTION)
    if _norm(edited) == _norm(caption):
        raise MalformedAnswer(ANSWER_UNCHANGED)
    return PromptTriple(_clean(caption), instruction, edited)


def _check_examples(examples: Sequence[PromptTriple]) -> None:
    if not examples:
        raise IP2PError("The few-shot prompt needs at least one example triple (examples=[...]).")
    markers = {CAPTION_END, EDIT_SEPARATOR, ANSWER_END}
    for example in examples:
        texts = (example.input_caption, example.instruction, example.edited_caption)
        if any(not _clean(t) or _clean(t) in markers for t in texts):
            raise IP2PError(
                f"Few-shot example {texts!r} has an empty part or a part that is a marker "
                f"({', '.join(sorted(markers))}); give three non-empty texts."
            )


@dataclass
class GeneratedEdits:
    """What :func:`generate_edits` wrote: ``triples`` (caption order, malformed left out), every raw
    ``answers[i]`` for ``captions[i]``, and ``dropped`` (caption index, reason)."""

    triples: list[PromptTriple]
    answers: list[str]
    dropped: list[tuple[int, str]]

    def counts(self) -> Counter:
        """How many answers were dropped, by reason."""
        return Counter(reason for _, reason in self.dropped)

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.counts().most_common())
        return f"{len(self.triples)} of {len(self.answers)} answer(s) usable" + (
            f"; dropped {reasons}" if reasons else ""
        )


def load_llm(folder: str | os.PathLike, *, device: str = "cpu", dtype=None):
    """``(model, tokenizer)`` from a local causal-LM folder (transformers format), never from a hub."""
    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise IP2PError(
            f"{folder} is not a local language-model folder (no config.json). Give a transformers causal-LM "
            f"folder (config.json, weights, tokenizer files), e.g. one written by save_pretrained."
        )
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise IP2PError(f"The LLM prompt source needs transformers ({exc}): pip install '.[headless]'.") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise IP2PError(f"Cannot load a causal language model and its tokenizer from {folder}: {exc}") from exc
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval(), tokenizer


def generate_edits(
    model,
    tokenizer,
    captions: Sequence[str],
    *,
    examples: Sequence[PromptTriple] = FEW_SHOT_EXAMPLES,
    seed: int = 0,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    temperature: float = 0.7,
    top_p: float = 0.95,
    progress: Callable[[int, int], None] | None = None,
) -> GeneratedEdits:
    """Ask a causal LM for an instruction and an edited caption for each input caption.

    Few-shot in the paper's format (:func:`few_shot_prompt`); answers are parsed by
    :func:`parse_answer` and malformed ones dropped and counted. Sampling (``temperature`` > 0, with
    ``top_p``) or greedy (``temperature`` 0). The same seed, captions and ``batch_size`` give the same
    answers; the caller's random state is left as it was. ``progress(done, total)`` after each batch.
    A tokenizer without a pad token gets its end-of-text token as one (kept after the call).
    """
    import torch

    _check_examples(examples)
    if batch_size < 1 or max_new_tokens < 1:
        raise IP2PError(f"batch_size and max_new_tokens must be 1 or more (got {batch_size}, {max_new_tokens}).")
    empty = [i for i, caption in enumerate(captions) if not isinstance(caption, str) or not caption.strip()]
    if empty:
        raise IP2PError(f"Caption(s) at index {empty[:10]} are empty or not text; remove them before asking the model.")
    if temperature < 0:
        raise IP2PError(f"temperature must be 0 (greedy) or more (got {temperature}).")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise IP2PError("The tokenizer has neither a pad nor an end-of-text token; set tokenizer.pad_token.")
        tokenizer.pad_token = tokenizer.eos_token
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    )
    device = torch.device(getattr(model, "device", "cpu"))
    answers: list[str] = []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # a decoder continues the right end
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(captions), batch_size):
                prompts = [few_shot_prompt(c, examples) for c in captions[start : start + batch_size]]
                inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
                length = inputs["input_ids"].shape[1]
                if limit is not None and length + max_new_tokens > limit:
                    raise IP2PError(
                        f"The few-shot prompt is {length} tokens; with max_new_tokens={max_new_tokens} it passes the "
                        f"model's context of {limit}. Give fewer or shorter examples, or a lower max_new_tokens."
                    )
                with torch.inference_mode():
                    out = model.generate(
                        **inputs,
                        max_new_tokens=max_new_tokens,
                        pad_token_id=tokenizer.pad_token_id,
                        stop_strings=[ANSWER_END],
                        tokenizer=tokenizer,
                        **sampling,
                    )
                answers += tokenizer.batch_decode(out[:, length:], skip_special_tokens=True)
                if progress is not None:
                    progress(len(answers), len(captions))
    finally:
        tokenizer.padding_side = side
    triples, dropped = [], []
    for index, (caption, answer) in enumerate(zip(captions, answers, strict=True)):
        try:
            triples.append(parse_answer(caption, answer))
        except MalformedAnswer as exc:
            dropped.append((index, exc.reason))
    result = GeneratedEdits(triples, answers, dropped)
    (logger.warning if dropped else logger.info)("LLM prompts: %s", result.summary())
    return result
