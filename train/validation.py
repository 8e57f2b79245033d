"""Validation grids during training, and TensorBoard logging when it is installed.

Every ``validation.every`` optimizer steps, and at the last step, the main process edits fixed
validation images with the EMA weights (a float32 CPU copy: the UNet being trained is never
touched) at every ``(text_cfg, image_cfg)`` pair, and writes ``validation/step-N.png``: one row per
image, its input first (labelled with its instruction), then one column per pair of scales.
Each edit draws from its own generator seeded with ``validation.seed`` (Euler ancestral, as the
headless editor draws), so the grids of different steps compare, and the training's random state
is left as it was. The validation images are ``validation.images`` (each with its instruction) or,
by default, the first ``validation.count`` training examples in the dataset's file order; all are
centre-cropped to ``data.resolution`` squares and edited at that size. Cells smaller than
:data:`MIN_CELL` px are enlarged (nearest neighbour) in the grid so they and their labels can be read.

Held-out scoring (:class:`Evaluator`, ``validation.eval_count`` > 0): at the same steps and with the
same model, ``validation.eval_count`` examples of ``validation.eval_data`` (by default the first
training examples) are edited at the first ``(text_cfg, image_cfg)`` pair, toy examples also under
a wrong instruction, and scored by ``ip2p eval``'s code (:func:`ip2p.quality.scoring.score_edits`,
summarized as one pair of its ``metrics.json``): every metric the data and the CLIP / DINO folders
allow, the others skipped with the reason. Inputs, targets and masks are centre-cropped to
``data.resolution`` squares as the grid's inputs are.

TensorBoard: when ``tensorboard`` is importable, the loss, learning rate, throughput, the held-out
means (``eval/<metric>``) and the grids are logged to ``OUTPUT_DIR/logs/``
(``tensorboard --logdir OUTPUT_DIR/logs``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ip2p import grid, sizing
from ip2p.errors import IP2PError
from ip2p.images import load_image, save_png, to_rgb_array
from ip2p.quality.metrics import TOY_METRICS

from .config import TrainConfig, ValidationConfig

logger = logging.getLogger("ip2p.train")

FOLDER = "validation"  # the grids, in the run folder
LOGS = "logs"  # TensorBoard's event files, in the run folder
MIN_CELL = 128  # px: smaller cells are enlarged by a whole factor in the grid (a 32 px toy image is shown at 128)
LABEL_WIDTH = 128  # px of the instruction column
LABEL_HEIGHT = 32  # px of the header: two lines, "text_cfg 7.5" over "image_cfg 1.5"
SAMPLER, SCHEDULER = "euler_ancestral", "normal"  # the paper's sampler, the model's own timestep spacing
NAN_GREY = 0.5  # the cell of an edit that came out NaN (logged as a warning; training goes on)


def grid_path(output_dir: str | os.PathLike, step: int) -> Path:
    """``OUTPUT_DIR/validation/step-N.png``."""
    return Path(output_dir) / FOLDER / f"step-{step}.png"


def cell_size(resolution: int) -> int:
    """The side of one grid cell for images of ``resolution`` px: enlarged by a whole factor up to ``MIN_CELL``."""
    return resolution * max(1, math.ceil(MIN_CELL / resolution))


def scale_label(text_cfg: float, image_cfg: float) -> str:
    return f"text_cfg {text_cfg:g}\nimage_cfg {image_cfg:g}"


def _square(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] → (1, 3, R, R): scaled to cover the square, centre-cropped."""
    return sizing.fit_crop(image, (resolution, resolution)).clamp(0, 1)


