"""The latent cache (``data.cache=true``): the same training, the frozen encoders run once per example."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ip2p_train import checkpoints as ckpt
from PIL import Image

from ip2p.cli.main import main

# Uncached steps encode a micro-batch at a time, the cache 32 examples at a time: the same maths in
# other batch shapes (float32 sums in another order): measured 2.3e-7 relative on the losses.
CACHE_TOLERANCE = 1e-5


def _square_dataset(root, pairs: int = 4):
    """Pairs already at the training size: the uncached random crop is the cache's centre crop."""
    rng = np.random.default_rng(1)
    for i in range(pairs):
        folder = root / f"{i:07d}"
        folder.mkdir(parents=True)
        prompt = {"input": f"a picture {i}", "edit": f"make it color {i % 2}", "output": f"a colored picture {i}"}
        (folder / "prompt.json").write_text(json.dumps(prompt), encoding="utf-8")
        for side in (0, 1):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}_{side}.png")
    return root


def _truncate(png) -> None:
    """Cut a PNG short: its header still reads (the reader opens the dataset), its pixels do not."""
    png.write_bytes(png.read_bytes()[:60])


def _losses(out) -> list[float]:
    return [m["loss"] for m in ckpt.read_metrics(out)]


@pytest.fixture(scope="module")
def square_data(tmp_path_factory):
    return _square_dataset(tmp_path_factory.mktemp("square") / "data")


@pytest.mark.numerics
def test_a_cached_run_trains_as_the_uncached_one_when_no_crop_is_random(square_data, tiny_overrides, tmp_path):
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    extra = {"data.flip": 0.0, "max_steps": 3, "save_every": 3}
    assert main(["train", "toy", *tiny_overrides(square_data, plain, **extra), "-q"]) == 0
    assert main(["train", "toy", *tiny_overrides(square_data, cached, **extra, **{"data.cache": True}), "-q"]) == 0
    assert _losses(cached) == pytest.approx(_losses(plain), rel=CACHE_TOLERANCE)


