"""Config: YAML + key=value overrides, typed, validated with messages naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import ConfigError, ShardingType, config_from_dict, load_config
from trainer.main import DEFAULT_CONFIG, parse_arguments


def test_overrides_win_over_yaml_and_are_typed():
    config = load_config(
        DEFAULT_CONFIG,
        [
            "train.max_steps=20",
            "train.batch_size=256",
            "train.sharding_type=row_wise",
            "train.pipeline=true",
        ],
    )
    assert config.train.max_steps == 20
    assert config.train.batch_size == 256
    assert config.train.sharding_type is ShardingType.ROW_WISE
    assert config.train.pipeline is True


def test_model_overrides_are_forwarded_with_yaml_types():
    config = load_config(
        None, ["model.embedding_dim=16", "model.mlp_dims=[64,32]", "model.lap.k_top=10"]
    )
    assert config.model.options == {"embedding_dim": 16, "mlp_dims": [64, 32], "lap": {"k_top": 10}}


def test_model_presets_compose_with_train_presets():
    config = load_config(["conf/train/paper.yaml", "conf/model/twin.yaml"], ["train.max_steps=3"])
    assert config.model.name == "twin"
    assert config.model.options["embedding_dim"] == 64  # from the train preset
    assert config.model.options["twin"]["num_heads"] == 4  # from the model preset
    assert config.train.batch_size == 1536 and config.train.max_steps == 3


@pytest.mark.parametrize("preset", sorted(Path("conf/train").glob("*.yaml")), ids=str)
def test_every_train_preset_composes_after_the_defaults(preset):
    config = load_config([DEFAULT_CONFIG, preset])
    assert config.train.batch_size > 0  # typed and checked, or load_config raised


def test_the_converge_preset_trains_epochs_with_validation_and_early_stopping():
    config = load_config([DEFAULT_CONFIG, "conf/train/converge.yaml"])
    assert config.data.validation_days == 1 and config.train.epochs == 5
    assert config.train.early_stopping_patience == 1 and config.train.restore_best
    assert config.train.sparse_lr == load_config(DEFAULT_CONFIG).train.sparse_lr  # defaults kept


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.max_step=20", "train.max_step"),
        ("trian.max_steps=20", "trian.max_steps"),
        ("train.batch_size=abc", "train.batch_size"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.sharding_type=diagonal", "train.sharding_type"),
        ("train.pipeline=maybe", "train.pipeline"),
        ("max_steps", "max_steps"),
        ("train.evaluate_only=true", "train.evaluate_only"),  # without train.warm_start
    ],
)
def test_bad_override_names_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_yaml_key_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batch_sise: 3\n")
    with pytest.raises(ConfigError, match=r"train\.batch_sise"):
        load_config(path)


def test_unknown_model_option_is_rejected_before_training(tmp_path):
    with pytest.raises(ConfigError, match="embeding_dim"):
        parse_arguments(["--data", str(tmp_path), "--model", "cain", "model.embeding_dim=3"])


def test_resolved_config_round_trips():
    config = load_config(
        DEFAULT_CONFIG, ["train.max_steps=7", "model.embedding_dim=16", "output=/tmp/x"]
    )
    assert config_from_dict(config.to_dict()) == config


def test_options_may_follow_the_overrides(tmp_path):
    config = parse_arguments(
        ["--data", str(tmp_path), "train.max_steps=7", "--model", "din", "train.seed=3"]
    )
    assert (config.model.name, config.train.max_steps, config.train.seed) == ("din", 7, 3)


@pytest.mark.parametrize(
    "overrides,named",
    [
        (["train.plateau_lr_factor=0"], "train.plateau_lr_factor: must be in (0, 1]"),
        (["train.plateau_lr_factor=1.5"], "train.plateau_lr_factor: must be in (0, 1]"),
        (["train.plateau_lr_factor=0.1"], "plateau_lr_factor: needs a validation split"),
        (
            ["train.plateau_lr_factor=0.1", "train.early_stopping_patience=1"],
            "plateau_lr_factor: with early_stopping_patience 1 the run stops",
        ),
        (["train.validate_every=100"], "validate_every: needs a validation split"),
        (["train.validate_every=-1"], "train.validate_every: must be >= 0"),
        (
            ["train.validate_every=100", "train.pipeline=true", "data.validation_days=1"],
            "train.validate_every: not with train.pipeline",
        ),
        (["train.sparse_eps=0"], "train.sparse_eps: must be positive"),
        (["train.sparse_weight_decay=-0.1"], "train.sparse_weight_decay: must be >= 0"),
        (
            ["train.sparse_weight_decay=0.1", "train.sparse_optimizer=adam"],
            "train.sparse_weight_decay: not with sparse_optimizer adam",
        ),
    ],
)
def test_validation_switches_are_checked(overrides, named):
    with pytest.raises(ConfigError) as error:
        load_config(None, ["model.name=cain", *overrides])
    assert named in str(error.value)


def test_the_data_seed_seeds_the_shuffle_alone_and_defaults_to_the_seed():
    assert load_config(None, ["train.seed=5"]).train.shuffle_seed == 5
    both = load_config(None, ["train.seed=5", "train.data_seed=3"]).train
    assert (both.seed, both.shuffle_seed) == (5, 3)
    assert load_config(None, ["train.seed=5", "train.data_seed=null"]).train.shuffle_seed == 5
