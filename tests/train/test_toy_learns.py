"""The trainer learns: a shortened toy recipe already edits held-out examples better than both baselines.

The run is bounded by steps, not time: the toy architecture from its config (random UNet and text
encoder, the shipped pretrained VAE) trained by ``ip2p train toy`` on rendered toy pairs, then
scored on 64 held-out examples (:mod:`ip2p.headless.toy_scores`). This shortened run (~5 min) is
held to a weaker bar than the toy world's (at most half as far from the truth as either
baseline), which the full recipe meets (3,000 steps, ~16 min: ``scripts/test.sh learning``).
"""

from __future__ import annotations

import pytest

from ip2p.cli.main import main
from ip2p.datasets.toy import toy_seeds, write_toy_dataset
from ip2p.headless.editor import EditSettings
from ip2p.headless.loading import load_edit_model
from ip2p.headless.toy_model import HELDOUT_RUN, TRAIN_RUN
from ip2p.headless.toy_scores import score_toy_model

STEPS = 800  # optimizer steps of batch 32
EXAMPLES = 2000  # training pairs
HELDOUT = 64  # scored examples
# Measured at 800 steps (5,000 pairs): inside the mask 0.75 of the input baseline's distance and
# 0.80 of the wrong instruction's; outside it 0.098 from the input (the untrained model: 0.31).
# At 400 steps: 0.89, 0.92 and 0.144 — too close to chance to tell a regression from noise.
RATIO_BOUND = 0.85
OUTSIDE_BOUND = 0.12


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy-learns")
    write_toy_dataset(root / "data", EXAMPLES, seed=TRAIN_RUN)
    out = root / "run"
    argv = ["train", "toy", f"data.path={root / 'data'}", f"output_dir={out}", f"max_steps={STEPS}",
            f"save_every={STEPS}", "-q"]  # fmt: skip
    assert main(argv) == 0
    return out / "export" / "diffusers"


def test_a_short_toy_run_follows_instructions_on_held_out_examples(trained):
    model = load_edit_model(trained)
    summary, _ = score_toy_model(model, toy_seeds(HELDOUT_RUN, HELDOUT), EditSettings(instruction="", steps=20))
    assert summary["examples"] == HELDOUT
    assert summary["ratio.result_vs_input"] <= RATIO_BOUND, summary
    assert summary["ratio.result_vs_wrong_instruction"] <= RATIO_BOUND
    assert summary["outside.result_to_input"] <= OUTSIDE_BOUND