@pytest.mark.numerics
def test_a_resumed_cached_run_continues_the_uninterrupted_loss_curve(square_data, tiny_overrides, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    extra = {"data.cache": True, "data.flip": 0.5}
    assert main(["train", "toy", *tiny_overrides(square_data, whole, **extra), "-q"]) == 0
    assert main(["train", "toy", *tiny_overrides(square_data, resumed, **extra, max_steps=2), "-q"]) == 0
    assert main(["train", "toy", *tiny_overrides(square_data, resumed, **extra), "--resume", "latest", "-q"]) == 0
    assert _losses(resumed) == pytest.approx(_losses(whole), rel=1e-6)


def test_unusable_examples_are_skipped_while_caching_and_counted(square_data, tiny_overrides, tmp_path, caplog):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(square_data, data)
    _truncate(data / "0000001" / "1_1.png")
    out = tmp_path / "run"
    assert main(["train", "toy", *tiny_overrides(data, out, **{"data.cache": True}, max_steps=1), "-q"]) == 0
    assert "Skipped 1 of 4 examples while encoding: corrupt image: 1" in caplog.text


def test_unusable_examples_found_while_training_are_skipped(square_data, tiny_overrides, tmp_path, caplog):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(square_data, data)
    _truncate(data / "0000002" / "2_0.png")
    out = tmp_path / "run"
    assert main(["train", "toy", *tiny_overrides(data, out, max_steps=2), "-q"]) == 0
    assert "Skipping" in caplog.text and "corrupt image" in caplog.text
    assert len(ckpt.read_metrics(out)) == 2


def test_a_dataset_with_no_usable_example_is_refused(square_data, tiny_overrides, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(square_data, data)
    for png in data.rglob("*_0.png"):
        _truncate(png)
    out = tmp_path / "run"
    assert main(["train", "toy", *tiny_overrides(data, out, **{"data.cache": True}, max_steps=1)]) == 2
    assert "None of the dataset's 4 examples is usable" in capsys.readouterr().err


# --- the cache on disk ---------------------------------------------------------------------------


def _cached_run(data, out, tiny_overrides, cache_dir, **extra) -> int:
    values = {"data.cache": True, "data.cache_dir": cache_dir, "max_steps": 2, "save_every": 2, **extra}
    return main(["train", "toy", *tiny_overrides(data, out, **values), "-q"])


def _cache_folders(cache_dir) -> list:
    return sorted(p for p in cache_dir.iterdir() if p.is_dir())


def _encoding_counted(monkeypatch, fail_at: int | None = None) -> list[range]:
    """Record every block of rows the cache encodes (and fail at the ``fail_at``-th block)."""
    from ip2p_train import cache

    calls: list[range] = []
    original = cache._encode_rows

    def counted(dataset, rows, *args, **kwargs):
        calls.append(rows)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt("killed while encoding")
        return original(dataset, rows, *args, **kwargs)

    monkeypatch.setattr(cache, "_encode_rows", counted)
    return calls


def test_a_later_run_reads_the_cache_instead_of_encoding(square_data, tiny_overrides, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    assert _cached_run(square_data, tmp_path / "first", tiny_overrides, cache_dir) == 0
    encoded = _encoding_counted(monkeypatch)
    assert _cached_run(square_data, tmp_path / "second", tiny_overrides, cache_dir) == 0
    assert encoded == []
    assert _losses(tmp_path / "second") == _losses(tmp_path / "first")
    assert len(_cache_folders(cache_dir)) == 1


def test_another_model_setting_or_dataset_gets_its_own_cache(square_data, tiny_overrides, tmp_path):
    import shutil

    cache_dir = tmp_path / "cache"
    assert _cached_run(square_data, tmp_path / "a", tiny_overrides, cache_dir) == 0
    assert _cached_run(square_data, tmp_path / "b", tiny_overrides, cache_dir, **{"data.flip": 0.0}) == 0
    assert _cached_run(square_data, tmp_path / "c", tiny_overrides, cache_dir, seed=1) == 0  # another random model
    changed = tmp_path / "data"
    shutil.copytree(square_data, changed)
    Image.new("RGB", (16, 16), "red").save(changed / "0000000" / "0_1.png")
    assert _cached_run(changed, tmp_path / "d", tiny_overrides, cache_dir) == 0
    assert len(_cache_folders(cache_dir)) == 4


def test_a_cache_interrupted_while_encoding_continues_from_its_last_whole_shard(
    square_data, tiny_overrides, tmp_path, monkeypatch
):
    from ip2p_train import cache

    monkeypatch.setattr(cache, "SHARD_EXAMPLES", 2)  # 4 examples: 2 shards
    assert _cached_run(square_data, tmp_path / "whole", tiny_overrides, tmp_path / "reference") == 0
    interrupted = tmp_path / "cache"
    _encoding_counted(monkeypatch, fail_at=2)
    assert _cached_run(square_data, tmp_path / "killed", tiny_overrides, interrupted) == 130  # as after Ctrl-C
    (folder,) = _cache_folders(interrupted)
    assert sorted(p.name for p in folder.iterdir()) == ["shard-00000.safetensors"]  # no manifest, no partial file
    encoded = _encoding_counted(monkeypatch)
    assert _cached_run(square_data, tmp_path / "resumed", tiny_overrides, interrupted) == 0
    assert encoded == [range(2, 4)]
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "whole")


def test_a_damaged_shard_is_encoded_again(square_data, tiny_overrides, tmp_path, monkeypatch, caplog):
    cache_dir = tmp_path / "cache"
    assert _cached_run(square_data, tmp_path / "first", tiny_overrides, cache_dir) == 0
    (folder,) = _cache_folders(cache_dir)
    shard = folder / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    encoded = _encoding_counted(monkeypatch)
    assert _cached_run(square_data, tmp_path / "second", tiny_overrides, cache_dir) == 0
    assert encoded == [range(0, 4)]
    assert "cannot be read" in caplog.text
    assert _losses(tmp_path / "second") == _losses(tmp_path / "first")


def test_the_cache_is_on_by_default_and_the_encoders_leave_memory_until_export(square_data, tiny_overrides, tmp_path):
    from ip2p_train.config import load_config
    from ip2p_train.loop import Trainer
    from ip2p_train.model import load_base

    assert load_config("sd15", []).data.cache is True
    config = load_config("toy", tiny_overrides(square_data, tmp_path / "run", **{"data.cache": True}))
    trainer = Trainer(config)
    trainer.setup()
    fresh = load_base(config.model.base, config.seed)
    ids = torch.tensor([[0, 5, 9, 2]])
    try:
        assert trainer.encoder is None  # training reads latents only
        assert next(trainer.model.vae.parameters()).device.type == "meta"
        assert next(trainer.model.text_encoder.parameters()).device.type == "meta"
        with trainer.encoders_loaded():  # what validation and export see: the float32 weights, buffers included
            for name in ("vae", "text_encoder"):
                loaded, original = getattr(trainer.model, name).state_dict(), getattr(fresh, name).state_dict()
                assert all(torch.equal(loaded[k], original[k]) for k in original)
            with torch.no_grad():
                assert torch.equal(trainer.model.text_encoder(ids)[0], fresh.text_encoder(ids)[0])
        assert next(trainer.model.vae.parameters()).device.type == "meta"
    finally:
        trainer.accelerator.end_training()


def test_the_cache_on_disk_trains_as_the_cache_in_memory(square_data, tiny_overrides, tmp_path):
    from ip2p_train.config import load_config
    from ip2p_train.data import open_training_data
    from ip2p_train.loop import train

    assert _cached_run(square_data, tmp_path / "disk", tiny_overrides, tmp_path / "cache") == 0
    values = {"data.cache": True, "max_steps": 2, "save_every": 2}
    config = load_config("toy", tiny_overrides(square_data, tmp_path / "memory", **values))
    train(config, dataset=open_training_data(str(square_data), {}, None))  # a dataset object: cached in memory only
    assert _losses(tmp_path / "memory") == _losses(tmp_path / "disk")


def test_a_damaged_text_embedding_file_is_written_again_from_the_shards(
    square_data, tiny_overrides, tmp_path, monkeypatch, caplog
):
    from ip2p_train.cache import TEXT

    cache_dir = tmp_path / "cache"
    assert _cached_run(square_data, tmp_path / "first", tiny_overrides, cache_dir) == 0
    (folder,) = _cache_folders(cache_dir)
    (folder / TEXT).write_bytes(b"not safetensors")
    encoded = _encoding_counted(monkeypatch)
    assert _cached_run(square_data, tmp_path / "second", tiny_overrides, cache_dir) == 0
    assert encoded == []  # the latents are read back; only the instructions are encoded again
    assert "cannot be read" in caplog.text
    assert _losses(tmp_path / "second") == _losses(tmp_path / "first")


@pytest.mark.parametrize(("main_process", "order"), [(True, ["cache", "wait"]), (False, ["wait", "cache"])])
def test_only_the_main_process_fills_the_cache_and_the_others_read_it_after(
    square_data, tiny_overrides, tmp_path, monkeypatch, main_process, order
):
    from types import SimpleNamespace

    from ip2p_train import cache
    from ip2p_train.config import load_config
    from ip2p_train.data import open_training_data
    from ip2p_train.loop import Trainer
    from ip2p_train.model import load_base

    events: list[str] = []
    config = load_config("toy", tiny_overrides(square_data, tmp_path / "run", **{"data.cache": True}))
    trainer = Trainer(config)
    trainer.model = trainer.encoder = load_base(config.model.base, config.seed)
    trainer.weight_dtype = torch.float32
    trainer.accelerator = SimpleNamespace(  # one process of several, as accelerate describes it
        is_main_process=main_process, is_local_main_process=main_process, device=torch.device("cpu"),
        wait_for_everyone=lambda: events.append("wait"),
    )  # fmt: skip
    monkeypatch.setattr(cache, "encode_dataset", lambda *args, **kwargs: events.append("cache"))
    trainer._stream(open_training_data(str(square_data), {}, None))
    assert events == order


def test_the_cache_key_changes_with_every_setting_that_changes_the_latents():
    from ip2p_train.cache import cache_key
    from ip2p_train.model import load_base

    model, data = load_base("config:tiny", seed=0), {"files": "a"}
    settings = {"resolution": 16, "flip": 0.5, "dtype": torch.float32}
    keys = {
        cache_key(model, data, **settings),
        cache_key(model, data, **{**settings, "resolution": 24}),
        cache_key(model, data, **{**settings, "flip": 0.0}),  # one view instead of two
        cache_key(model, data, **{**settings, "dtype": torch.bfloat16}),
        cache_key(model, {"files": "b"}, **settings),
        cache_key(load_base("config:tiny", seed=1), data, **settings),
    }
    assert len(keys) == 6
    assert cache_key(model, data, **{**settings, "flip": 0.2}) == cache_key(model, data, **settings)  # the same views


def test_the_toy_base_trains_with_the_shipped_frozen_parts_and_is_keyed_by_them(tmp_path, monkeypatch):
    """``config:toy`` is a random UNet (drawn by the seed) with the shipped toy VAE and text encoder: every seed
    reads the same encoder, and a reinstalled package with a retrained VAE must not reuse the latents the old
    VAE encoded."""
    import shutil

    from ip2p_train.cache import cache_key
    from ip2p_train.model import load_base
    from safetensors.torch import load_file, save_file

    from ip2p.headless import toy_model
    from ip2p.headless.loading import load_edit_model

    shipped = tmp_path / "toy-ip2p"
    shutil.copytree(toy_model.SHIPPED_MODEL, shipped)
    monkeypatch.setattr(toy_model, "SHIPPED_MODEL", shipped)
    data, settings = {"files": "a"}, {"resolution": 64, "flip": 0.0, "dtype": torch.float32}
    before, other_seed = load_base("config:toy", seed=0), load_base("config:toy", seed=1)
    assert load_base("config:toy", seed=0).model_hash == before.model_hash  # the same parts: the same key
    assert other_seed.model_hash != before.model_hash
    text_encoder = load_edit_model(shipped).text_encoder.state_dict()
    for model in (before, other_seed):
        assert all(torch.equal(t, text_encoder[k]) for k, t in model.text_encoder.state_dict().items())
    assert not torch.equal(other_seed.unet.conv_in.weight, before.unet.conv_in.weight)

    weights = shipped / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state = {name: tensor * 1.01 if tensor.is_floating_point() else tensor for name, tensor in state.items()}
    save_file(state, weights)
    after = load_base("config:toy", seed=0)
    assert not torch.equal(after.vae.encoder.conv_in.weight, before.vae.encoder.conv_in.weight)
    assert after.model_hash != before.model_hash
    assert cache_key(after, data, **settings) != cache_key(before, data, **settings)
