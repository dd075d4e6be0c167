"""Config schema: defaults, overrides, validation messages, round trip of the resolved config."""

import pytest
import yaml

from conftest import REPO, text_config, write_config
from tfsft.config import apply_overrides, dump_config, load_config, parse_override, validate
from tfsft.errors import ConfigError


def test_every_shipped_config_validates():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        if path.name.startswith("tune_"):
            continue
        config = load_config([path])
        assert config.name


def test_set_overrides_parse_types():
    assert parse_override("optimizer.learning_rate=3e-5") == (["optimizer", "learning_rate"], 3e-5)
    assert parse_override("training.epochs=4") == (["training", "epochs"], 4)
    assert parse_override("freeze.strategy=gradual") == (["freeze", "strategy"], "gradual")
    assert parse_override("model.head.hidden_units=[64, 32]") == (["model", "head", "hidden_units"], [64, 32])
    raw = apply_overrides({"optimizer": {"name": "sgd"}}, ["optimizer.learning_rate=0.1", "training.epochs=2"])
    assert raw == {"optimizer": {"name": "sgd", "learning_rate": 0.1}, "training": {"epochs": 2}}


def test_files_merge_in_order_and_set_wins(tmp_path, text_data):
    first = write_config(tmp_path, text_config(text_data, tmp_path), "a.yaml")
    second = write_config(tmp_path, {"optimizer": {"learning_rate": 0.5}, "training": {"epochs": 7}}, "b.yaml")
    config = load_config([first, second], ["training.epochs=9"])
    assert config.optimizer.learning_rate == 0.5
    assert config.training.epochs == 9
    assert config.optimizer.name == "adamw"  # from the first file


def test_unknown_key_names_it_and_suggests(tmp_path, text_data):
    with pytest.raises(ConfigError) as info:
        validate({**text_config(text_data, tmp_path), "optimizer": {"learnig_rate": 1e-3}})
    message = str(info.value)
    assert "optimizer.learnig_rate" in message
    assert "Did you mean 'optimizer.learning_rate'" in message


def test_wrong_type_names_key_and_value(tmp_path, text_data):
    with pytest.raises(ConfigError) as info:
        validate(text_config(text_data, tmp_path, training={"epochs": "many"}))
    assert "training.epochs" in str(info.value) and "'many'" in str(info.value)


def test_out_of_range_names_bound(tmp_path, text_data):
    with pytest.raises(ConfigError) as info:
        validate(text_config(text_data, tmp_path, optimizer={"learning_rate": -1.0}))
    assert "optimizer.learning_rate" in str(info.value) and "greater than 0" in str(info.value)


def test_split_fractions_must_leave_training_data(tmp_path, text_data):
    with pytest.raises(ConfigError, match="must be < 1"):
        validate(text_config(text_data, tmp_path, data={"split": {"validation": 0.6, "test": 0.5}}))


def test_gradual_schedule_must_start_at_zero(tmp_path, text_data):
    with pytest.raises(ConfigError, match="epoch 0"):
        validate(
            text_config(
                text_data, tmp_path, freeze={"strategy": "gradual", "schedule": [{"epoch": 1, "trainable_units": 2}]}
            )
        )


def test_resolved_config_round_trips(tmp_path, text_data):
    config = validate(text_config(text_data, tmp_path))
    dump_config(config, tmp_path / "resolved.yaml")
    again = load_config([tmp_path / "resolved.yaml"])
    assert again == config
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text())["optimizer"]["clip"]["mode"] == "global_norm"
