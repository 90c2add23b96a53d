"""Embedding tables: which feature reads which table, and how many rows each table has.

Candidate and history share the item table and the category table (the papers compare models on
the same embeddings). Raw ids are mapped to rows by `id % rows` in the data pipeline
(`row_ids`), so a table never sees an out-of-range id; ids that are new since the spec was written
land in an existing row (documented collision, the TorchRec/Criteo convention) instead of failing.
All tables share one dimension: TorchRec's sequence `EmbeddingCollection` requires it.

Rows start uniform in ±bound (`EmbeddingInit`): TorchRec's default bound is sqrt(1/rows) per
table, so a table of 3 rows (behavior types) starts about 40 times louder than 5,000 item rows,
and on the history the summed side features then drown the item ids they sit next to; `SHARED`
starts every table at the largest table's bound (docs/models.md, "Embedding initialisation").

The trainer builds the collection (`embedding_collection`, on the meta device so that
`DistributedModelParallel` materialises only each rank's shards) and hands it to the model as its
sparse stage (TorchRec's DLRM pattern); `LifelongCTRModel.check_sparse_arch` verifies it matches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection

from contract.feature_spec import FeatureSpec
from model.batch import Keys


class EmbeddingInit(Enum):
    """How the rows of every table start: uniform in ±bound."""

    PER_TABLE = "per_table"  # TorchRec's default: bound sqrt(1/rows), per table
    SHARED = "shared"  # every table at the largest table's bound sqrt(1/max rows)


@dataclass(frozen=True)
class TableLayout:
    """Args:
    rows: table name -> number of rows.
    features: table name -> the feature keys that look it up.
    """

    rows: dict[str, int]
    features: dict[str, tuple[str, ...]]

    def rows_for_feature(self) -> dict[str, int]:
        return {key: self.rows[table] for table, keys in self.features.items() for key in keys}

    def embedding_configs(
        self, dim: int, init: EmbeddingInit = EmbeddingInit.PER_TABLE
    ) -> list[EmbeddingConfig]:
        shared = math.sqrt(1 / max(self.rows.values()))

        def bound(table: str) -> float:
            return shared if init is EmbeddingInit.SHARED else math.sqrt(1 / self.rows[table])

        return [
            EmbeddingConfig(
                name=table,
                embedding_dim=dim,
                num_embeddings=self.rows[table],
                feature_names=list(self.features[table]),
                weight_init_min=-bound(table),
                weight_init_max=bound(table),
            )
            for table in self.rows
        ]


# Tables read only by the history's side features (behavior, time gap, watch time).
SIDE_FEATURE_TABLES = ("behavior", "time_gap", "watch_time")


def table_layout(spec: FeatureSpec, max_rows: int, side_features: bool = True) -> TableLayout:
    """Rows are the id range (max id + 1) capped at `max_rows`, beyond which ids are hashed.

    side_features=False leaves out `SIDE_FEATURE_TABLES`: the layout of the sparse arch of a model
    that does not use side features (`use_side_features` off). Its EmbeddingCollection then
    ignores those keys of a batch instead of looking up three embeddings per history item that
    nothing reads. Batches are built with the full layout either way.
    """
    rows = {
        "item": min(spec.max_item_id + 1, max_rows),
        "category": min(spec.max_category_id + 1, max_rows),
        "behavior": len(spec.behaviors) + 1,
        "time_gap": spec.time_gap_buckets,
        "watch_time": spec.watch_time_buckets,
    }
    features = {
        "item": (Keys.CANDIDATE_ITEM, Keys.HISTORY_ITEM),
        "category": (Keys.CANDIDATE_CATEGORY, Keys.HISTORY_CATEGORY, Keys.PROFILE_TOP_CATEGORY),
        "behavior": (Keys.HISTORY_BEHAVIOR,),
        "time_gap": (Keys.HISTORY_TIME_GAP,),
        "watch_time": (Keys.HISTORY_WATCH_TIME,),
    }
    for field_name, cardinality in spec.demographics.items():
        table = f"demographic_{field_name}"
        rows[table] = cardinality
        features[table] = (Keys.demographic(field_name),)
    if not side_features:
        rows = {table: n for table, n in rows.items() if table not in SIDE_FEATURE_TABLES}
        features = {table: keys for table, keys in features.items() if table in rows}
    return TableLayout(rows=rows, features=features)


def embedding_collection(
    layout: TableLayout,
    embedding_dim: int,
    device: torch.device | None = None,
    init: EmbeddingInit = EmbeddingInit.PER_TABLE,
) -> EmbeddingCollection:
    """One TorchRec EmbeddingCollection holding every table of `layout` at `embedding_dim`."""
    return EmbeddingCollection(tables=layout.embedding_configs(embedding_dim, init), device=device)


def row_ids(raw_ids: torch.Tensor, rows: int) -> torch.Tensor:
    """Map raw non-negative ids to table rows."""
    return torch.remainder(raw_ids, rows)
