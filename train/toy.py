"""The toy model's whole recipe, from nothing: VAE step, toy dataset, trainer, exported model.

``ip2p demo --train`` runs it; the shipped model (``ip2p/models/toy-ip2p``) was made by it. Each
stage writes one folder under ``out`` and is skipped when that folder is already complete, so an
interrupted recipe continues where it stopped:

- ``base/``  the toy architecture with its pretrained VAE (:func:`ip2p.headless.toy_model.build_toy_base`);
- ``data/``  ``ip2p dataset toy --seed 1`` examples (:data:`~ip2p.headless.toy_model.TRAIN_RUN`);
- ``run/``   the trainer's run folder (``train/configs/toy.yaml``); its ``export/diffusers/`` is the model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ip2p.formats.atomic import atomic_dir

logger = logging.getLogger("ip2p.train")

TOY_EXAMPLES = 5000  # training pairs, `ip2p dataset toy --seed 1 --count 5000`: what the shipped model saw


def toy_recipe_config(out: Path, *, steps: int | None = None, overrides: tuple[str, ...] = ()):
    """The trainer config of the recipe's training stage."""
    from .config import load_config

    settings = [f"model.base={out / 'base'}", f"data.path={out / 'data'}", f"output_dir={out / 'run'}"]
    if steps is not None:
        settings += [f"max_steps={steps}", f"save_every={steps}"]
    return load_config("toy", [*settings, *overrides])


def train_toy_model(
    out: str | Path,
    *,
    steps: int | None = None,
    examples: int = TOY_EXAMPLES,
    vae_steps: int | None = None,
    overrides: tuple[str, ...] = (),
    progress: bool = True,
) -> Path:
    """Run the recipe under ``out``; returns the trained model's diffusers folder."""
    from ip2p.datasets.toy import write_toy_dataset
    from ip2p.headless import toy_model

    from .loop import train

    out = Path(out).expanduser()
    base = out / "base"
    if not (base / "model_index.json").is_file():
        logger.info("Toy recipe 1/3: the VAE step -> %s", base)
        kwargs = {} if vae_steps is None else {"vae_steps": vae_steps}
        toy_model.build_toy_base(base, progress=progress, **kwargs)
    data = out / "data"
    if not data.is_dir():
        logger.info("Toy recipe 2/3: %d toy pairs (seed %d) -> %s", examples, toy_model.TRAIN_RUN, data)
        with atomic_dir(data) as tmp:
            write_toy_dataset(tmp, examples, seed=toy_model.TRAIN_RUN)
    config = toy_recipe_config(out, steps=steps, overrides=overrides)
    run = Path(config.output_dir)
    exported = run / "export" / "diffusers"
    if (run / "config.yaml").is_file():
        from .checkpoints import complete_checkpoints

        done = complete_checkpoints(run)
        if done and done[-1][0] >= config.max_steps:
            logger.info("Toy recipe 3/3: already trained (%s)", done[-1][1])
            return exported
        logger.info("Toy recipe 3/3: continuing %s", run)
        train(config, resume="latest" if done else None)
    else:
        logger.info("Toy recipe 3/3: training -> %s", run)
        train(config)
    return exported
