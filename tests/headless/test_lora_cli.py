"""LoRA adapters in the headless backend: ``ip2p edit --lora`` and ``ip2p lora merge``, and their refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ip2p_train import lora as train_lora
from PIL import Image
from safetensors.torch import save_file

from ip2p.cli.main import main
from ip2p.headless.loading import load_edit_model
from ip2p.headless.random_model import build_random_model

EDIT = ["--instruction", "make it red", "--steps", "2", "--resize", "keep", "--sampler", "euler", "-q"]


def _adapter_tensors(conv_in: str = "lora", seed: int = 1) -> dict[str, torch.Tensor]:
    """A rank-2 adapter for the tiny model with random, non-zero up weights (as if trained)."""
    unet = build_random_model("tiny", in_channels=8, seed=0).unet
    train_lora.add_lora(unet, rank=2, alpha=2.0, conv_in=conv_in)
    generator = torch.Generator().manual_seed(seed)
    for module in unet.modules():
        if isinstance(module, train_lora.LORA_LAYERS):
            with torch.no_grad():
                module.lora_up.weight.normal_(0, 0.2, generator=generator)
    _, adapters = train_lora.split_state(unet, dict(unet.state_dict()))
    return train_lora.adapter_tensors(adapters, None)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    path = tmp_path_factory.mktemp("lora") / "adapter.safetensors"
    return train_lora.save_adapter(path, _adapter_tensors(), {"rank": "2"})


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def _edit(model, image, out, *extra) -> np.ndarray:
    assert main(["edit", "--model", str(model), "--image", str(image), "--out", str(out), *EDIT, *extra]) == 0
    return np.asarray(Image.open(out), dtype=np.int16)


def test_edit_with_a_lora_equals_edit_with_the_merged_model(tiny_single_file, adapter, image, tmp_path):
    merged = tmp_path / "merged.safetensors"
    argv = ["lora", "merge", "--model", str(tiny_single_file), "--lora", str(adapter), "--out", str(merged), "-q"]
    assert main(argv) == 0
    with_lora = _edit(tiny_single_file, image, tmp_path / "a.png", "--lora", str(adapter))
    from_merged = _edit(merged, image, tmp_path / "b.png")
    base = _edit(tiny_single_file, image, tmp_path / "c.png")
    assert np.abs(with_lora - from_merged).max() <= 1
    assert np.abs(with_lora - base).max() > 10  # the adapter does change the edit


def test_a_lora_at_strength_zero_changes_nothing(tiny_single_file, adapter, image, tmp_path):
    off = _edit(tiny_single_file, image, tmp_path / "a.png", "--lora", str(adapter), "--lora-strength", "0")
    assert np.array_equal(off, _edit(tiny_single_file, image, tmp_path / "b.png"))


def test_an_edit_with_a_lora_records_the_adapter_in_its_png(tiny_single_file, adapter, image, tmp_path):
    from ip2p.formats.hashing import model_hash
    from ip2p.images import read_metadata

    _edit(tiny_single_file, image, tmp_path / "a.png", "--lora", str(adapter), "--lora-strength", "0.5")
    expected = {"file": adapter.name, "hash": model_hash(adapter), "strength": 0.5}
    assert read_metadata(tmp_path / "a.png")["loras"] == [expected]


def test_each_lora_strength_applies_to_the_lora_before_it(tiny_single_file, adapter):
    from ip2p.cli.edit import parse_arguments
    from ip2p.cli.lora import adapters

    args = parse_arguments(["--model", "m", "--image", "i", "--instruction", "x", "--out", "o",
                            "--lora", "a", "--lora-strength", "0.5", "--lora", "b"])  # fmt: skip
    assert adapters(args) == [("a", 0.5), ("b", 1.0)]


def test_two_loras_add_up(tiny_single_file, adapter, tmp_path):
    from ip2p.headless.lora import apply_loras

    once = load_edit_model(tiny_single_file)
    apply_loras(once, [(adapter, 1.0)])
    twice = load_edit_model(tiny_single_file)
    apply_loras(twice, [(adapter, 0.25), (adapter, 0.75)])
    for key, value in once.unet.state_dict().items():
        torch.testing.assert_close(twice.unet.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def _refused(argv, capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_adapter_keys_that_match_nothing_are_refused_by_name(tiny_single_file, image, tmp_path, capsys):
    tensors = _adapter_tensors()
    tensors["lora_unet_no_such_layer.lora_down.weight"] = torch.zeros(2, 4)
    tensors["lora_unet_no_such_layer.lora_up.weight"] = torch.zeros(4, 2)
    save_file(tensors, tmp_path / "bad.safetensors")
    err = _refused(["edit", "--model", str(tiny_single_file), "--image", str(image), "--out", str(tmp_path / "o.png"),
                    *EDIT, "--lora", str(tmp_path / "bad.safetensors")], capsys)  # fmt: skip
    assert "match no weight" in err and "lora_unet_no_such_layer.lora_down.weight" in err
    assert not (tmp_path / "o.png").exists()


def test_an_adapter_with_text_encoder_keys_is_refused_saying_comfyui_applies_them(tiny_single_file, tmp_path, capsys):
    tensors = _adapter_tensors()
    tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(2, 32)
    save_file(tensors, tmp_path / "te.safetensors")
    argv = ["lora", "merge", "--model", str(tiny_single_file), "--lora", str(tmp_path / "te.safetensors"),
            "--out", str(tmp_path / "m.safetensors")]  # fmt: skip
    err = _refused(argv, capsys)
    assert "lora_te_" in err and "LoraLoader" in err


def test_an_adapter_of_another_shape_is_refused(tiny_single_file, tmp_path, capsys):
    tensors = _adapter_tensors()
    key = next(k for k in tensors if k.endswith("to_q.lora_down.weight"))
    tensors[key] = torch.zeros(2, tensors[key].shape[1] + 1)
    save_file(tensors, tmp_path / "bad.safetensors")
    argv = ["lora", "merge", "--model", str(tiny_single_file), "--lora", str(tmp_path / "bad.safetensors"),
            "--out", str(tmp_path / "m.safetensors")]  # fmt: skip
    err = _refused(argv, capsys)
    assert "has shape" in err and "another architecture" in err
    assert not (tmp_path / "m.safetensors").exists()


def test_a_peft_format_adapter_is_refused_naming_the_expected_format(tiny_single_file, tmp_path, capsys):
    peft = {
        "base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 32)
    }
    save_file(peft, tmp_path / "peft.safetensors")
    argv = ["lora", "merge", "--model", str(tiny_single_file), "--lora", str(tmp_path / "peft.safetensors"),
            "--out", str(tmp_path / "m.safetensors")]  # fmt: skip
    err = _refused(argv, capsys)
    assert "PEFT" in err and "lora_unet_" in err and ".lora_down.weight" in err


def _merge_argv(model, adapter, out, *extra) -> list[str]:
    return ["lora", "merge", "--model", str(model), "--lora", str(adapter), *extra, "--out", str(out)]


@pytest.mark.parametrize("poison", ["nan_up", "inf_down", "inf_alpha"])
def test_an_adapter_with_non_finite_values_is_refused_naming_the_key(tiny_single_file, tmp_path, capsys, poison):
    tensors = _adapter_tensors()
    suffix = {"nan_up": "to_q.lora_up.weight", "inf_down": "to_k.lora_down.weight", "inf_alpha": "to_v.alpha"}[poison]
    key = next(k for k in tensors if k.endswith(suffix))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan") if poison == "nan_up" else float("inf")
    save_file(tensors, tmp_path / "bad.safetensors")
    err = _refused(_merge_argv(tiny_single_file, tmp_path / "bad.safetensors", tmp_path / "m.safetensors"), capsys)
    assert key in err and "NaN or infinite" in err
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("strength", ["nan", "inf", "1e30", "101", "-101"])
def test_a_non_finite_or_absurd_strength_is_refused(tiny_single_file, adapter, tmp_path, capsys, strength):
    argv = _merge_argv(tiny_single_file, adapter, tmp_path / "m.safetensors", "--lora-strength", strength)
    err = _refused(argv, capsys)
    assert "outside -100 to 100" in err
    assert not (tmp_path / "m.safetensors").exists()


def test_a_strength_that_overflows_a_float16_weight_is_refused_naming_it(adapter):
    from ip2p import lora
    from ip2p.errors import IP2PError

    unet = build_random_model("tiny", in_channels=8, seed=0, dtype=torch.float16).unet
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    before = unet.state_dict()[key].clone()
    huge = {key: torch.full_like(before, 1e3, dtype=torch.float32)}
    with pytest.raises(IP2PError, match=f"makes {key} infinite in float16"):
        lora.merge_deltas(unet, huge, 100.0)  # 1e5 > float16's 65504
    assert torch.equal(unet.state_dict()[key], before)  # left as it was
