"""Side-by-side benchmark of ``ip2p eval``: prints one JSON line per figure on stdout.

Both sides do the same work in one process, on the same random-weight InstructPix2Pix model
(``--model tiny`` by default: seconds; ``sd15``: the full architecture, built once, about a minute)
and a tiny random CLIP, over the same ``--examples`` examples of a paper-layout dataset written
here (random ``--size`` px input and edited images, an input and an edited caption each), at the
same guidance pairs, steps, sampler and seed; every edit gets the CLIP metrics (sim_0, sim_1,
directional, image, CLIP-I, CLIP-T) and L1, L2 against the edited image:

- eval: :func:`ip2p.headless.evaluate.evaluate` into a fresh folder, ``--batch`` examples per
  editor call and per scoring call (``ip2p eval --batch``), writing everything ``ip2p eval`` writes;
- the plain loop, the same work the naive way: one :func:`ip2p.headless.editor.edit` call per
  example and per guidance pair (what ``ip2p edit`` runs), then each edit scored alone with
  :class:`ip2p.clip_filter.ClipScorer` (``score`` for the paper's four, ``embed_images`` of the
  edit and the target for CLIP-I) and ``pixel_distances``; nothing written.

Timed runs alternate (eval, loop, eval, loop, …) after an untimed one-step warm-up of each side;
figures are medians of ``--repeats``. Each line records ``max_other_cpu_cores``, the most CPU other
processes used during one of its timed runs: above about 0.1 the figure is noisy. Progress on stderr.

1. ``eval_edits_per_s_vs_plain_loop``: edits per second of the whole run, eval ÷ the loop.
   ``max_metric_difference``: the largest difference between the two sides' values of any metric
   of any edit (the same work gives the same numbers, to the rounding of another batch).
2. ``eval_scores_per_s_vs_plain_loop``: edits scored per second of scoring time (eval: inside
   ``score_edits``; the loop: its ClipScorer and pixel calls), eval ÷ the loop.
3. ``eval_time_shares``: eval's time inside ``editor.edit`` (editing), inside ``score_edits``
   (scoring) and the rest (reading examples, writing the folder and its pictures). Goal: scoring
   well below editing — batched scoring is not the bottleneck.

    python bench/eval.py                                      # tiny, 4 examples x 2 pairs, 4 steps, ~1 min
    python bench/eval.py --examples 16 --steps 20 --batch 8 --repeats 3
    python bench/eval.py --model sd15 --size 256 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import _workers  # bench/ is sys.path[0] when this file runs as a script
import numpy as np
import torch
from cpu_noise import CpuWindow

logger = logging.getLogger("bench")

MODEL_SEED = 0
EDIT_SEED = 0
METRICS = ("sim_0", "sim_1", "directional", "image", "clip_i", "clip_t", "l1", "l2")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="tiny", choices=("tiny", "sd15"))
    p.add_argument("--examples", type=int, default=4, help="examples evaluated (default 4)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--steps", type=int, default=4, help="sampling steps (default 4)")
    p.add_argument("--text-cfg", default="7.5", help="text guidance scale(s), comma-separated (default 7.5)")
    p.add_argument("--image-cfg", default="1.2,1.8", help="image guidance scale(s), comma-separated (1.2,1.8)")
    p.add_argument("--batch", type=int, default=4, help="eval's examples per editor and scoring call (default 4)")
    p.add_argument("--sampler", default="euler_ancestral")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    for name in ("examples", "size", "steps", "batch", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    from ip2p.grid import parse_scales

    args.text_cfg = tuple(parse_scales(args.text_cfg, "--text-cfg"))
    args.image_cfg = tuple(parse_scales(args.image_cfg, "--image-cfg"))
    return args


def emit(record: dict) -> None:
    """One figure as a JSON line on stdout (the benchmark's only stdout output)."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def write_dataset(root: Path, count: int, size: int) -> Path:
    """``count`` pairs of random images in the paper's layout, each with its captions and instruction."""
    from ip2p.datasets.paper import PaperLayoutWriter

    writer, rng = PaperLayoutWriter(root), np.random.default_rng(0)
    for i in range(count):
        prompt = {"caption": f"a photo of object {i}", "edit": f"make object {i} red", "output": f"a red object {i}"}
        images = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
        writer.add(i, prompt, seed=i, image0=images[0], image1=images[1])
    writer.finish()
    return root


class Stopwatch:
    """Seconds spent inside the functions it wraps (the device synchronised at both ends)."""

    def __init__(self, device: str) -> None:
        self.device, self.seconds = device, 0.0

    def wrap(self, function):
        def timed(*args, **kwargs):
            _workers.synchronize(self.device)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                _workers.synchronize(self.device)
                self.seconds += time.perf_counter() - start

        return timed


@contextlib.contextmanager
def replaced(module, name: str, value) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def run_eval(dataset, model, clip, args, steps: int, out: Path) -> dict:
    """One ``evaluate`` into ``out``: wall, editing and scoring seconds, and each edit's metrics."""
    from ip2p.headless import editor
    from ip2p.headless import evaluate as engine

    settings = engine.EvalSettings(
        text_cfg=args.text_cfg,
        image_cfg=args.image_cfg,
        steps=steps,
        seed=EDIT_SEED,
        sampler=args.sampler,
        batch=args.batch,
    )
    editing, scoring = Stopwatch(args.device), Stopwatch(args.device)
    with (
        replaced(editor, "edit", editing.wrap(editor.edit)),
        replaced(engine, "score_edits", scoring.wrap(engine.score_edits)),
    ):
        _workers.synchronize(args.device)
        start = time.perf_counter()
        engine.evaluate(
            dataset, out, settings, record={"bench": "eval"}, model=model, scorers=engine.Scorers(clip=clip)
        )
        wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / engine.PER_EXAMPLE).read_text().splitlines()]
    values = {(r["text_cfg"], r["image_cfg"], r["key"]): r["metrics"] for r in rows}
    return {"wall": wall, "editing": editing.seconds, "scoring": scoring.seconds, "values": values}