def validation_inputs(config: ValidationConfig, resolution: int, dataset: Sequence) -> tuple[torch.Tensor, list[str]]:
    """The validation images as (N, 3, R, R) in [0, 1] and their instructions.

    ``validation.images`` (read now, so a bad file stops the run before it writes anything), or the
    input images and instructions of the first ``validation.count`` examples of ``dataset``.
    """
    if config.images:
        images = []
        for i, path in enumerate(config.images):
            try:
                image = load_image(Path(path).expanduser())
            except IP2PError as exc:
                raise IP2PError(f"validation.images[{i}] cannot be used: {exc}") from exc
            images.append(_square(image, resolution))
        return torch.cat(images), list(config.instructions)
    if len(dataset) == 0:
        raise IP2PError("The dataset has no examples; give a dataset with at least one pair.")
    count = min(config.count, len(dataset))
    if count < config.count:
        logger.info("Validating on all %d training examples (validation.count is %d)", count, config.count)
    examples = [dataset[i] for i in range(count)]
    images = [torch.from_numpy(to_rgb_array(e.input_image)).permute(2, 0, 1)[None] for e in examples]
    return torch.cat([_square(image, resolution) for image in images]), [e.instruction for e in examples]


class Validator:
    """The fixed validation edits of one run; :meth:`run` writes one step's grid."""

    def __init__(self, config: ValidationConfig, resolution: int, dataset: Sequence) -> None:
        from ip2p.headless.editor import EditSettings

        self.config = config
        self.resolution = resolution
        self.inputs, self.instructions = validation_inputs(config, resolution, dataset)
        self.scales = [(t, s) for t in config.text_cfg for s in config.image_cfg]
        try:  # every edit's settings checked before training starts
            self.settings = [
                [
                    EditSettings(
                        instruction=instruction,
                        steps=config.steps,
                        text_cfg=t,
                        image_cfg=s,
                        sampler=SAMPLER,
                        scheduler=SCHEDULER,
                        seed=config.seed,
                        resize="keep",
                    )
                    for t, s in self.scales
                ]
                for instruction in self.instructions
            ]
        except IP2PError as exc:
            raise IP2PError(f"The validation settings cannot work: {exc} Fix the validation.* keys.") from exc

    def due(self, step: int, max_steps: int) -> bool:
        """Whether ``step`` gets a grid: every ``validation.every`` steps and at the last step."""
        every = self.config.every
        return every > 0 and (step % every == 0 or step == max_steps)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of cells: one row per image; the input, then one column per pair of scales."""
        return len(self.instructions), 1 + len(self.scales)

    def edits(self, model, step: int = 0, progress: bool = True) -> torch.Tensor:
        """Every cell, row-major, as (rows·columns, 3, R, R) in [0, 1]: each input, then its edits."""
        from tqdm.auto import tqdm

        from ip2p.headless.editor import NonFiniteEditError, edit

        cells = []
        with tqdm(total=self.inputs.shape[0] * len(self.scales), desc="validation", unit="edit",
                  disable=not progress, leave=False) as bar:  # fmt: skip
            for image, row in zip(self.inputs, self.settings, strict=True):
                cells.append(image)
                for settings in row:
                    try:
                        cells.append(edit(model, image[None], settings, progress=False)[0])
                    except NonFiniteEditError as exc:  # a bad cell must not end hours of training
                        logger.warning(
                            "Validation at step %d, %r at text_cfg %g, image_cfg %g: %s The cell is grey.",
                            step, settings.instruction, settings.text_cfg, settings.image_cfg, exc,
                        )  # fmt: skip
                        cells.append(torch.full_like(image, NAN_GREY))
                    bar.update(1)
        return torch.stack(cells)

    def picture(self, cells: torch.Tensor) -> torch.Tensor:
        """The labelled grid of ``cells`` (from :meth:`edits`) as (H, W, 3) in [0, 1]."""
        factor = cell_size(self.resolution) // self.resolution
        if factor > 1:
            cells = F.interpolate(cells, scale_factor=factor, mode="nearest")
        rows = [text if text.strip() else "(no instruction)" for text in self.instructions]
        cols = ["input"] + [scale_label(t, s) for t, s in self.scales]
        return grid.labelled_grid(cells.permute(0, 2, 3, 1), rows, cols, LABEL_WIDTH, LABEL_HEIGHT)

    def run(self, model, step: int, output_dir: str | os.PathLike, progress: bool = True) -> tuple[Path, torch.Tensor]:
        """Edit, lay out and write ``validation/step-N.png`` atomically; returns its path and the grid (H, W, 3).

        ``model`` is an :class:`~ip2p.headless.components.EditModel` to edit with (the trainer passes its
        float32 CPU export view: EMA weights, a copy of the UNet).
        """
        picture = self.picture(self.edits(model, step, progress))
        path = grid_path(output_dir, step)
        metadata = {
            "step": step, "instructions": self.instructions, "text_cfg": self.config.text_cfg,
            "image_cfg": self.config.image_cfg, "steps": self.config.steps, "seed": self.config.seed,
            "sampler": SAMPLER, "scheduler": SCHEDULER, "resolution": self.resolution,
        }  # fmt: skip
        save_png(picture.permute(2, 0, 1), path, metadata)
        return path, picture


def make_validator(config: TrainConfig, dataset: Sequence) -> Validator | None:
    """The run's validator, or None when ``validation.every`` is 0."""
    if config.validation.every <= 0:
        return None
    return Validator(config.validation, config.data.resolution, dataset)


