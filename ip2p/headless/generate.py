"""The paper's data engine, headless: prompt triples in, a filtered instruction-editing dataset out.

For each (input caption, instruction, edited caption) triple, :func:`generate_dataset` samples
``samples`` image pairs with Prompt-to-Prompt (:func:`~.p2p.generate_pairs`, ``batch`` seeds per
UNet call), each pair with its own ``p ~ U(p2p_fraction)`` and ``cfg ~ U(cfg)``; scores them with
CLIP (:mod:`ip2p.clip_filter`) and keeps the best ``keep`` that pass the thresholds; and writes them
in the paper's layout (:class:`~ip2p.datasets.paper.PaperLayoutWriter`) or as Hugging Face parquet
shards (:class:`~ip2p.datasets.parquet_writer.ParquetLayoutWriter`), with the same pairs and
metadata either way. Without a CLIP model nothing is filtered and every sample is kept (``keep``
must then equal ``samples``).

Deterministic: a sample's seed, p and cfg come from the run seed, the triple's key and the
sample's number alone, so a rerun, another batch size or another number of processes gives the
same pairs. Resumable, a prompt at a time, so a crash or a full disk leaves neither duplicates
nor holes: a rerun skips done prompts and redoes the others whole.

- paper: a prompt is done when its folder holds :data:`DONE_FILE`, written after its pairs; a
  folder without it (cut short by a crash) is cleared before the prompt is redone, and a write
  that fails (a full disk) removes the prompt's folder at once.
- parquet: a prompt's pairs and its :data:`DONE_FILE` record are one group of the writer, written
  in the same shard (the shard's rename makes the prompt done). Shards are written every
  ``shard_rows`` rows: Ctrl-C and SIGTERM write the prompts finished so far, a kill -9 loses
  those not yet in a shard (the rerun redoes them).

Sharded: process ``rank`` of ``world`` takes the prompts whose index ≡ rank (mod world);
``accelerate launch`` sets ``RANK`` / ``WORLD_SIZE``. A prompt is named by its index in the prompt
file (its folder, its group and its pairs' ``example_key`` ``NNNNNNN/seed``, as ``ip2p dataset
convert`` names them), so processes never write the same prompt, and a rerun with a changed prompt
file is refused rather than mixed in.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import pairs
from ..clip_filter import METADATA_KEYS, ClipScorer, ClipScores, FilterThresholds, select_samples
from ..datasets.outputs import open_output
from ..errors import IP2PError
from ..prompts import PromptTriple
from .components import EditModel
from .p2p import check_base_model, generate_pairs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateSettings:
    """How pairs are sampled and kept; a (low, high) range is drawn uniformly per sample."""

    samples: int = 100  # pairs sampled per prompt (the paper: 100)
    keep: int = 4  # pairs kept per prompt, best by CLIP directional similarity (the paper: 4)
    steps: int = 100  # sampling steps (the paper: 100, Euler ancestral)
    size: int = 512  # image side in pixels
    p2p_fraction: tuple[float, float] = (0.1, 0.9)  # p: the steps' share with shared self-attention
    cfg: tuple[float, float] = (7.5, 15.0)  # classifier-free guidance scale
    sampler: str = "euler_a"
    batch: int = 4  # seeds per UNet call (× 2 captions × cond/uncond rows)
    seed: int = 0  # the run seed: the same seed gives the same pairs
    thresholds: FilterThresholds = field(default_factory=FilterThresholds)

    def __post_init__(self) -> None:
        for name in ("samples", "keep", "steps", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise IP2PError(f"{name} must be a whole number of at least 1, got {value!r}.")
        if self.keep > self.samples:
            raise IP2PError(f"keep ({self.keep}) is more than samples ({self.samples}); keep at most what is sampled.")
        for name in ("p2p_fraction", "cfg"):
            low, high = getattr(self, name)
            if not low <= high:
                raise IP2PError(f"{name} range ({low}, {high}) is reversed; give the low value first.")


SETTINGS_FILE = "generate.json"  # at the dataset's root: what its pairs were made with (``ip2p generate``)


def settings_record(settings: GenerateSettings, base_hash: str, clip_hash: str | None, dtype: str) -> dict:
    """What decides a dataset's pairs, keyed by the command's own option names (``batch`` does not: it
    changes no pair)."""
    t = settings.thresholds
    return {
        "--base": base_hash,
        "--clip": clip_hash,
        "--dtype": dtype,
        "--samples": settings.samples,
        "--keep": settings.keep,
        "--steps": settings.steps,
        "--size": settings.size,
        "--p2p-fraction": list(settings.p2p_fraction),
        "--cfg": list(settings.cfg),
        "--sampler": settings.sampler,
        "--seed": settings.seed,
        "--min-sim": [t.sim_0, t.sim_1],
        "--min-sim-dir": t.sim_dir,
        "--min-sim-image": t.sim_image,
    }


def check_settings(out: str | Path, record: dict, force: bool = False) -> list[dict] | None:
    """Continue a dataset only with the settings it was made with: a rerun with others is refused; with ``force``
    it goes on. Reads only (nothing is written before the models are checked); returns what
    :func:`write_settings` records, the earlier settings, or None when the file already says ``record``."""
    path = Path(out) / SETTINGS_FILE
    if not path.exists():
        return []
    saved = _read_settings(path)
    changed = [
        f"{key}: {saved['settings'].get(key)!r} -> {value!r}"
        for key, value in record.items()
        if saved["settings"].get(key) != value
    ]
    if not changed:
        return None
    if not force:
        raise IP2PError(
            f"{out} was generated with other settings ({'; '.join(changed)}). Rerun with the dataset's own settings "
            f"(in {path}), write into a new --out, or pass --force to go on with these (the dataset then mixes "
            f"both; {SETTINGS_FILE} keeps the earlier ones)."
        )
    logger.warning("%s: going on with other settings than before (--force): %s", out, "; ".join(changed))
    return [*saved.get("earlier", []), saved["settings"]]


def write_settings(out: str | Path, record: dict, earlier: list[dict] | None) -> None:
    """Record ``record`` (and the ``earlier`` settings) in the dataset; None: already recorded."""
    from ..formats.atomic import atomic_file

    if earlier is None:
        return
    with atomic_file(Path(out) / SETTINGS_FILE) as tmp:  # processes starting together write the same text
        tmp.write_text(json.dumps({"settings": record, "earlier": earlier}, indent=2) + "\n", encoding="utf-8")


def _read_settings(path: Path) -> dict:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict):
            raise ValueError("no 'settings' object")
    except (OSError, ValueError) as exc:
        raise IP2PError(
            f"{path} is damaged ({exc}): it records the settings this dataset was made with. Restore it, or write "
            f"into a new --out."
        ) from exc
    return saved


@dataclass
class GenerateSummary:
    """What a run did: prompts done (and skipped as done before), pairs tried and kept, rejections by threshold."""

    prompts: int = 0
    skipped: int = 0
    tried: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)

    def line(self) -> str:
        reasons = ", ".join(f"{n} by {reason}" for reason, n in sorted(self.rejected.items()))
        return (
            f"{self.prompts} prompt(s) done ({self.skipped} already done before), {self.tried} pair(s) tried, "
            f"{self.kept} kept" + (f", rejected: {reasons}" if reasons else "")
        )


def sample_plan(triple: PromptTriple, settings: GenerateSettings) -> list[dict]:
    """Each sample's seed, p and cfg (:func:`ip2p.pairs.sample_plan`: the run seed, the triple's key and the sample's number only)."""
    return pairs.sample_plan(
        triple.key, settings.samples, run_seed=settings.seed, p2p_fraction=settings.p2p_fraction, cfg=settings.cfg
    )


