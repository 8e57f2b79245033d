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

TensorBoard: when ``tensorboard`` is importable, the loss, learning rate, throughput and the
grids are logged to ``OUTPUT_DIR/logs/`` (``tensorboard --logdir OUTPUT_DIR/logs``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ip2p import grid, sizing
from ip2p.errors import IP2PError
from ip2p.images import load_image, save_png, to_rgb_array

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
    """One metrics record (``step``, ``loss``, ``lr``, ``samples_per_s``) as TensorBoard scalars under ``train/``."""
    for key in ("loss", "lr", "samples_per_s"):
        value = record.get(key)
        if value is not None:
            writer.add_scalar(f"train/{key}", value, record["step"])


def log_grid(writer, picture: torch.Tensor, step: int) -> None:
    """A validation grid (H, W, 3) in [0, 1] as the TensorBoard image ``validation``."""
    writer.add_image("validation", picture.numpy(), step, dataformats="HWC")
