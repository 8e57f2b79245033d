"""LoRA fine-tuning (``lora.rank``): the config keys, what trains, the adapter file, resume.

The runs train the tiny random model (16 px, batch 2, 4 steps) with rank-4 adapters and a fully
trained conv_in, in seconds on a CPU.
"""

from __future__ import annotations

import re

import pytest
import torch
from ip2p_train import checkpoints as ckpt
from ip2p_train import lora as train_lora
from ip2p_train.config import load_config
from ip2p_train.loop import ADAPTER, EXPORT, Trainer
from safetensors import safe_open
from safetensors.torch import load_file

from ip2p.cli.main import main
from ip2p.errors import IP2PError
from ip2p.headless.random_model import build_random_model

LORA = {"lora.rank": 4, "lora.conv_in": "full"}
ATTENTION_KEY = re.compile(
    r"^lora_unet_(down_blocks_\d+|up_blocks_\d+|mid_block)_attentions_\d+_transformer_blocks_\d+_attn[12]_"
    r"(to_q|to_k|to_v|to_out_0)\.(lora_down\.weight|lora_up\.weight|alpha)$"
)


@pytest.fixture(scope="session")
def lora_config(paper_dataset, tiny_overrides):
    """``lora_config(output_dir, key=value, ...)``: a tiny run with rank-4 adapters and a fully trained conv_in."""
    return lambda out, **extra: load_config("toy", tiny_overrides(paper_dataset, out, **{**LORA, **extra}))


def _run(config, resume=None) -> Trainer:
    trainer = Trainer(config, resume=resume)
    try:
        trainer.setup()
        trainer.train()
    finally:
        trainer.accelerator.end_training()
    return trainer


@pytest.fixture(scope="module")
def lora_run(lora_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora-run") / "run"
    return _run(lora_config(out, **{"validation.every": 4, "validation.steps": 2})), out


# ------------------------------------------------------------------------------------------ config


def test_full_fine_tuning_stays_the_default(paper_dataset, tiny_overrides, tmp_path):
    config = load_config("toy", tiny_overrides(paper_dataset, tmp_path))
    assert (config.lora.rank, config.lora.alpha, config.lora.conv_in) == (0, None, "off")


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"lora.rank": -1}, "lora.rank"),
        ({"lora.conv_in": "half"}, "lora.conv_in"),
        ({"lora.rank": 0, "lora.conv_in": "full"}, "lora.rank is 0"),
        ({"lora.alpha": 0}, "lora.alpha"),
    ],
)
def test_bad_lora_settings_are_refused_by_name(lora_config, tmp_path, extra, named):
    with pytest.raises(IP2PError, match=re.escape(named)):
        lora_config(tmp_path, **extra)


@pytest.mark.parametrize("mode", ["off", "lora", "full"])
def test_every_conv_in_mode_is_read_as_written(lora_config, tmp_path, mode):
    """YAML 1.1 would read ``off`` as false; the config reads YAML 1.2's booleans only."""
    assert lora_config(tmp_path, **{"lora.conv_in": mode}).lora.conv_in == mode


def test_a_lora_on_a_4_channel_base_is_refused(lora_config, tmp_path):
    from ip2p.headless.export import save_single_file

    base = save_single_file(build_random_model("tiny", in_channels=4, seed=0), tmp_path / "base4.safetensors")
    trainer = Trainer(lora_config(tmp_path / "run", **{"model.base": str(base)}))
    with pytest.raises(IP2PError, match="widening conv_in to 8 channels needs full fine-tuning"):
        try:
            trainer.setup()
        finally:
            trainer.accelerator.end_training()


# ------------------------------------------------------------------------------------------- a run


def test_a_lora_run_trains_only_the_adapters_and_conv_in(lora_run):
    trainer, _ = lora_run
    base = build_random_model("tiny", in_channels=8, seed=0).unet.state_dict()
    trained = trainer.unet.state_dict()
    changed = {k for k in base if not torch.equal(base[k], trained[k])}
    assert changed == {"conv_in.weight", "conv_in.bias"}  # every other base weight is bit-identical
    ups = [v for k, v in trained.items() if k.endswith("lora_up.weight")]
    assert ups and all(v.abs().sum() > 0 for v in ups)  # the zero-initialised ups moved
    trainable = {n for n, p in trainer.unet.named_parameters() if p.requires_grad}
    assert all(".lora_" in n or n.startswith("conv_in.") for n in trainable)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in trainer.unet.parameters() if p.requires_grad}
    assert len(trainer.ema.shadow) == len(trainable)


def test_a_lora_run_validates_on_the_base_with_the_adapter_merged(lora_run):
    _, out = lora_run
    assert (out / "validation" / "step-4.png").is_file()


