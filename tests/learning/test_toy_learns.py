"""The trainer learns: a shortened toy recipe already meets the toy world's bar on held-out examples.

The run is bounded by steps, not time: the toy architecture from its config (a random UNet with the
shipped model's frozen VAE and text encoder) trained by ``ip2p train toy`` (``toy.yaml``) on 2,000
rendered toy pairs, then scored on 64 held-out examples (:mod:`ip2p.headless.toy_scores`). Inside the
edit mask the edits must be at most half as far from the true edits as either baseline (the input
unchanged; the same model given a wrong instruction), the toy world's bar; the full recipe
(5,000 pairs, 3,000 steps: ``scripts/test.sh learning``) meets it with more room.
"""

from __future__ import annotations

import pytest

from ip2p.cli.main import main
from ip2p.datasets.toy import toy_seeds, write_toy_dataset
from ip2p.headless.editor import EditSettings
from ip2p.headless.loading import load_edit_model
from ip2p.headless.toy_model import HELDOUT_RUN, TRAIN_RUN
from ip2p.headless.toy_scores import score_toy_model

STEPS = 2000  # optimizer steps of batch 32 (~10 min on 2 cores)
EXAMPLES = 2000  # training pairs
HELDOUT = 64  # scored examples
# Measured (this test's run, scored every 200 steps from 1,600): inside the mask 0.400 / 0.477 of the
# input's and the wrong instruction's distance at 1,600 steps, 0.428 / 0.514 at 1,800, 0.336 / 0.417
# at 2,000 (the same run with EMA 0.995: 0.394 / 0.476, 0.406 / 0.499, 0.345 / 0.425); outside it
# 0.087-0.093 from the input (the untrained model: 0.31). Single checkpoints wander by ~0.05: 2,000
# steps leave the bar ~0.08 of room.
RATIO_BOUND = 0.5
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
