"""The toy recipe at full length (``scripts/test.sh learning``, ~20 min on 2 cores): ``ip2p demo --train
--train-steps 3000`` retrains the toy model from nothing (VAE step, 5,000 toy pairs, 3,000 steps of
batch 32, as the shipped model) and the model it makes follows instructions on 64 held-out
examples it never saw.

The bar of the toy world: inside the edit mask, the edit is at most half as far from the true
edit as either baseline (the unchanged input; the same model given a wrong instruction); outside
the mask it stays near the input.
"""

from __future__ import annotations

import json
import os

from ip2p.cli.main import main

FULL_LENGTH = 3000  # toy.yaml's max_steps (`ip2p demo --train` alone stops earlier, to stay within 15 minutes)
RATIO_BOUND = 0.5
OUTSIDE_BOUND = 0.1


def test_demo_train_retrains_the_toy_model_and_it_follows_instructions(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    assert main(["demo", "--train", "--train-steps", str(FULL_LENGTH), "--out", str(tmp_path), "-q"]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["model"] == str(tmp_path / "run" / "export" / "diffusers")
    assert scores["examples"] == 64
    assert scores["ratio.result_vs_input"] <= RATIO_BOUND, {k: v for k, v in scores.items() if k != "per_example"}
    assert scores["ratio.result_vs_wrong_instruction"] <= RATIO_BOUND
    assert scores["outside.result_to_input"] <= OUTSIDE_BOUND