def run_loop(dataset, model, clip, args, steps: int) -> dict:
    """The plain loop: one editor call per example and pair, each edit then scored alone."""
    from ip2p.headless.editor import EditSettings, edit
    from ip2p.images import to_rgb_array
    from ip2p.quality import metrics as m

    def pixels(image) -> torch.Tensor:
        return torch.from_numpy(to_rgb_array(image)).permute(2, 0, 1)[None]

    editing, scoring, values = Stopwatch(args.device), Stopwatch(args.device), {}
    timed_edit = editing.wrap(edit)

    @scoring.wrap
    def score(x, e, target, caption_0, caption_1) -> dict:
        paper = clip.score(x, e, caption_0, caption_1)
        clip_i = m.cosine(clip.embed_images(e), clip.embed_images(target))
        distances = m.pixel_distances(e, target)
        return {
            "sim_0": float(paper.sim_0), "sim_1": float(paper.sim_1), "directional": float(paper.sim_dir),
            "image": float(paper.sim_image), "clip_i": float(clip_i), "clip_t": float(paper.sim_1),
            "l1": float(distances["l1"]), "l2": float(distances["l2"]),
        }  # fmt: skip

    _workers.synchronize(args.device)
    start = time.perf_counter()
    for text_cfg in args.text_cfg:
        for image_cfg in args.image_cfg:
            for example in dataset:
                x, target = pixels(example.input_image), pixels(example.edited_image)
                settings = EditSettings(
                    example.instruction,
                    steps=steps,
                    text_cfg=text_cfg,
                    image_cfg=image_cfg,
                    sampler=args.sampler,
                    seed=EDIT_SEED,
                )
                e = timed_edit(model, x, settings, progress=False)
                captions = example.extra["input_caption"], example.extra["output_caption"]
                values[(text_cfg, image_cfg, str(example.key))] = score(x, e, target, *captions)
    wall = time.perf_counter() - start
    return {"wall": wall, "editing": editing.seconds, "scoring": scoring.seconds, "values": values}