# ------------------------------------------------------------------------------- held-out scoring

# What an example must carry for a metric besides the models the config names, and how to say it lacks it.
NEEDS = {
    "sim_0": ("input_caption",),
    "sim_1": ("output_caption",),
    "clip_t": ("output_caption",),
    "directional": ("input_caption", "output_caption"),
    **{name: ("mask",) for name in TOY_METRICS},
    "toy.wrong_instruction_to_truth": ("mask", "wrong_instruction"),
}
LACKS = {
    "input_caption": "an input caption",
    "output_caption": "an output caption",
    "mask": "an edit mask (toy data carries one)",
    "wrong_instruction": "an edit family with another family among the examples (the toy world's)",
}


@dataclass(frozen=True)
class HeldOut:
    """One held-out example as scored: images centre-cropped to the training resolution."""

    key: str
    instruction: str
    input: torch.Tensor  # 1×3×R×R in [0, 1]
    target: torch.Tensor  # 1×3×R×R: the dataset's edited image
    input_caption: str | None
    output_caption: str | None
    mask: torch.Tensor | None  # R×R bool: the pixels the edit should change (the toy world knows them)
    family: str | None  # the toy world's edit family
    wrong_instruction: str | None  # another family's instruction: the baseline toy.wrong_instruction_to_truth


def _pixels(image, resolution: int) -> torch.Tensor:
    return _square(torch.from_numpy(to_rgb_array(image)).permute(2, 0, 1)[None], resolution)


def _mask(extra: dict, resolution: int) -> torch.Tensor | None:
    """The example's edit mask as ``ip2p eval`` reads it, cropped as its images."""
    from ip2p.headless.evaluate import example_mask

    mask = example_mask(extra)
    if mask is None:
        return None
    return sizing.fit_crop(mask.float()[None, None], (resolution, resolution))[0, 0] > 0.5


