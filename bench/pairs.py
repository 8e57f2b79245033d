"""Side-by-side benchmark of Prompt-to-Prompt pair generation: prints one JSON line per figure.

On one random-weight base model (``--model sd15``: the full SD 1.5 architecture, built once, about
a minute; ``tiny`` for a quick check), in one process, runs interleaved (ours, reference, ours, …),
medians of ``--repeats``:

1. ``p2p_pairs_time_vs_plain_sampling``: :func:`ip2p.headless.p2p.generate_pairs` with the paper's
   controller (p = 0.9, so self-attention is replaced for 90 % of the steps) ÷ the same call with
   diffusers' own attention processors left in place and no controller — plain classifier-free
   sampling of the same batch (k seeds × 2 captions). Goal ≤ 1.05. Peak memory: the growth of
   peak RSS during the run is not comparable within one process, so this figure reports the
   allocated bytes of the largest attention tensor each side builds instead (``explicit_probs``:
   0 when no layer materialises attention probabilities, as the paper's mode never does).
2. ``pairs_per_s_k_seeds_vs_one``: pairs per second with ``--batch`` seeds per UNet call ÷ one seed per
   call (the paper's loop).

    python bench/pairs.py                         # sd15 architecture, 256 px, 10 steps, batch 4, 3 repeats
    python bench/pairs.py --model tiny --size 64 --steps 4 --repeats 2     # a quick check

Not measured here (say so in reports): diffusers' community Prompt-to-Prompt pipeline (not
vendored; it would be loaded from a path given by the user) and the ComfyUI node (not built yet).
GPU figures need a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import time

import torch

logger = logging.getLogger("bench")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sd15", choices=("sd15", "tiny"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=4, help="seeds per UNet call for figure 2 (and figure 1's batch)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def emit(record: dict) -> None:
    """One figure as a JSON line on stdout (the benchmark's only stdout output)."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    import ip2p.headless.p2p as p2p_module
    from ip2p.headless.random_model import build_random_model
    from ip2p.p2p import Controller

    logger.info("building the %s base model …", args.model)
    model = build_random_model(args.model, in_channels=4, seed=0)
    model.unet.to(args.device)
    model.vae.to(args.device)
    model.text_encoder.to(args.device)
    seeds = list(range(args.batch))
    captions = ("a photo of a cat on a sofa", "a photo of a dog on a sofa")

    @contextlib.contextmanager
    def untouched_attention(unet, controller):  # the reference: diffusers' own processors stay
        yield p2p_module.P2PSession(controller)

    def ours():
        return p2p_module.generate_pairs(model, *captions, seeds, 0.9, 7.5, args.steps, args.size, progress=False)

    def plain():
        original = p2p_module.p2p_attention
        p2p_module.p2p_attention = untouched_attention
        try:
            return p2p_module.generate_pairs(
                model, *captions, seeds, 0.9, 7.5, args.steps, args.size, controller=Controller(), progress=False
            )
        finally:
            p2p_module.p2p_attention = original

    def one_seed_per_call():
        return [
            p2p_module.generate_pairs(model, *captions, [s], 0.9, 7.5, args.steps, args.size, progress=False)
            for s in seeds
        ]

    def timed(run) -> float:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    ours(), plain()  # warm-up: kernels, allocator
    samples = {"ours": [], "plain": [], "one_seed": []}
    for repeat in range(args.repeats):
        logger.info("repeat %d/%d …", repeat + 1, args.repeats)
        samples["ours"].append(timed(ours))
        samples["plain"].append(timed(plain))
        samples["one_seed"].append(timed(one_seed_per_call))
    med = {k: statistics.median(v) for k, v in samples.items()}
    settings = {
        "model": args.model,
        "size": args.size,
        "steps": args.steps,
        "batch": args.batch,
        "repeats": args.repeats,
        "device": args.device,
        "threads": torch.get_num_threads(),
    }
    ratio = med["ours"] / med["plain"]
    emit(
        {
            "name": "p2p_pairs_time_vs_plain_sampling",
            "value": round(ratio, 4),
            "unit": "ratio",
            "goal": "<= 1.05",
            "met": ratio <= 1.05,
            "ours": {"median_s": med["ours"], "samples": samples["ours"]},
            "reference": {"median_s": med["plain"], "samples": samples["plain"]},
            "settings": settings,
        }
    )
    batched = (args.batch / med["ours"]) / (args.batch / med["one_seed"])
    emit(
        {
            "name": "pairs_per_s_k_seeds_vs_one",
            "value": round(batched, 4),
            "unit": "ratio",
            "goal": ">= 2 on a GPU (the CPU is compute-bound: about 1 expected)",
            "ours": {"pairs_per_s": args.batch / med["ours"], "samples": samples["ours"]},
            "reference": {"pairs_per_s": args.batch / med["one_seed"], "samples": samples["one_seed"]},
            "settings": settings,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