def check_keep(settings: GenerateSettings, filtered: bool) -> None:
    """Without a CLIP filter nothing chooses which pairs to keep: ``keep`` must then be ``samples``."""
    if not filtered and settings.keep != settings.samples:
        raise IP2PError(
            f"--keep {settings.keep} is below --samples {settings.samples}, but without --clip nothing chooses which "
            f"pairs to keep: pass --clip MODEL_FOLDER, or set --keep {settings.samples}."
        )


def shard(count: int, rank: int, world: int) -> range:
    """The prompt indices process ``rank`` of ``world`` takes."""
    if not 0 <= rank < world:
        raise IP2PError(f"Process rank {rank} is outside 0..{world - 1}: check RANK and WORLD_SIZE.")
    return range(rank, count, world)


def generate_prompt(
    model: EditModel, triple: PromptTriple, settings: GenerateSettings, scorer: ClipScorer | None
) -> tuple[list[tuple[dict, torch.Tensor]], int, Counter]:
    """Sample one prompt's pairs in batches; return the kept ``(metadata, images (2,3,H,W))`` best
    first, how many were tried, and the rejections by reason. Images are held only for the best
    ``keep`` pairs that pass so far, so memory does not grow with ``samples``."""
    plan = sample_plan(triple, settings)
    scored: list[dict] = []  # every sample's metadata and CLIP scores, in sample order
    candidates: dict[int, tuple[dict, torch.Tensor]] = {}  # sample number -> (record, images)
    for start in range(0, len(plan), settings.batch):
        chunk = plan[start : start + settings.batch]
        pairs = generate_pairs(
            model,
            triple.input_caption,
            triple.edited_caption,
            [c["seed"] for c in chunk],
            [c["p2p_threshold"] for c in chunk],
            [c["cfg_scale"] for c in chunk],
            settings.steps,
            settings.size,
            settings.sampler,
            progress=False,
        )
        if scorer is None:
            candidates.update(
                {start + i: (meta, images) for i, (meta, images) in enumerate(zip(chunk, pairs.images, strict=True))}
            )
            continue
        scores = scorer.score(pairs.images[:, 0], pairs.images[:, 1], triple.input_caption, triple.edited_caption)
        for i, (meta, images, values) in enumerate(zip(chunk, pairs.images, scores.as_dicts(), strict=True)):
            scored.append({**meta, **values})
            candidates[start + i] = (scored[-1], images)
        best = select_samples(_as_scores(scored), settings.thresholds).kept
        candidates = {n: candidates[n] for n in best}
    if scorer is None:
        return [candidates[n] for n in sorted(candidates)], len(plan), Counter()
    result = select_samples(_as_scores(scored), settings.thresholds)
    return [candidates[n] for n in result.kept], len(plan), Counter(result.rejected.values())