def held_out_examples(config: ValidationConfig, resolution: int, dataset: Sequence, columns=None) -> list[HeldOut]:
    """The first ``validation.eval_count`` examples of ``validation.eval_data`` (read with ``columns``), or of the
    training ``dataset`` when it is null; each toy example gets its wrong instruction as ``ip2p eval`` chooses it."""
    from ip2p.headless.toy_scores import wrong_instructions

    where = "validation.eval_data" if config.eval_data else "the dataset"
    if config.eval_data:
        from ip2p.datasets.reader import open_dataset

        try:
            dataset = open_dataset(config.eval_data, columns=columns or None)
        except IP2PError as exc:
            raise IP2PError(f"validation.eval_data cannot be used: {exc}") from exc
    if len(dataset) == 0:
        raise IP2PError(
            f"{where} has no examples to score; give one with at least one pair, or validation.eval_count=0."
        )
    loaded = []
    for index in range(min(config.eval_count, len(dataset))):
        try:
            example = dataset[index]
        except (IP2PError, OSError, ValueError) as exc:
            raise IP2PError(f"Held-out example #{index} of {where} cannot be read: {exc}") from exc
        loaded.append(example)
    families = [e.extra.get("family") if isinstance(e.extra.get("family"), str) else None for e in loaded]
    wrong = wrong_instructions([e.instruction for e in loaded], families)
    return [
        HeldOut(
            key=str(e.key),
            instruction=e.instruction,
            input=_pixels(e.input_image, resolution),
            target=_pixels(e.edited_image, resolution),
            input_caption=e.extra.get("input_caption") or None,
            output_caption=e.extra.get("output_caption") or None,
            mask=_mask(e.extra, resolution),
            family=family,
            wrong_instruction=other,
        )
        for e, family, other in zip(loaded, families, wrong, strict=True)
    ]


class Evaluator:
    """The held-out examples of one run and the scorers; :meth:`run` edits and scores them with given weights.

    Every process reads the examples and checks the CLIP / DINO folders (so a bad one stops all of them
    before training); the scorers are loaded, on the CPU in float32 beside the CPU copy that validation
    edits with, only where ``load_scorers`` (the main process), under a forked random state.
    """

    def __init__(
        self, config: ValidationConfig, resolution: int, dataset: Sequence, columns=None, *, load_scorers: bool = True
    ) -> None:
        from ip2p.clip_filter import ClipScorer, check_clip_folder
        from ip2p.headless.editor import EditSettings
        from ip2p.quality.dino import DinoScorer, check_dino_folder

        self.examples = held_out_examples(config, resolution, dataset, columns)
        self.text_cfg, self.image_cfg = config.text_cfg[0], config.image_cfg[0]
        self.settings = EditSettings(
            instruction=self.examples[0].instruction, steps=config.steps, text_cfg=self.text_cfg,
            image_cfg=self.image_cfg, sampler=SAMPLER, scheduler=SCHEDULER, seed=config.seed, resize="keep",
        )  # fmt: skip
        self.clip = self.dino = None
        for key, check, scorer in (("clip", check_clip_folder, ClipScorer), ("dino", check_dino_folder, DinoScorer)):
            folder = getattr(config, key)
            if folder is None:
                continue
            try:
                folder = check(Path(folder).expanduser())
            except IP2PError as exc:
                raise IP2PError(f"validation.{key} cannot be used: {exc}") from exc
            if load_scorers:
                with torch.random.fork_rng():  # a model's build draws initial weights: training's stay
                    setattr(self, key, scorer.from_folder(folder, device="cpu", dtype=torch.float32))

    def check_keep_best(self, name: str) -> None:
        """Refuse ``checkpoints.keep_best=name`` when no held-out example carries what the metric needs."""
        needs = NEEDS.get(name, ())
        if any(all(getattr(e, need) is not None for need in needs) for e in self.examples):
            return
        lacking = [n for n in needs if all(getattr(e, n) is None for e in self.examples)] or needs
        raise IP2PError(
            f"checkpoints.keep_best={name}: none of the {len(self.examples)} held-out examples has "
            f"{' and '.join(LACKS[n] for n in lacking)}, so {name} cannot be scored. Choose a metric this data "
            f"allows (e.g. l1), or give held-out data that has it as validation.eval_data."
        )

    def run(self, model, step: int = 0, progress: bool = True) -> dict:
        """Edit every held-out example with ``model`` (as :meth:`Validator.run` takes it) and score the edits: one
        pair of ``ip2p eval``'s ``metrics.json`` (``metrics``: each one's mean, ci95 and n; ``skipped`` and
        ``failed`` with their reasons; ``per_family`` for toy data)."""
        from tqdm.auto import tqdm

        from ip2p.headless.editor import NonFiniteEditError, edit
        from ip2p.headless.evaluate import summarize_rows
        from ip2p.quality.scoring import EditToScore, score_edits

        rows, scored, items = [], [], []
        bar = tqdm(self.examples, desc="held-out", unit="example", disable=not progress, leave=False)
        for index, example in enumerate(bar):
            row = {"text_cfg": self.text_cfg, "image_cfg": self.image_cfg, "key": example.key, "index": index}
            if example.family is not None:
                row["family"] = example.family
            rows.append(row)
            texts = [example.instruction] + ([example.wrong_instruction] if example.wrong_instruction else [])
            try:  # the wrong instruction in the same call, with the same seed, as ip2p eval edits it
                edited = edit(
                    model, example.input.expand(len(texts), -1, -1, -1), self.settings, instructions=texts,
                    progress=False,
                )  # fmt: skip
            except NonFiniteEditError as exc:  # counted as failed; training goes on
                logger.warning("Held-out example %s at step %d: %s", example.key, step, exc)
                row["failed"] = f"the edit failed: {exc}"
                continue
            scored.append(row)
            items.append(
                EditToScore(
                    input=example.input,
                    edit=edited[:1],
                    target=example.target,
                    input_caption=example.input_caption,
                    output_caption=example.output_caption,
                    mask=example.mask,
                    wrong_edit=edited[1:] if example.wrong_instruction else None,
                )
            )
        for row, values in zip(scored, score_edits(items, clip=self.clip, dino=self.dino), strict=True):
            row.update(values)
        (entry,) = summarize_rows(rows, record={})["pairs"]
        return entry


