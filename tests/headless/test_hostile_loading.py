"""Damaged and hostile model folders and files: every failure is one IP2PError naming the file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ip2p.errors import IP2PError
from ip2p.formats.checkpoint import META_KEY
from ip2p.headless.components import canonical_text_state
from ip2p.headless.loading import load_edit_model


class _WritesAFile:
    """Unpickling this would create a file: the code a malicious weights file would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def folder(tiny_diffusers_dir, tmp_path):
    return shutil.copytree(tiny_diffusers_dir, tmp_path / "model")


def pickled_component(folder, component: str, extra: dict | None = None) -> None:
    """Replace a component's .safetensors weights by a .bin pickle of the same tensors (plus ``extra``)."""
    (weights,) = (folder / component).glob("*.safetensors")
    state = load_file(str(weights))
    weights.unlink()
    name = "pytorch_model.bin" if component == "text_encoder" else "diffusion_pytorch_model.bin"
    torch.save({**state, **(extra or {})}, folder / component / name)


def one_line_error(path) -> str:
    with pytest.raises(IP2PError) as info:
        load_edit_model(path)
    return " ".join(str(info.value).split())


# ------------------------------------------------------------------ pickled weights in a folder


def test_bin_weights_with_code_in_a_folder_are_refused_and_the_code_never_runs(folder, tmp_path):
    marker = tmp_path / "pwned"
    pickled_component(folder, "unet", {"payload": _WritesAFile(marker)})
    message = one_line_error(folder)
    assert "would run code" in message and "diffusion_pytorch_model.bin" in message
    assert "weights_only" not in message
    assert not marker.exists()


def test_bin_weights_in_a_folder_load_through_the_restricted_reader(folder, tiny_model, monkeypatch):
    pickled_component(folder, "unet")
    pickled_component(folder, "text_encoder")
    import diffusers

    monkeypatch.setattr(
        diffusers.UNet2DConditionModel,
        "from_pretrained",
        classmethod(lambda cls, *a, **k: pytest.fail("a .bin UNet went to diffusers' loader")),
    )
    loaded = load_edit_model(folder)
    want = tiny_model.unet.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.unet.state_dict().items())
    want_text = canonical_text_state(tiny_model.text_encoder)
    assert all(torch.equal(v, want_text[k]) for k, v in canonical_text_state(loaded.text_encoder).items())


# ------------------------------------------------------------------ damaged JSON configs


@pytest.mark.parametrize(
    ("file", "content"),
    [
        ("model_index.json", "{not json"),
        ("unet/config.json", "[1, 2, 3]"),
        ("unet/config.json", '{"in_channels": "eight"}'),
        ("unet/config.json", '{"in_channels": 8, "cross_attention_dim": "wide"}'),
        ("vae/config.json", "\xff\xfe"),
        ("text_encoder/config.json", '"a string"'),
        ("scheduler/scheduler_config.json", "{"),
        ("scheduler/scheduler_config.json", '{"_class_name": 5}'),
    ],
)
def test_a_damaged_config_file_is_named(folder, file, content):
    (folder / file).write_text(content, encoding="latin-1")
    message = one_line_error(folder)
    assert str(folder / file) in message


def test_a_config_value_of_the_wrong_type_is_named(folder):
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["block_out_channels"] = "wide"
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    assert str(folder / "unet") in one_line_error(folder)


def test_a_config_value_of_the_wrong_type_is_named_for_bin_weights(folder):
    pickled_component(folder, "vae")
    config = json.loads((folder / "vae" / "config.json").read_text())
    config["block_out_channels"] = "wide"
    (folder / "vae" / "config.json").write_text(json.dumps(config))
    assert str(folder / "vae" / "config.json") in one_line_error(folder)


def test_truncated_component_weights_are_named(folder):
    (weights,) = (folder / "vae").glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:200])
    assert str(folder / "vae") in one_line_error(folder)


def test_a_component_without_weights_says_so(folder):
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()
    assert "holds no weights" in one_line_error(folder)


# ------------------------------------------------------------------ our own single files


def with_metadata(source, target, change):
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
    entry = json.loads(metadata[META_KEY])
    change(entry["configs"])
    metadata[META_KEY] = json.dumps(entry)
    save_file(load_file(str(source)), str(target), metadata=metadata)
    return target


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c["unet"].update(block_out_channels="wide"),
        lambda c: c["unet"].pop("down_block_types"),
        lambda c: c["vae"].update(layers_per_block="two"),
        lambda c: c["text_encoder"].update(hidden_size="big"),
    ],
    ids=["unet-channels", "unet-missing-blocks", "vae-layers", "text-hidden"],
)
def test_bad_values_in_our_metadata_name_the_file(tiny_single_file, tmp_path, change):
    path = with_metadata(tiny_single_file, tmp_path / "bad.safetensors", change)
    message = one_line_error(path)
    assert str(path) in message and META_KEY in message
