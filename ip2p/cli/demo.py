"""``ip2p demo``, the embedded default job: the shipped toy model edits held-out toy images, and is scored.

The toy world (:mod:`ip2p.datasets.toy`) renders every example's true edit and edit mask, so the
demo can say from pixels how well the model follows instructions (:mod:`ip2p.headless.toy_scores`).
It writes, under ``--out``:

- ``input.png`` / ``edited.png``: the first held-out example, edited through ``ip2p edit`` itself;
- ``report.png``: held-out examples (input, truth, the edit, the edit under a wrong instruction)
  and a text_cfg × image_cfg sweep of the first one;
- ``scores.json``: the distances and the two baselines, over ``--examples`` held-out examples.

``--train`` first retrains the toy model from nothing under ``--out`` (the VAE step, the dataset,
the trainer: :mod:`ip2p_train.toy`) and reports on that model instead of the shipped one.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..errors import IP2PError
from ..formats.atomic import atomic_file
from . import edit

logger = logging.getLogger(__name__)

DEMO_EXAMPLES = 64  # held-out examples scored
# `--train`: trainer steps that keep the whole recipe within 15 minutes on 2 cores (VAE step ~3 min,
# data and latent cache ~1 min, ~3.5 steps/s, scoring ~1 min); the shipped model had 3000.
DEMO_TRAIN_STEPS = 1600
REPORT_ROWS = 8  # of which the report shows the first
SWEEP_TEXT_CFG = (1.0, 3.0, 7.5)
SWEEP_IMAGE_CFG = (1.0, 1.5, 3.0)
CELL = 128  # report cells: the 64 px images enlarged (nearest) in a 2 px white frame, so labels fit


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "demo",
        parents=[common],
        help="edit held-out toy images with the shipped toy model and score the edits (--train: retrain it first)",
        description="The toy world's demo: the shipped toy InstructPix2Pix model (trained here by `ip2p train` on "
        "rendered shapes) edits held-out examples it never saw; the scores compare its edits with the true edits "
        "inside the edit mask, against two baselines (the unchanged input, the same model given a wrong "
        "instruction), and with the input outside the mask.",
    )
    p.add_argument("--out", default="out/demo", help="folder for input.png, edited.png, report.png, scores.json")
    p.add_argument("--steps", type=int, default=20, help="sampling steps per edit (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument(
        "--examples", type=int, default=DEMO_EXAMPLES, help=f"held-out examples to score (default: {DEMO_EXAMPLES})"
    )
    p.add_argument("--model", default=None, help="score this toy model (a diffusers folder) instead of the shipped one")
    p.add_argument(
        "--train",
        action="store_true",
        help=f"retrain the toy model from nothing under --out first (VAE step, dataset, {DEMO_TRAIN_STEPS} trainer steps; "
        f"about 12 min on 2 cores)",
    )
    p.add_argument(
        "--train-steps",
        type=int,
        default=DEMO_TRAIN_STEPS,
        help=f"with --train: optimizer steps (default {DEMO_TRAIN_STEPS}, to stay within 15 minutes; the shipped model "
        f"had toy.yaml's 3000, about 7 minutes more)",
    )
    p.set_defaults(handler=run)


def _model_dir(args: argparse.Namespace, out_dir: Path) -> Path:
    from ..headless.toy_model import SHIPPED_MODEL

    if args.train:
        if args.model:
            raise IP2PError("--train trains its own model under --out; leave out --model.")
        from ip2p_train.toy import train_toy_model  # the trainer: only when asked for

        return train_toy_model(out_dir, steps=args.train_steps, progress=not args.quiet)
    model_dir = Path(args.model) if args.model else SHIPPED_MODEL
    if not (model_dir / "model_index.json").is_file():
        raise IP2PError(f"{model_dir} is not a diffusers model folder. Give a toy model's folder, or use --train.")
    return model_dir


def run(args: argparse.Namespace) -> int:
    from ..datasets.toy import SEEDS_PER_RUN, render_example, toy_seeds
    from ..headless.editor import EditSettings
    from ..headless.loading import load_edit_model
    from ..headless.toy_model import HELDOUT_RUN
    from ..headless.toy_scores import score_toy_model

    if not 2 <= args.examples <= SEEDS_PER_RUN:
        raise IP2PError(
            f"--examples is {args.examples}; give 2 to {SEEDS_PER_RUN} (the wrong-instruction baseline needs two)."
        )
    settings = EditSettings(instruction="", steps=args.steps, seed=args.seed)  # checked before anything is written
    out_dir = Path(args.out)
    seeds = toy_seeds(HELDOUT_RUN, args.examples)
    model_dir = _model_dir(args, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    first = render_example(seeds[0])
    input_path, edited_path = out_dir / "input.png", out_dir / "edited.png"
    with atomic_file(input_path) as tmp:
        first.input_image.save(tmp, format="PNG")
    edit_args = edit.parse_arguments([
        "--model", str(model_dir), "--image", str(input_path), "--instruction", first.instruction,
        "--out", str(edited_path), "--steps", str(args.steps), "--seed", str(args.seed),
        "--overwrite",  # the demo's own four files in --out are replaced by each demo run
    ])  # fmt: skip
    edit_args.quiet = args.quiet
    status = edit.run(edit_args)
    if status:
        return status

    model = load_edit_model(model_dir)
    summary, edits = score_toy_model(model, seeds, settings)
    report = out_dir / "report.png"
    with atomic_file(report) as tmp:
        render_report(model, edits[:REPORT_ROWS], settings).save(tmp, format="PNG")
    scores = {
        "model": str(model_dir),
        "heldout_examples": f"ip2p dataset toy --seed {HELDOUT_RUN} --count {args.examples}",
        "settings": {"steps": args.steps, "seed": args.seed, "text_cfg": settings.text_cfg,
                     "image_cfg": settings.image_cfg, "sampler": settings.sampler},
        "distance": "mean absolute RGB difference in [0, 1], per example then averaged",
        **summary,
        "per_example": [{"seed": e.example.seed, "instruction": e.example.instruction,
                         "wrong_instruction": e.wrong_instruction, **e.distances} for e in edits],
    }  # fmt: skip
    with atomic_file(out_dir / "scores.json") as tmp:
        tmp.write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    logger.info(
        "Toy demo on %d held-out examples -> %s\n"
        "  inside the edit mask, distance to the true edit: %.3f (unchanged input: %.3f, wrong instruction: %.3f)\n"
        "  outside the mask, distance to the input: %.3f\n"
        "  %s: '%s' -> %s; the report grid: %s",
        summary["examples"], out_dir / "scores.json",
        summary["inside.result_to_truth"], summary["inside.input_to_truth"],
        summary["inside.wrong_instruction_to_truth"], summary["outside.result_to_input"],
        input_path, first.instruction, edited_path, report,
    )  # fmt: skip
    return 0


def render_report(model, edits, settings):
    """Rows of held-out examples (input, truth, edit, wrong-instruction edit) above a guidance sweep of the first."""
    import dataclasses

    import numpy as np
    import torch
    from PIL import Image, ImageOps

    from ..grid import labelled_grid
    from ..headless.toy_scores import edit_examples

    def cell(pixels) -> torch.Tensor:  # enlarged, in a white frame so neighbouring scenes stay apart
        image = Image.fromarray(np.asarray(pixels)).resize((CELL - 4, CELL - 4), Image.Resampling.NEAREST)
        image = ImageOps.expand(image, border=2, fill="white")
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)

    rows = []
    for e in edits:
        rows += [cell(e.example.input_image), cell(e.example.edited_image), cell(e.result), cell(e.wrong_result)]
    examples = labelled_grid(
        torch.stack(rows),
        [e.example.instruction for e in edits],
        ["input", "true edit", f"edit (text {settings.text_cfg:g}, image {settings.image_cfg:g})",
         "given another instruction"],
        label_width=2 * CELL,
    )  # fmt: skip
    first = edits[0].example
    sweep_cells = []
    for image_cfg in SWEEP_IMAGE_CFG:
        for text_cfg in SWEEP_TEXT_CFG:
            s = dataclasses.replace(settings, text_cfg=text_cfg, image_cfg=image_cfg)
            sweep_cells.append(cell(edit_examples(model, [first], [first.instruction], s)[0]))
    sweep = labelled_grid(
        torch.stack(sweep_cells),
        [f"image_cfg {v:g}" for v in SWEEP_IMAGE_CFG],
        [f"text_cfg {v:g}" for v in SWEEP_TEXT_CFG],
        label_width=2 * CELL,
    )
    parts = [Image.fromarray((g.numpy() * 255).round().astype(np.uint8)) for g in (examples, sweep)]
    canvas = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts) + 16), "white")
    canvas.paste(parts[0], (0, 0))
    canvas.paste(parts[1], (0, parts[0].height + 16))
    return canvas
