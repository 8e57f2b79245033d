"""Checkpoint formats: detection, safe reading of pickles, cheap UNet facts, hashes (torch only)."""

from __future__ import annotations

import hashlib
import json
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ip2p.errors import IP2PError
from ip2p.formats import hashing
from ip2p.formats.checkpoint import (
    convert_ckpt_to_safetensors,
    detect_format,
    inspect_model,
    load_single_file,
    missing_diffusers_components,
    read_unet_facts,
)
from ip2p.formats.hashing import model_hash
from ip2p.model_family import COSXL_EDIT, SD15_BASE, SD15_IP2P, SDXL_IP2P

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
CONTEXT = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def original_weights(in_channels: int = 8, context: int = 768, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    """A few keys of an original-layout checkpoint: enough for format and UNet-fact checks."""
    weights = {
        UNET_IN: torch.randn(32, in_channels, 3, 3),
        CONTEXT: torch.randn(32, context),
        "first_stage_model.encoder.conv_in.weight": torch.randn(32, 3, 3, 3),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(32),
    }
    weights.update(extra)
    return weights


def write_safetensors(path, weights):
    save_file(weights, str(path))
    return path


def make_diffusers_folder(root, in_channels=8, skip=()):
    root.mkdir()
    if "model_index.json" not in skip:
        (root / "model_index.json").write_text("{}")
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if name not in skip:
            (root / name).mkdir()
    if "unet" not in skip:
        config = {"in_channels": in_channels, "cross_attention_dim": 768}
        (root / "unet" / "config.json").write_text(json.dumps(config))
        write_safetensors(root / "unet" / "diffusion_pytorch_model.safetensors", {"w": torch.ones(2)})
    return root


# ------------------------------------------------------------------ detect_format


@pytest.mark.parametrize("name", ["m.safetensors", "m.ckpt", "m.pt", "m.pth", "M.SAFETENSORS"])
def test_checkpoint_files_are_single_files(tmp_path, name):
    (tmp_path / name).write_bytes(b"x")
    assert detect_format(tmp_path / name) == "single_file"


def test_a_model_folder_is_diffusers(tmp_path):
    assert detect_format(make_diffusers_folder(tmp_path / "model")) == "diffusers"


def test_missing_path_is_named_in_the_error(tmp_path):
    with pytest.raises(IP2PError, match="does not exist") as info:
        detect_format(tmp_path / "nothing.safetensors")
    assert "nothing.safetensors" in str(info.value)


def test_unknown_suffix_is_refused_with_the_accepted_ones(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(IP2PError, match=r"\.onnx.*\.safetensors"):
        detect_format(tmp_path / "model.onnx")


def test_folder_that_is_no_model_says_what_is_missing(tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(IP2PError, match="model_index.json"):
        detect_format(tmp_path / "random")


def test_missing_components_are_listed_by_name(tmp_path):
    folder = make_diffusers_folder(tmp_path / "model", skip=("vae", "tokenizer"))
    assert missing_diffusers_components(folder) == ["vae/", "tokenizer/"]


# ------------------------------------------------------------------ safetensors


def test_safetensors_loads_every_tensor(tmp_path):
    weights = original_weights()
    loaded = load_single_file(write_safetensors(tmp_path / "m.safetensors", weights))
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_truncated_safetensors_asks_for_a_new_download(tmp_path):
    path = write_safetensors(tmp_path / "m.safetensors", original_weights())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IP2PError, match="(?i)truncated or corrupt.*download") as info:
        load_single_file(path)
    assert "m.safetensors" in str(info.value)


def test_garbage_safetensors_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"\x00\x01not a safetensors file at all")
    with pytest.raises(IP2PError, match="corrupt"):
        load_single_file(path)


# ------------------------------------------------------------------ pickles


@pytest.fixture
def fake_lightning(monkeypatch):
    """A stand-in ``pytorch_lightning`` importable while saving, gone before loading."""

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    for name in LIGHTNING_MODULES:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules[LIGHTNING_MODULES[-1]].ModelCheckpoint = ModelCheckpoint
    yield ModelCheckpoint
    forget_lightning()


LIGHTNING_MODULES = ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint")


def forget_lightning():
    """Make the stand-in unimportable again, as on a machine without Lightning."""
    for name in LIGHTNING_MODULES:
        sys.modules.pop(name, None)


def lightning_checkpoint(model_checkpoint_class, weights):
    return {
        "epoch": 3,
        "global_step": 22000,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": weights,
        "callbacks": {
            model_checkpoint_class: {
                "best_model_score": np.float64(0.25),
                "best_model_path": "/logs/last.ckpt",
                "dtype_seen": np.dtype("float32"),
            }
        },
        "lr_schedulers": [{"base_lrs": [1e-4], "last_epoch": 10, "lr_lambdas": [{"f_start": [1e-6]}]}],
    }


def test_lightning_checkpoint_with_harmless_objects_loads_its_state_dict(tmp_path, fake_lightning):
    weights = original_weights()
    path = tmp_path / "lightning.ckpt"
    torch.save(lightning_checkpoint(fake_lightning, weights), path)
    forget_lightning()
    loaded = load_single_file(path)
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_legacy_pickle_format_loads(tmp_path):
    weights = original_weights()
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": weights}, path, _use_new_zipfile_serialization=False)
    assert load_single_file(path).keys() == weights.keys()


def test_plain_state_dict_pickle_loads(tmp_path):
    weights = original_weights()
    torch.save(weights, tmp_path / "plain.pt")
    assert load_single_file(tmp_path / "plain.pt").keys() == weights.keys()


class _WritesAFile:
    """Unpickling this would create a file: the code a malicious checkpoint would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": original_weights(), "payload": _WritesAFile(marker)}, path)
    with pytest.raises(IP2PError, match="never") as info:
        load_single_file(path)
    assert "safetensors" in str(info.value)
    assert not marker.exists()


def test_code_beside_allow_listed_objects_is_still_refused(tmp_path, fake_lightning):
    marker = tmp_path / "pwned"
    checkpoint = lightning_checkpoint(fake_lightning, original_weights())
    checkpoint["callbacks"][fake_lightning]["hook"] = _WritesAFile(marker)
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    forget_lightning()
    with pytest.raises(IP2PError, match="code"):
        load_single_file(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_truncated_ckpt_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": original_weights()}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(IP2PError, match="truncated or corrupt"):
        load_single_file(path)


def test_pickle_without_tensors_is_refused(tmp_path):
    torch.save({"epoch": 1}, tmp_path / "empty.ckpt")
    with pytest.raises(IP2PError, match="no tensors"):
        load_single_file(tmp_path / "empty.ckpt")


# ------------------------------------------------------------------ conversion


def test_ckpt_converts_to_identical_safetensors(tmp_path, fake_lightning):
    weights = original_weights()
    src = tmp_path / "model.ckpt"
    torch.save(lightning_checkpoint(fake_lightning, weights), src)
    forget_lightning()
    dst = convert_ckpt_to_safetensors(src)
    assert dst == tmp_path / "model.safetensors"
    loaded = load_single_file(dst)
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt", "model.safetensors"]  # no temp files


def test_conversion_separates_tensors_that_share_storage(tmp_path):
    base = torch.randn(4, 4)
    torch.save({"a": base[:1], "b": base[1:]}, tmp_path / "shared.ckpt")  # one flat buffer, two weights
    loaded = load_single_file(convert_ckpt_to_safetensors(tmp_path / "shared.ckpt"))
    assert torch.equal(loaded["a"], base[:1])
    assert torch.equal(loaded["b"], base[1:])


def test_conversion_refuses_a_non_safetensors_destination(tmp_path):
    torch.save(original_weights(), tmp_path / "m.ckpt")
    with pytest.raises(IP2PError, match=r"\.safetensors"):
        convert_ckpt_to_safetensors(tmp_path / "m.ckpt", tmp_path / "m.bin")


def test_failed_conversion_leaves_no_file(tmp_path):
    torch.save({"state_dict": {"w": _WritesAFile(tmp_path / "pwned")}}, tmp_path / "evil.ckpt")
    with pytest.raises(IP2PError):
        convert_ckpt_to_safetensors(tmp_path / "evil.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.ckpt"]


# ------------------------------------------------------------------ UNet facts


@pytest.mark.parametrize(
    ("weights", "family"),
    [
        (original_weights(8), SD15_IP2P),
        (original_weights(4), SD15_BASE),
        (original_weights(8, 2048, **{"model.diffusion_model.label_emb.0.0.weight": torch.ones(2, 2)}), SDXL_IP2P),
        (
            original_weights(
                8,
                2048,
                **{
                    "model.diffusion_model.label_emb.0.0.weight": torch.ones(2, 2),
                    "edm_vpred.sigma_max": torch.ones(()),
                },
            ),
            COSXL_EDIT,
        ),
    ],
    ids=["sd15-ip2p", "sd15-base", "sdxl-ip2p", "cosxl-edit"],
)
def test_family_is_read_from_the_safetensors_header(tmp_path, weights, family):
    assert inspect_model(write_safetensors(tmp_path / "m.safetensors", weights)) == family


def test_unet_facts_of_a_ckpt(tmp_path):
    torch.save({"state_dict": original_weights(8)}, tmp_path / "m.ckpt")
    assert read_unet_facts(tmp_path / "m.ckpt") == ("sd15", 8, False)


def test_unet_facts_of_a_diffusers_folder_come_from_its_config(tmp_path):
    assert read_unet_facts(make_diffusers_folder(tmp_path / "model", in_channels=8)) == ("sd15", 8, False)


def test_sd2_context_is_not_sd15(tmp_path):
    path = write_safetensors(tmp_path / "m.safetensors", original_weights(8, 1024))
    assert read_unet_facts(path)[0] == "sd2"
    with pytest.raises(IP2PError, match="Unsupported UNet"):
        inspect_model(path)


def test_file_without_a_unet_is_refused(tmp_path):
    path = write_safetensors(tmp_path / "vae.safetensors", {"encoder.conv_in.weight": torch.ones(2, 3, 3, 3)})
    with pytest.raises(IP2PError, match="no Stable Diffusion UNet"):
        read_unet_facts(path)


# ------------------------------------------------------------------ hashes


def test_model_hash_is_the_files_sha256_prefix(tmp_path):
    path = write_safetensors(tmp_path / "m.safetensors", original_weights())
    assert model_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_model_hash_is_stable_and_changes_with_the_weights(tmp_path):
    weights = original_weights()
    first = model_hash(write_safetensors(tmp_path / "a.safetensors", weights))
    again = model_hash(write_safetensors(tmp_path / "b.safetensors", weights))
    weights[UNET_IN] = weights[UNET_IN].clone()
    weights[UNET_IN][0, 0, 0, 0] += 1.0
    changed = model_hash(write_safetensors(tmp_path / "c.safetensors", weights))
    assert first == again
    assert changed != first


def test_model_hash_is_remembered_while_the_file_is_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("IP2P_CACHE_DIR", str(tmp_path / "cache"))
    path = write_safetensors(tmp_path / "m.safetensors", original_weights())
    first = model_hash(path)
    monkeypatch.setattr(hashing, "_chunks", lambda file: pytest.fail("re-read an unchanged file"))
    assert model_hash(path) == first


def test_model_hash_is_recomputed_when_the_file_is_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv("IP2P_CACHE_DIR", str(tmp_path / "cache"))
    weights = original_weights()
    path = write_safetensors(tmp_path / "m.safetensors", weights)
    first = model_hash(path)
    weights[UNET_IN] = weights[UNET_IN].clone() + 1.0
    write_safetensors(path, weights)
    assert model_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:12] != first


def test_folder_hash_covers_weight_files_only(tmp_path):
    folder = make_diffusers_folder(tmp_path / "model")
    before = model_hash(folder)
    (folder / "README.md").write_text("notes")
    assert model_hash(folder) == before
    write_safetensors(folder / "vae" / "diffusion_pytorch_model.safetensors", {"w": torch.zeros(2)})
    assert model_hash(folder) != before