def largest_difference(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        raise RuntimeError(f"the sides scored different edits: {sorted(a.keys() ^ b.keys())}")
    return max(abs(a[k][name] - b[k][name]) for k in a for name in METRICS)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ["HF_HUB_OFFLINE"] = "1"  # never fetch anything
    from ip2p.clip_filter import ClipScorer
    from ip2p.datasets.reader import open_dataset
    from ip2p.headless.random_model import build_random_model, save_random_clip

    edits = args.examples * len(args.text_cfg) * len(args.image_cfg)
    settings = {
        "model": args.model,
        "examples": args.examples,
        "size": args.size,
        "steps": args.steps,
        "text_cfg": list(args.text_cfg),
        "image_cfg": list(args.image_cfg),
        "edits": edits,
        "batch": args.batch,
        "sampler": args.sampler,
        "repeats": args.repeats,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "clip": "tiny random (32 px)",
    }
    workdir = Path(tempfile.mkdtemp(prefix="ip2p-bench-eval-"))
    try:
        logger.info("building the %s model, a random CLIP and %d examples …", args.model, args.examples)
        model = build_random_model(args.model, in_channels=8, seed=MODEL_SEED)
        for module in (model.unet, model.vae, model.text_encoder):
            module.to(args.device)
        clip = ClipScorer.from_folder(save_random_clip(workdir / "clip"), device=args.device)
        dataset = open_dataset(write_dataset(workdir / "data", args.examples, args.size))
        runs: dict[str, list[dict]] = {"eval": [], "loop": []}
        with torch.no_grad():
            run_eval(dataset, model, clip, args, 1, workdir / "warm-up")  # kernels, allocator, every shape
            run_loop(dataset, model, clip, args, 1)
            for repeat in range(args.repeats):
                logger.info("repeat %d/%d …", repeat + 1, args.repeats)
                for side in ("eval", "loop"):
                    window = CpuWindow()
                    if side == "eval":
                        result = run_eval(dataset, model, clip, args, args.steps, workdir / f"eval-{repeat}")
                    else:
                        result = run_loop(dataset, model, clip, args, args.steps)
                    result["other_cpu"] = window.stop()
                    runs[side].append(result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def med(side: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[side])

    others = [run["other_cpu"] for side in runs.values() for run in side if run["other_cpu"] is not None]
    common = {"max_other_cpu_cores": round(max(others), 3) if others else None, "settings": settings}
    ours = {key: med("eval", key) for key in ("wall", "editing", "scoring")}
    loop = {key: med("loop", key) for key in ("wall", "editing", "scoring")}
    emit(
        {
            "figure": 1,
            "name": "eval_edits_per_s_vs_plain_loop",
            "value": round(loop["wall"] / ours["wall"], 4),
            "unit": "ratio",
            "ours": {"edits_per_s": round(edits / ours["wall"], 3), "wall_s": [r["wall"] for r in runs["eval"]]},
            "reference": {"edits_per_s": round(edits / loop["wall"], 3), "wall_s": [r["wall"] for r in runs["loop"]]},
            "max_metric_difference": largest_difference(runs["eval"][-1]["values"], runs["loop"][-1]["values"]),
            **common,
        }
    )
    emit(
        {
            "figure": 2,
            "name": "eval_scores_per_s_vs_plain_loop",
            "value": round(loop["scoring"] / ours["scoring"], 4),
            "unit": "ratio",
            "ours": {"scores_per_s": round(edits / ours["scoring"], 3), "scoring_s": ours["scoring"]},
            "reference": {"scores_per_s": round(edits / loop["scoring"], 3), "scoring_s": loop["scoring"]},
            **common,
        }
    )
    shares = {
        "editing": ours["editing"] / ours["wall"],
        "scoring": ours["scoring"] / ours["wall"],
        "other": 1 - (ours["editing"] + ours["scoring"]) / ours["wall"],
    }
    emit(
        {
            "figure": 3,
            "name": "eval_time_shares",
            "value": {k: round(v, 4) for k, v in shares.items()},
            "unit": "share of eval's wall time",
            "goal": "scoring < editing",
            "met": shares["scoring"] < shares["editing"],
            "plain_loop": {k: round(loop[k] / loop["wall"], 4) for k in ("editing", "scoring")},
            **common,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