def test_a_lora_run_exports_one_adapter_in_comfyui_keys(lora_run):
    trainer, out = lora_run
    assert sorted(p.name for p in (out / EXPORT).iterdir()) == [ADAPTER]
    adapter = load_file(out / EXPORT / ADAPTER)
    conv_in = {"diffusion_model.input_blocks.0.0.diff", "diffusion_model.input_blocks.0.0.diff_b"}
    assert conv_in <= set(adapter)
    assert all(ATTENTION_KEY.match(k) for k in set(adapter) - conv_in), sorted(adapter)[:5]
    paths = train_lora.attention_paths(trainer.unet)
    assert len(adapter) == 3 * len(paths) + 2
    with safe_open(out / EXPORT / ADAPTER, framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["rank"] == "4" and metadata["alpha"] == "4" and metadata["conv_in"] == "full"
    assert metadata["base_model_hash"] == trainer.model.model_hash


@pytest.mark.numerics
def test_a_resumed_lora_run_writes_the_uninterrupted_adapter(lora_run, lora_config, tmp_path):
    _, uninterrupted = lora_run
    out = tmp_path / "run"
    _run(lora_config(out, max_steps=2))
    _run(lora_config(out), resume="latest")
    assert [step for step, _ in ckpt.complete_checkpoints(out)] == [2, 4]
    resumed, reference = load_file(out / EXPORT / ADAPTER), load_file(uninterrupted / EXPORT / ADAPTER)
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-6, atol=1e-7, msg=key)


def test_a_lora_checkpoint_holds_only_the_trainable_parameters(lora_run):
    trainer, out = lora_run
    checkpoint = ckpt.step_dir(out, 4)
    with safe_open(checkpoint / "model.safetensors", framework="pt") as handle:
        saved = set(handle.keys())
    assert saved == {n for n, p in trainer.unet.named_parameters() if p.requires_grad}
    assert ckpt.read_base_model_hash(checkpoint) == trainer.model.model_hash


def test_a_lora_run_resumed_on_a_changed_base_is_refused(lora_config, tmp_path):
    from ip2p.headless.export import save_single_file

    base = tmp_path / "base.safetensors"
    save_single_file(build_random_model("tiny", in_channels=8, seed=0), base)
    config = lora_config(tmp_path / "run", **{"model.base": str(base), "max_steps": 2})
    _run(config)
    save_single_file(build_random_model("tiny", in_channels=8, seed=1), base)  # another model at the same path
    with pytest.raises(IP2PError, match="Put the original base back"):
        _run(config, resume="latest")


def test_a_lora_checkpoint_missing_an_adapter_is_refused_on_resume(lora_config, tmp_path):
    from safetensors.torch import save_file

    config = lora_config(tmp_path / "run", max_steps=2)
    _run(config)
    weights = ckpt.step_dir(tmp_path / "run", 2) / "model.safetensors"
    state = load_file(weights)
    dropped = next(k for k in state if k.endswith("lora_up.weight"))
    save_file({k: v for k, v in state.items() if k != dropped}, weights)
    with pytest.raises(IP2PError, match=re.escape(dropped)):
        _run(lora_config(tmp_path / "run"), resume="latest")


@pytest.mark.numerics
def test_the_adapter_merged_by_ip2p_lora_merge_is_the_trained_model(lora_run, tmp_path):
    """The trainer's own merged view (what validation samples) equals the base plus the adapter file."""
    from ip2p_train.model import model_for_export, trained_state

    from ip2p.headless.export import save_single_file
    from ip2p.headless.loading import load_edit_model

    trainer, out = lora_run
    base = save_single_file(build_random_model("tiny", in_channels=8, seed=0), tmp_path / "base.safetensors")
    merged = tmp_path / "merged.safetensors"
    assert (
        main(["lora", "merge", "--model", str(base), "--lora", str(out / EXPORT / ADAPTER), "--out", str(merged), "-q"])
        == 0
    )
    loaded = load_edit_model(merged).unet.state_dict()
    expected = model_for_export(trainer.model, trainer.unet, trained_state(trainer.unet, trainer.ema)).unet.state_dict()
    assert loaded.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(loaded[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


# --------------------------------------------------------------------------------------- the layers


@pytest.mark.numerics
def test_a_lora_conv_in_is_written_as_comfyui_expects_and_merges_to_the_same_output(tmp_path):
    from ip2p import lora as core
    from ip2p.headless.lora import original_names

    unet = build_random_model("tiny", in_channels=8, seed=0).unet
    plain = {k: v.clone() for k, v in unet.state_dict().items()}
    train_lora.add_lora(unet, rank=2, alpha=1.0, conv_in="lora")
    torch.manual_seed(1)
    for module in unet.modules():
        if isinstance(module, train_lora.LORA_LAYERS):
            torch.nn.init.normal_(module.lora_up.weight, std=0.05)
    _, adapters = train_lora.split_state(unet, dict(unet.state_dict()))
    tensors = train_lora.adapter_tensors(adapters, None)
    out_ch, in_ch = unet.conv_in.out_channels, unet.conv_in.in_channels
    assert tensors["lora_unet_conv_in.lora_down.weight"].shape == (2, in_ch, 3, 3)
    assert tensors["lora_unet_conv_in.lora_up.weight"].shape == (out_ch, 2, 1, 1)
    assert float(tensors["lora_unet_conv_in.alpha"]) == 1.0

    merged = build_random_model("tiny", in_channels=8, seed=0).unet
    merged.load_state_dict(plain)
    deltas = core.adapter_deltas(tensors, plain, original_names(merged))
    core.merge_deltas(merged, deltas, 1.0)
    sample, text = torch.randn(1, 8, 8, 8), torch.randn(1, 77, merged.config.cross_attention_dim)
    with torch.no_grad():
        wrapped_out = unet(sample, 500, text).sample
        merged_out = merged(sample, 500, text).sample
    torch.testing.assert_close(merged_out, wrapped_out, rtol=1e-4, atol=1e-5)
