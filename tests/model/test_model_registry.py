"""Registry: names, override validation, config round trip; synthetic batches."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from contract.config import to_plain
from model.batch import Keys
from model.cain import CAINConfig, MajorAttention, PEGPlacement
from model.layers.temporal_convolution import PEGMode
from model.registry import MODELS, build_model, resolve_config
from model.synthetic_batch import synthetic_batch, tiny_feature_spec
from model.tables import (
    SIDE_FEATURE_TABLES,
    EmbeddingInit,
    embedding_collection,
    table_layout,
)


def test_the_paper_models_are_registered():
    for name in ("cain", "lap", "twin", "sim_soft", "eta", "sdim", "din"):
        assert name in MODELS
    for config_class, _ in MODELS.values():
        assert dataclasses.is_dataclass(config_class)
        assert config_class.__dataclass_params__.frozen


def test_paper_defaults():
    config = resolve_config("cain")
    assert (config.embedding_dim, config.mlp_dims) == (64, (2048, 1024))
    assert (config.context_length, config.num_layers, config.later_stride) == (7, 4, 4)
    assert config.major_attention is MajorAttention.LAP
    assert (config.peg_mode, config.peg_placement) == (PEGMode.REPLACE, PEGPlacement.ALL)


def test_overrides_are_typed_and_nested():
    config = resolve_config(
        "cain",
        {
            "embedding_dim": 16,
            "mlp_dims": [64, 32],
            "context_length": 3,
            "peg_mode": "sum",
            "major_attention": "twin",
            "twin.num_heads": 1,
            "lap": {"k_top": 10},
            "auxiliary_dim": None,
        },
    )
    assert isinstance(config, CAINConfig)
    assert config.mlp_dims == (64, 32)
    assert config.peg_mode is PEGMode.SUM
    assert config.major_attention is MajorAttention.TWIN
    assert (config.twin.num_heads, config.lap.k_top) == (1, 10)


@pytest.mark.parametrize(
    "name,overrides,named",
    [
        ("nope", {}, "nope"),
        ("cain", {"embeding_dim": 3}, "embeding_dim"),
        ("cain", {"embedding_dim": "wide"}, "embedding_dim"),
        ("cain", {"embedding_dim": True}, "embedding_dim"),
        ("cain", {"peg_mode": "multiply"}, "peg_mode"),
        ("cain", {"lap.k_bottom": 3}, "lap.k_bottom"),
        ("din", {"twin.num_heads": 2}, "twin.num_heads"),
        ("cain", {"mlp_dims": 5}, "mlp_dims"),
    ],
)
def test_bad_names_and_overrides_raise_value_error_naming_them(name, overrides, named):
    with pytest.raises(ValueError, match=named):
        build_model(name, tiny_feature_spec(), overrides)


def test_resolved_config_round_trips_through_plain_values():
    config = resolve_config("twin_msia", {"embedding_dim": 8, "peg_mode": "concat"})
    plain = to_plain(config)
    assert plain["peg_mode"] == "concat" and plain["major_attention"] == "twin"
    assert resolve_config("twin_msia", plain) == config


def test_the_model_receives_its_sparse_arch_which_can_live_on_the_meta_device():
    spec = tiny_feature_spec()
    config = resolve_config("cain", {"embedding_dim": 4, "mlp_dims": [8]})
    sparse_arch = embedding_collection(
        table_layout(spec, config.max_table_rows), 4, torch.device("meta")
    )
    model = build_model("cain", spec, config, sparse_arch=sparse_arch)
    assert model.sparse_arch is sparse_arch
    assert all(table.weight.is_meta for table in sparse_arch.embeddings.values())
    assert not any(p.is_meta for n, p in model.named_parameters() if "sparse_arch" not in n)


def test_a_sparse_arch_that_does_not_fit_the_model_is_refused():
    spec = tiny_feature_spec()
    config = resolve_config("lap", {"embedding_dim": 4, "mlp_dims": [8]})
    other_dim = embedding_collection(table_layout(spec, config.max_table_rows), 8)
    with pytest.raises(ValueError, match="embedding_dim is 4"):
        build_model("lap", spec, config, sparse_arch=other_dim)
    no_demographics = tiny_feature_spec(demographics={})
    too_few = embedding_collection(table_layout(no_demographics, config.max_table_rows), 4)
    with pytest.raises(ValueError, match="profile_age"):
        build_model("lap", spec, config, sparse_arch=too_few)


def test_without_side_features_the_sparse_arch_has_no_side_tables_and_ignores_those_ids():
    spec = tiny_feature_spec(max_len=12)
    config = {"embedding_dim": 4, "mlp_dims": [8], "use_side_features": False}
    torch.manual_seed(0)
    model = build_model("eta", spec, config).eval()
    tables = {table.name for table in model.sparse_arch.embedding_configs()}
    assert tables.isdisjoint(SIDE_FEATURE_TABLES) and {"item", "category"} <= tables
    batch = synthetic_batch(spec, 3, (1, 2), seed=2)
    features = batch.sparse_features
    side_keys = [key for key in features.keys() if key in Keys.HISTORY[2:]]
    shifted_values = features.values().clone()
    rows = table_layout(spec, 1 << 22).rows_for_feature()
    for key in side_keys:  # another valid side id for every history item
        start = features.offset_per_key()[features.keys().index(key)]
        end = start + features[key].values().numel()
        shifted_values[start:end] = (shifted_values[start:end] + 1) % rows[key]
    shifted = dataclasses.replace(
        batch,
        sparse_features=KeyedJaggedTensor(
            keys=features.keys(), values=shifted_values, lengths=features.lengths()
        ),
    )
    with torch.no_grad():
        torch.testing.assert_close(model(shifted), model(batch), rtol=0, atol=0)
    # A full collection (side tables included) still serves such a model.
    full = embedding_collection(table_layout(spec, 1 << 22), 4)
    build_model("eta", spec, config, sparse_arch=full)


@pytest.mark.parametrize("init", list(EmbeddingInit))
def test_embedding_init_sets_each_tables_bound_and_the_rows_fill_it(init):
    spec = tiny_feature_spec(num_items=4000)
    torch.manual_seed(0)
    model = build_model("lap", spec, {"embedding_dim": 8, "mlp_dims": [8], "embedding_init": init})
    rows = table_layout(spec, 1 << 22).rows
    largest = math.sqrt(1 / max(rows.values()))
    weights = {name.split(".")[-2]: w for name, w in model.sparse_arch.state_dict().items()}
    for config in model.sparse_arch.embedding_configs():
        bound = largest if init is EmbeddingInit.SHARED else math.sqrt(1 / rows[config.name])
        assert config.weight_init_max == pytest.approx(bound) == -config.weight_init_min
        weight = weights[config.name]
        assert weight.abs().max() <= bound  # uniform in the bound, and filling it
        assert weight.abs().max() > 0.5 * bound, config.name
    if init is EmbeddingInit.PER_TABLE:  # TorchRec's own default, stated
        assert weights["behavior"].abs().max() > 10 * weights["item"].abs().max()


def test_synthetic_batch_is_seeded_and_fits_the_tables():
    spec = tiny_feature_spec(max_len=12)
    first = synthetic_batch(spec, 6, (1, 4), seed=9)
    second = synthetic_batch(spec, 6, (1, 4), seed=9)
    assert torch.equal(first.sparse_features.values(), second.sparse_features.values())
    assert torch.equal(first.labels, second.labels)
    rows = table_layout(spec, 1 << 22).rows_for_feature()
    for key, jagged in first.sparse_features.to_dict().items():
        assert int(jagged.values().max()) < rows[key], key
    assert int(first.sparse_features["history_item_id"].lengths().max()) <= 12
    assert first.num_requests == 6 and first.request_index.max().item() == 5


def test_yaml_presets_name_registered_models_with_valid_values():
    import pathlib

    import yaml

    presets = sorted(pathlib.Path("conf/model").glob("*.yaml"))
    assert presets
    for path in presets:
        section = yaml.safe_load(path.read_text())["model"]
        name = section.pop("name")
        assert name == path.stem
        resolve_config(name, section)


def test_the_logit_starts_at_the_train_splits_base_rate():
    from dataclasses import replace

    from contract.feature_spec import SplitStats

    spec = replace(
        tiny_feature_spec(),
        splits={"train": SplitStats(dates=("d",), requests=10, samples=200, positives=10)},
    )
    model = build_model("lap", spec, {"embedding_dim": 4, "mlp_dims": [8]})
    bias = float(model.dense_arch.over_arch.logit.bias)
    assert bias == pytest.approx(math.log(0.05 / 0.95))
    without_splits = build_model("lap", tiny_feature_spec(), {"embedding_dim": 4, "mlp_dims": [8]})
    assert float(without_splits.dense_arch.over_arch.logit.bias) == 0.0
