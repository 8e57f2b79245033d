"""Held-out scoring during training (validation.eval_*, validation.clip / dino) and checkpoints.keep_best.

Tiny runs of one or a few steps with a scoring at every step, one sampling step per edit; a random
CLIP (and, where needed, DINO) stands in for the real ones: what is logged, and which checkpoint is
kept, is the same at any size.
"""

from __future__ import annotations

import json

import pytest
from ip2p_train import checkpoints as ckpt
from ip2p_train import validation
from ip2p_train.config import ValidationConfig, load_config
from ip2p_train.loop import Trainer, train

from ip2p.datasets.reader import open_dataset
from ip2p.datasets.toy import write_toy_dataset
from ip2p.errors import IP2PError
from ip2p.headless.random_model import save_random_clip
from ip2p.quality import scoring
from ip2p.quality.metrics import PAPER_METRICS, TOY_METRICS

RESOLUTION = 16  # the tiny runs' data.resolution (conftest)
SCORED = {"validation.every": 1, "validation.count": 1, "validation.steps": 1, "save_every": 1}
CLIP_SCORED = ("l1", "l2", "clip_i", "clip_t", *PAPER_METRICS)  # the paper layout's pairs carry captions, no mask


def _scored(tiny_overrides, data, out, **extra):
    """The toy config for a tiny run that is scored (and saved) at every step; ``extra``: more overrides."""
    return load_config("toy", tiny_overrides(data, out, **{**SCORED, **extra}))


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_random_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def scored_run(paper_dataset, tiny_overrides, clip_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("scored") / "run"
    train(_scored(tiny_overrides, paper_dataset, out, max_steps=2, **{"validation.clip": clip_folder}))
    return out


@pytest.fixture(scope="module")
def unscored_run(paper_dataset, tiny_overrides, tmp_path_factory):
    out = tmp_path_factory.mktemp("unscored") / "run"
    train(load_config("toy", tiny_overrides(paper_dataset, out, max_steps=2, save_every=1)))
    return out


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "data"
    write_toy_dataset(root, count=4, seed=1, size=RESOLUTION)
    return root


# ------------------------------------------------------------------------------------ what is logged


def test_every_validation_logs_a_held_out_row_with_the_metrics_the_data_allows(scored_run):
    rows = ckpt.read_evals(scored_run)
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        entry = row["eval"]
        assert (entry["text_cfg"], entry["image_cfg"], entry["examples"], entry["failed"]) == (7.5, 1.5, 4, {})
        assert set(entry["metrics"]) == set(CLIP_SCORED)
        assert all(entry["metrics"][name]["n"] == 4 for name in CLIP_SCORED)


def test_metrics_the_data_or_the_config_cannot_give_are_logged_as_skipped_with_the_reason(scored_run):
    (skipped,) = {json.dumps(row["eval"]["skipped"], sort_keys=True) for row in ckpt.read_evals(scored_run)}
    assert json.loads(skipped) == {
        "dino": {scoring.NO_DINO: 4},
        **{name: {scoring.NO_MASK: 4} for name in TOY_METRICS},
    }


def test_read_metrics_still_returns_one_training_record_per_step(scored_run):
    assert [(m["step"], "loss" in m) for m in ckpt.read_metrics(scored_run)] == [(1, True), (2, True)]


def test_scoring_leaves_the_training_as_it_was(scored_run, unscored_run):
    def losses(run):
        return [(m["step"], m["loss"]) for m in ckpt.read_metrics(run)]

    assert losses(scored_run) == losses(unscored_run)


def test_tensorboard_logs_each_held_out_mean_under_eval(scored_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(scored_run / validation.LOGS))
    events.Reload()
    assert {f"eval/{name}" for name in CLIP_SCORED} <= set(events.Tags()["scalars"])
    logged = [(e.step, e.value) for e in events.Scalars("eval/clip_i")]
    assert logged == [
        (r["step"], pytest.approx(r["eval"]["metrics"]["clip_i"]["mean"])) for r in ckpt.read_evals(scored_run)
    ]


def test_each_checkpoint_records_the_held_out_means_of_its_step(scored_run):
    last = ckpt.read_evals(scored_run)[-1]
    assert last["step"] == 2
    recorded = ckpt.read_evaluation(ckpt.step_dir(scored_run, 2))
    assert recorded == {name: s["mean"] for name, s in last["eval"]["metrics"].items()}


def test_a_toy_run_logs_the_toy_metrics_per_family_too(toy_data, tiny_overrides, tmp_path):
    out = tmp_path / "run"
    train(_scored(tiny_overrides, toy_data, out, max_steps=1, **{"checkpoints.keep_best": "toy.inside_to_truth"}))
    (row,) = ckpt.read_evals(out)
    assert set(TOY_METRICS) <= set(row["eval"]["metrics"])
    families = {example.extra["family"] for example in open_dataset(toy_data)}
    assert set(row["eval"]["per_family"]) == families and len(families) > 1
    assert all("toy.inside_to_truth" in metrics for metrics in row["eval"]["per_family"].values())


def test_held_out_examples_come_from_validation_eval_data_when_given(toy_data, paper_dataset):
    config = ValidationConfig(every=1, eval_count=2, eval_data=str(toy_data))
    evaluator = validation.Evaluator(config, RESOLUTION, open_dataset(paper_dataset), load_scorers=False)
    toy = open_dataset(toy_data)
    assert [e.key for e in evaluator.examples] == [toy[0].key, toy[1].key]
    assert all(e.mask is not None and e.mask.shape == (RESOLUTION, RESOLUTION) for e in evaluator.examples)


# ---------------------------------------------------------------------------------------- keep_best


def _fake_checkpoint(out, step: int, scores: dict) -> None:
    path = ckpt.prepare_step_dir(out, step)
    ckpt.finish(path, step, "{}\n", evaluation=scores)


@pytest.mark.parametrize(("metric", "best"), [("l1", 2), ("clip_i", 3)])
def test_the_best_checkpoint_follows_the_metric_s_direction(tmp_path, metric, best):
    for step, (l1, clip_i) in enumerate([(0.3, 0.5), (0.1, 0.6), (0.2, 0.9), (0.4, 0.7)], start=1):
        _fake_checkpoint(tmp_path, step, {"l1": l1, "clip_i": clip_i})
    assert ckpt.best_checkpoint(tmp_path, metric)[0] == best
    ckpt.prune(tmp_path, total_limit=1, keep_best=metric)
    assert [step for step, _ in ckpt.complete_checkpoints(tmp_path)] == [best, 4]


def test_keep_best_keeps_the_best_checkpoint_and_a_resumed_run_still_knows_it(
    paper_dataset, tiny_overrides, tmp_path, monkeypatch
):
    l1_by_step = {1: 0.5, 2: 0.1, 3: 0.3, 4: 0.4}  # forced: the best (lowest) at step 2
    run = validation.Evaluator.run

    def forced(self, model, step=0, progress=True):
        entry = run(self, model, step, progress)
        entry["metrics"]["l1"]["mean"] = l1_by_step[step]
        return entry

    monkeypatch.setattr(validation.Evaluator, "run", forced)
    out = tmp_path / "run"
    extra = {"checkpoints.total_limit": 1, "checkpoints.keep_best": "l1", "validation.eval_count": 1}
    train(_scored(tiny_overrides, paper_dataset, out, max_steps=3, **extra))
    assert [step for step, _ in ckpt.complete_checkpoints(out)] == [2, 3]
    train(_scored(tiny_overrides, paper_dataset, out, max_steps=4, **extra), resume="latest")
    assert [step for step, _ in ckpt.complete_checkpoints(out)] == [2, 4]


# ----------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["checkpoints.keep_best=clip_dir"], r"keep_best is 'clip_dir', not a metric\. Did you mean 'clip_i'\?"),
        (["checkpoints.keep_best=clip_i"], r"keep_best=clip_i is a CLIP metric: give validation\.clip="),
        (["checkpoints.keep_best=dino"], r"keep_best=dino needs validation\.dino="),
        (["checkpoints.keep_best=l1", "validation.every=0"], r"keep_best=l1 needs the held-out scoring"),
        (["checkpoints.keep_best=l1", "validation.eval_count=0"], r"keep_best=l1 needs the held-out scoring"),
        (["checkpoints.keep_best=l1", "save_every=5"], r"save_every \(5\) is not a multiple of validation\.every"),
    ],
)  # fmt: skip
def test_a_keep_best_the_config_cannot_compute_is_refused_naming_the_fix(overrides, message):
    with pytest.raises(IP2PError, match=message):
        load_config("toy", ["validation.every=2", "save_every=2", *overrides])


def test_a_keep_best_metric_the_data_lacks_is_refused_before_anything_is_written(
    paper_dataset, tiny_overrides, tmp_path
):
    out = tmp_path / "run"
    trainer = Trainer(_scored(tiny_overrides, paper_dataset, out, **{"checkpoints.keep_best": "toy.hit_rate"}))
    with pytest.raises(IP2PError, match=r"keep_best=toy\.hit_rate: none of the 4 held-out examples has an edit mask"):
        trainer.setup()
    assert not out.exists()


def test_a_clip_folder_that_is_not_one_stops_the_run_before_anything_is_written(
    paper_dataset, tiny_overrides, tmp_path
):
    out = tmp_path / "run"
    trainer = Trainer(_scored(tiny_overrides, paper_dataset, out, **{"validation.clip": tmp_path}))
    with pytest.raises(IP2PError, match=r"validation\.clip cannot be used: .* lacks config\.json"):
        trainer.setup()
    assert not out.exists()
