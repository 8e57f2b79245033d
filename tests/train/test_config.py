"""The trainer's config: shipped configs, YAML files, dotted overrides, unknown keys, round trips."""

from __future__ import annotations

import pytest
import yaml
from ip2p_train.config import (
    TrainConfig,
    differences,
    load_config,
    read_saved_config,
    schema,
    shipped_configs,
    to_yaml,
)
from ip2p_train.loop import lr_factor

from ip2p.errors import IP2PError


def test_the_shipped_configs_are_sd15_and_toy_and_load_by_name():
    assert {"sd15", "toy"} <= set(shipped_configs())
    sd15 = load_config("sd15")
    assert (sd15.data.resolution, sd15.optim.lr, sd15.data.flip) == (256, 1e-4, 0.5)
    assert sd15.ema.enabled and (sd15.dropout.text, sd15.dropout.image, sd15.dropout.both) == (0.05, 0.05, 0.05)
    assert load_config("toy.yaml").model.base == "config:toy"


def test_the_required_key_names_exist():
    keys = set(schema())
    required = {
        "model.base", "data.path", "data.resolution", "batch_size", "output_dir", "max_steps", "save_every",
        "seed", "data.columns", "data.flip", "dropout.text", "dropout.image", "dropout.both", "optim.lr",
        "gradient_accumulation_steps", "mixed_precision", "gradient_checkpointing", "ema.enabled", "ema.decay",
        "validation.every", "validation.images", "validation.text_cfg", "validation.image_cfg",
        "checkpoints.total_limit", "export.fp16",
    }  # fmt: skip
    assert required <= keys


def test_overrides_are_parsed_as_yaml_scalars():
    config = load_config("sd15", ["optim.lr=5e-5", "max_steps=40", "model.base=null", "ema.enabled=false",
                                  "validation.text_cfg=[5, 7.5]", "data.path=/data/ip2p"])  # fmt: skip
    assert config.optim.lr == 5e-5 and config.max_steps == 40 and config.model.base is None
    assert config.ema.enabled is False and config.validation.text_cfg == [5.0, 7.5]
    assert config.data.path == "/data/ip2p"


def test_column_mapping_entries_are_set_one_by_one():
    config = load_config("sd15", ["data.columns.edit_prompt=instruction"])
    assert config.data.columns == {"edit_prompt": "instruction"}


def test_an_unknown_override_names_the_closest_key():
    with pytest.raises(IP2PError, match=r"'optim\.lrr'.*Did you mean 'optim\.lr'"):
        load_config("sd15", ["optim.lrr=1e-4"])


def test_an_unknown_key_in_a_yaml_file_names_the_closest_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  resolutoin: 256\n", encoding="utf-8")
    with pytest.raises(IP2PError, match=r"'data\.resolutoin'.*Did you mean 'data\.resolution'"):
        load_config(path)


def test_a_value_of_the_wrong_type_is_refused():
    with pytest.raises(IP2PError, match="batch_size must be a whole number"):
        load_config("sd15", ["batch_size=four"])


def test_impossible_values_are_refused_with_the_key():
    with pytest.raises(IP2PError, match="mixed_precision"):
        load_config("sd15", ["mixed_precision=fp8"])
    with pytest.raises(IP2PError, match="exceeds 1"):
        load_config("sd15", ["dropout.text=0.6", "dropout.image=0.6"])
    with pytest.raises(IP2PError, match="optim.snr_gamma"):
        load_config("sd15", ["optim.snr_gamma=0"])
    with pytest.raises(IP2PError, match="optim.lr_schedule is 'cosin'; choose one of constant, cosine, linear"):
        load_config("sd15", ["optim.lr_schedule=cosin"])


def test_an_override_without_equals_sign_is_refused():
    with pytest.raises(IP2PError, match="key=value"):
        load_config("sd15", ["max_steps"])


def test_a_missing_config_lists_the_shipped_ones():
    with pytest.raises(IP2PError, match="sd15, toy"):
        load_config("no-such-config")


def test_the_resolved_config_round_trips_through_yaml(tmp_path):
    config = load_config("toy", ["data.path=/x", "optim.lr=3e-4"])
    (tmp_path / "config.yaml").write_text(to_yaml(config), encoding="utf-8")
    assert read_saved_config(tmp_path / "config.yaml") == config
    assert yaml.safe_load(to_yaml(config))["optim"]["lr"] == 3e-4


def test_differences_ignore_the_keys_a_resume_may_change():
    a = TrainConfig()
    b = TrainConfig(max_steps=5, save_every=1)
    assert differences(a, b) == []
    b.optim.lr = 1.0
    assert differences(a, b) == ["optim.lr: 0.0001 -> 1.0"]


def test_the_latent_cache_is_on_and_8_bit_adam_off_by_default():
    for config in (TrainConfig(), load_config("sd15"), load_config("toy")):
        assert (config.data.cache, config.data.cache_dir, config.optim.adam_8bit) == (True, None, False)


def test_a_resume_may_move_the_latent_cache_but_not_turn_it_off():
    run, moved, off = TrainConfig(), TrainConfig(), TrainConfig()
    moved.data.cache_dir = "/elsewhere"
    off.data.cache = False
    assert differences(run, moved) == []
    assert differences(run, off) == ["data.cache: True -> False"]


def test_the_learning_rate_warms_up_then_holds_or_decays_to_zero_at_max_steps():
    constant, cosine, linear = (lr_factor(name, 10, 110) for name in ("constant", "cosine", "linear"))
    assert [constant(s) for s in (0, 4, 9)] == [cosine(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]  # the same warm-up
    assert [constant(s) for s in (10, 60, 109)] == [1.0, 1.0, 1.0]
    assert [round(cosine(s), 6) for s in (10, 60, 110)] == [1.0, 0.5, 0.0]
    assert [round(linear(s), 6) for s in (10, 35, 110)] == [1.0, 0.75, 0.0]
    assert cosine(500) == linear(500) == 0.0  # past max_steps: no negative rates