def make_evaluator(config: TrainConfig, dataset: Sequence, *, main: bool = True) -> Evaluator | None:
    """The run's held-out scoring (None when validation is off or ``validation.eval_count`` is 0), with
    ``checkpoints.keep_best`` checked against what its examples carry."""
    v = config.validation
    if v.every <= 0 or v.eval_count <= 0:
        return None
    evaluator = Evaluator(v, config.data.resolution, dataset, config.data.columns, load_scorers=main)
    if config.checkpoints.keep_best is not None:
        evaluator.check_keep_best(config.checkpoints.keep_best)
    return evaluator


def means(entry: dict) -> dict[str, float]:
    """``{metric: mean}`` of an :meth:`Evaluator.run` entry (metrics without a finite value left out)."""
    return {name: s["mean"] for name, s in entry["metrics"].items() if s["mean"] is not None}


# ----------------------------------------------------------------------------------- TensorBoard


def open_tensorboard(output_dir: str | os.PathLike, step: int = 0):
    """A ``SummaryWriter`` on ``OUTPUT_DIR/logs`` (events after ``step`` from an earlier try hidden), or None
    with one info line when tensorboard is not installed."""
    folder = Path(output_dir) / LOGS
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info(
            "TensorBoard logging is off (tensorboard is not installed); pip install tensorboard to log the loss, "
            "learning rate and validation grids to %s",
            folder,
        )
        return None
    # purge_step: a resumed run hides what an interrupted try logged past its checkpoint.
    return SummaryWriter(log_dir=str(folder), purge_step=step + 1)


def log_scalars(writer, record: dict) -> None:
    """One metrics record as TensorBoard scalars: a step's ``loss``, ``lr``, ``samples_per_s`` under ``train/``,
    a held-out scoring's means under ``eval/``."""
    for key in ("loss", "lr", "samples_per_s"):
        value = record.get(key)
        if value is not None:
            writer.add_scalar(f"train/{key}", value, record["step"])
    if "eval" in record:
        for name, value in means(record["eval"]).items():
            writer.add_scalar(f"eval/{name}", value, record["step"])


def log_grid(writer, picture: torch.Tensor, step: int) -> None:
    """A validation grid (H, W, 3) in [0, 1] as the TensorBoard image ``validation``."""
    writer.add_image("validation", picture.numpy(), step, dataformats="HWC")
