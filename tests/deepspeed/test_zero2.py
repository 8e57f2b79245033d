"""DeepSpeed ZeRO-2: two CPU processes sharding the optimizer state train what one process trains at twice their batch.

Its own suite (``scripts/test.sh deepspeed``), because DeepSpeed is optional: the script installs it
into its own folder. The shipped ``train/configs/accelerate/deepspeed_zero2.yaml`` is launched for
real with ``accelerate launch --num_processes 2`` and no GPU: the trainer joins the processes over
gloo (``process_group_kwargs``), DeepSpeed shards the AdamW state and the gradients, clips, and
checkpoints its own way. The run stops at step 2 and resumes from its ZeRO checkpoint; its EMA export
and its losses must equal an uninterrupted one-process run's. What this cannot show: GPU memory or speed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from ip2p_train import checkpoints as ckpt
from safetensors.torch import load_file

BATCH = 2  # per process; the one-process run uses 2 x BATCH
STEPS = 4
LOSS_TOLERANCE = 1e-6  # relative
WEIGHT_TOLERANCE = 1e-6  # absolute, on every exported UNet weight
# the shipped config
ZERO2_CONFIG = resources.files("ip2p_train").joinpath("configs", "accelerate", "deepspeed_zero2.yaml")
EXPORTED_UNET = "export/diffusers/unet/diffusion_pytorch_model.safetensors"  # the EMA weights


def _overrides(tiny_overrides, data, out, batch_size: int) -> list[str]:
    # as in tests/train/test_multiprocess.py: raised dropout so that it happens; eps=1e-4 so that rounding-noise
    # gradients of biases before a GroupNorm do not take lr-sized Adam steps that differ between batch layouts.
    # optim.max_grad_norm=1.0 is the shipped DeepSpeed config's gradient_clipping (DeepSpeed clips, not the trainer).
    extra = {"dropout.text": 0.2, "dropout.image": 0.2, "dropout.both": 0.2, "optim.lr": 1e-3, "optim.eps": 1e-4,
             "optim.max_grad_norm": 1.0}  # fmt: skip
    return ["toy", *tiny_overrides(data, out, batch_size=batch_size, max_steps=STEPS, save_every=2, **extra)]


def _launch(launch_two_processes, argv: list[str], root: Path, name: str, mixed_precision: str = "no") -> str:
    program = ["-m", "ip2p_train", *argv]  # no ACCELERATE_USE_CPU: it turns DeepSpeed off
    return launch_two_processes(ZERO2_CONFIG, program, root, name, use_cpu=False, timeout=300,
                                mixed_precision=mixed_precision)  # fmt: skip


@pytest.fixture(scope="module")
def runs(paper_dataset, tiny_overrides, tmp_path_factory, launch_two_processes, stopped_resumed_and_one_process):
    """(one process at batch 2·B, ZeRO-2 over two processes at batch B stopped at step 2 and resumed, their logs)."""

    def argv_for(out, batch_size: int) -> list[str]:
        return _overrides(tiny_overrides, paper_dataset, out, batch_size)

    def launch(argv: list[str], name: str) -> str:
        return _launch(launch_two_processes, argv, root, name)

    root = tmp_path_factory.mktemp("zero2")
    return stopped_resumed_and_one_process(launch, argv_for, root, BATCH)


def test_the_shipped_config_asks_for_zero_stage_2_clipping_as_the_trainer_does():
    config = load_config_from_file(str(ZERO2_CONFIG))
    assert config.distributed_type == "DEEPSPEED"
    assert config.deepspeed_config["zero_stage"] == 2
    assert config.deepspeed_config["gradient_clipping"] == 1.0


def test_two_cpu_processes_join_one_group_and_write_one_optimizer_shard_each(runs):
    _, sharded, output = runs
    assert "2 processes x batch 2 x 1 accumulation steps" in output
    assert [m["samples"] for m in ckpt.read_metrics(sharded)] == [4, 8, 12, 16]  # the global batch: 2 x 2
    step = ckpt.step_dir(sharded, 2)
    assert (step / ckpt.COMPLETE).is_file()
    shards = sorted(p.name for p in step.rglob("*optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


def test_the_resumed_zero2_run_logs_the_losses_of_one_process_at_twice_the_batch(runs, assert_same_losses):
    one, sharded, _ = runs
    assert_same_losses(one, sharded, STEPS, LOSS_TOLERANCE)
    single, double = ckpt.read_metrics(one), ckpt.read_metrics(sharded)
    assert [m["lr"] for m in double] == pytest.approx([m["lr"] for m in single])  # not stepped a second time


def test_the_zero2_ema_export_equals_the_one_process_export(runs, assert_same_trained_unet):
    one, sharded, _ = runs
    assert_same_trained_unet(one / EXPORTED_UNET, sharded / EXPORTED_UNET, WEIGHT_TOLERANCE)


def test_the_shipped_config_at_its_own_bf16_trains_and_exports_float32(
    paper_dataset, tiny_overrides, tmp_path, launch_two_processes
):
    config = load_config_from_file(str(ZERO2_CONFIG))
    assert config.mixed_precision == "bf16"
    run = tmp_path / "bf16"
    argv = [
        "toy",
        *tiny_overrides(paper_dataset, run, max_steps=2, save_every=2, mixed_precision=config.mixed_precision),
    ]
    _launch(launch_two_processes, argv, tmp_path, "bf16", mixed_precision=config.mixed_precision)
    assert all(m["loss"] > 0 for m in ckpt.read_metrics(run))  # finite: the trainer stops on a non-finite loss
    shards = sorted(p.name for p in ckpt.step_dir(run, 2).rglob("*optim_states.pt"))
    assert shards == [
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    assert {t.dtype for t in load_file(run / EXPORTED_UNET).values()} == {torch.float32}  # the float32 master weights


def test_a_deepspeed_launch_on_cpu_processes_joins_them_over_gloo(monkeypatch):
    from ip2p_train.loop import process_group_kwargs

    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert [handler.backend for handler in process_group_kwargs()] == ["gloo"]
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    assert process_group_kwargs() == []  # any other launch: accelerate's own choice
