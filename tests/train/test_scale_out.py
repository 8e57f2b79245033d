"""Scale-out configs shipped in train/configs/accelerate/: they parse with accelerate's own loader,
DeepSpeed gets the trainer's batch size, accumulation and clipping, and the sharded set-ups the
trainer cannot train correctly are refused by name (DeepSpeed itself needs GPUs; the data-parallel
config runs for real in tests/train/test_multiprocess.py, the FSDP one in tests/train/test_fsdp.py)."""

from __future__ import annotations

from importlib import resources
from types import SimpleNamespace

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from ip2p_train.config import load_config
from ip2p_train.loop import check_sharding, configure_deepspeed

from ip2p.errors import IP2PError


def _shipped(name: str) -> str:
    return str(resources.files("ip2p_train").joinpath("configs", "accelerate", name))


def test_the_shipped_accelerate_configs_parse_as_accelerate_reads_them():
    multi_gpu = load_config_from_file(_shipped("multi_gpu.yaml"))
    assert multi_gpu.distributed_type == "MULTI_GPU"
    zero2 = load_config_from_file(_shipped("deepspeed_zero2.yaml"))
    assert zero2.distributed_type == "DEEPSPEED"
    assert zero2.deepspeed_config["zero_stage"] == 2  # a whole UNet per GPU: what the EMA and the export read


def _accelerator(settings: dict):
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=settings)))


def test_deepspeed_gets_the_trainers_batch_size_and_keeps_matching_settings():
    config = load_config("sd15", ["batch_size=4", "gradient_accumulation_steps=1", "optim.max_grad_norm=1.0"])
    settings = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": 1, "gradient_clipping": 1.0}
    configure_deepspeed(_accelerator(settings), config)
    assert settings == {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0}


def test_a_deepspeed_config_that_contradicts_the_trainers_is_refused_by_name():
    config = load_config("sd15", [])  # the recipe accumulates 16 micro-batches
    settings = {"gradient_accumulation_steps": 1, "gradient_clipping": 1.0}
    with pytest.raises(IP2PError, match="gradient_accumulation_steps=1 but the trainer's config gives 16"):
        configure_deepspeed(_accelerator(settings), config)


def test_without_deepspeed_nothing_changes():
    configure_deepspeed(SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=None)), load_config("sd15", []))


def _sharded(kind, fsdp_version: int = 2, zero_stage: int | None = None):
    fsdp = SimpleNamespace(fsdp_version=fsdp_version) if kind == DistributedType.FSDP else None
    deepspeed = SimpleNamespace(zero_stage=zero_stage) if zero_stage is not None else None
    return SimpleNamespace(
        distributed_type=kind, num_processes=2, state=SimpleNamespace(fsdp_plugin=fsdp, deepspeed_plugin=deepspeed)
    )


def test_fsdp2_and_zero2_are_accepted():
    config = load_config("sd15", [])
    check_sharding(_sharded(DistributedType.FSDP), config)
    check_sharding(_sharded(DistributedType.DEEPSPEED, zero_stage=2), config)
    check_sharding(_sharded(DistributedType.MULTI_GPU), config)


@pytest.mark.parametrize(
    ("accelerator", "overrides", "message"),
    [
        (_sharded(DistributedType.FSDP, fsdp_version=1), [], "fsdp_version: 2"),
        (_sharded(DistributedType.FSDP), ["lora.rank=16"], "multi_gpu.yaml"),
        (_sharded(DistributedType.DEEPSPEED, zero_stage=3), [], "ZeRO-2 .*deepspeed_zero2.yaml.*fsdp.yaml"),
    ],
    ids=["fsdp1", "lora-under-fsdp", "zero3"],
)
def test_sharded_setups_the_trainer_cannot_follow_are_refused_with_the_one_to_use(accelerator, overrides, message):
    with pytest.raises(IP2PError, match=message):
        check_sharding(accelerator, load_config("sd15", overrides))