def _as_scores(records: Sequence[dict]) -> ClipScores:
    return ClipScores(**{name: torch.tensor([r[key] for r in records]) for name, key in METADATA_KEYS.items()})


def generate_dataset(
    model: EditModel,
    triples: Sequence[PromptTriple],
    out: str | Path,
    settings: GenerateSettings,
    scorer: ClipScorer | None = None,
    *,
    layout: str = "paper",
    shard_rows: int = 1000,
    rank: int = 0,
    world: int = 1,
    progress: Callable[[int], None] | None = None,
) -> GenerateSummary:
    """Generate this process's share of ``triples`` into ``out`` as ``layout`` (``"paper"`` or ``"parquet"``).

    ``shard_rows``: rows per parquet shard (parquet only): fewer lose less to a kill -9, more make fewer files.
    """
    check_keep(settings, filtered=scorer is not None)
    check_base_model(model)
    summary = GenerateSummary()
    with open_output(layout, Path(out), shard_rows) as output:
        for index in shard(len(triples), rank, world):
            triple = triples[index]
            if output.is_done(index, triple):
                summary.skipped += 1
            else:
                kept, tried, rejected = generate_prompt(model, triple, settings, scorer)
                done = {"tried": tried, "kept": len(kept), "rejected": dict(rejected), "key": triple.key}
                output.write(index, triple, kept, done)
                summary.prompts += 1
                summary.tried += tried
                summary.kept += len(kept)
                summary.rejected += rejected
            if progress:
                progress(1)
    return summary
