"""The body every model shares; only the long-term module differs (as the papers compare them).

    sparse arch      -> one EmbeddingCollection lookup (the collection is given to the model)
    embedding layout -> candidates [B, 2D], history [R, L, 2D] + side [R, L, D], profile [R, P]
    request grouping -> queries [R, C, 2D] (candidates next to their request's history)
    short-term arch  -> target attention over the last `short_len` items      [R, C, Ds]
    long-term arch   -> the model's module over the whole history              [R, C, Dl]
    over arch        -> MLP (paper 2048-1024) on [profile, candidate, short, long] -> logit [B]

History keys are item ⊕ category (the candidate space: retrieval, hashing and attention scores
compare them with the candidate); history values are keys ⊕ side features (behavior + time gap +
watch time) when `use_side_features`, else the keys. Long-term modules see
(queries, keys, values, mask, side) so the same module runs on raw embeddings (plain baselines) or
on TCN outputs (CAIN and the X_TCN / X_MSIA backbone variants).

The sparse arch is the model's only TorchRec module (the trainer builds it from the table layout
and DMP shards it, TorchRec's DLRM pattern); everything after the lookup is one `DenseArch`.
Models return logits; `forward_with_losses` also returns the auxiliary loss (SIM's GSU loss; 0 for
the others), which `model.train_wrapper.CTRTrain` adds to the CTR loss.

Letters: R requests, B candidates, C candidates per request, L history length, S short-term
length, D embedding dim, P profile width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor

from contract.feature_spec import FeatureSpec
from model.batch import Batch
from model.layers.attention import ActivationUnitAttention, TargetAttention
from model.layers.embedding import EmbeddedBatch, EmbeddingLayout
from model.layers.mlp import OverArch
from model.layers.request_groups import RequestGroups
from model.layers.temporal_convolution import PersonalizedFilterGenerator
from model.tables import EmbeddingInit, table_layout


class ShortTermAttention(Enum):
    """Scorer of the short-term branch (unpublished in the CAIN paper)."""

    ACTIVATION_UNIT = "activation_unit"  # DIN's MLP unit (default)
    MULTI_HEAD = "multi_head"  # scaled dot product, `short_term_heads` heads


@dataclass(frozen=True)
class BodyConfig:
    """Settings of the shared body (paper §5.1.4: 64-dim embeddings, MLP 2048-1024, Xavier).

    Args:
        embedding_dim: D of every table (item ⊕ category makes the 2D candidate space).
        mlp_dims: hidden widths of the over arch.
        max_table_rows: cap on rows per embedding table (ids beyond are folded by modulo).
        use_side_features: append behavior/time-gap/watch-time embeddings to history values.
        short_term_attention: scorer of the short-term branch.
        short_term_heads: heads when that scorer is MULTI_HEAD.
        attention_hidden_dims: DIN activation-unit MLP (DIN code: 80-40), used wherever that
            unit appears.
        embedding_init: how the tables' rows start (`model.tables.EmbeddingInit`): TorchRec's
            ±sqrt(1/rows) per table, or every table at the largest table's bound (unpublished;
            the trainer builds the tables with it).
        split_over_arch: when requests have several candidates, compute the over arch's profile
            term once per request (`OverArch.forward_split`; the same function and parameters);
            False always concatenates the profile per candidate (the reference).
    """

    embedding_dim: int = 64
    mlp_dims: tuple[int, ...] = (2048, 1024)
    max_table_rows: int = 1 << 22
    use_side_features: bool = True
    short_term_attention: ShortTermAttention = ShortTermAttention.ACTIVATION_UNIT
    short_term_heads: int = 2
    attention_hidden_dims: tuple[int, ...] = (80, 40)
    embedding_init: EmbeddingInit = EmbeddingInit.PER_TABLE
    split_over_arch: bool = True


@dataclass
class LongTermOutput:
    """interest [R, C, Dl]; auxiliary_logits [R, C] for an auxiliary CTR loss (SIM's GSU) or None,
    weighted by auxiliary_weight in the total loss."""

    interest: torch.Tensor
    auxiliary_logits: torch.Tensor | None = None
    auxiliary_weight: float = 1.0


class ShortTermArch(nn.Module):
    """Target attention of each candidate over the last `short_len` history items."""

    def __init__(self, config: BodyConfig, key_dim: int, value_dim: int) -> None:
        super().__init__()
        self.attention: nn.Module
        if config.short_term_attention is ShortTermAttention.MULTI_HEAD:
            self.attention = TargetAttention(
                key_dim, key_dim, value_dim, num_heads=config.short_term_heads
            )
            self.output_dim = self.attention.output_dim
        else:
            self.attention = ActivationUnitAttention(key_dim, config.attention_hidden_dims)
            self.output_dim = value_dim

    def forward(self, queries: torch.Tensor, embedded: EmbeddedBatch) -> torch.Tensor:
        """queries [R, C, 2D] -> [R, C, Ds]."""
        values = embedded.short_history
        if embedded.short_side is not None:
            values = torch.cat([values, embedded.short_side], dim=-1)  # [R, S, 3D]
        return self.attention(queries, embedded.short_history, values, embedded.short_mask)


def initialize_xavier(dense_arch: nn.Module) -> None:
    """Xavier-uniform for every dense weight matrix, zero biases (paper §5.1.4); `DenseArch` then
    sets the logit's bias to the train split's log-odds when the spec knows it (unpublished).

    Only the dense arch: embedding tables keep TorchRec's initialisation (they live on the meta
    device until DMP materialises them). PEG generators then reset their output bias to a Xavier
    filter.
    """
    for name, parameter in dense_arch.named_parameters():
        if parameter.dim() >= 2:
            nn.init.xavier_uniform_(parameter)
        elif name.endswith("bias"):
            nn.init.zeros_(parameter)
    for module in dense_arch.modules():
        if isinstance(module, PersonalizedFilterGenerator):
            module.reset_output_bias()


class DenseArch(nn.Module):
    """Everything after the lookup: embedding layout -> short-term, long-term -> over arch.

    It holds no embedding table, so TorchRec's pipeline tracer treats it as one leaf call and
    finds the sparse arch's input without tracing the data-dependent padding here.
    """

    long_term_arch: nn.Module
    over_arch: OverArch

    def __init__(self, config: BodyConfig, spec: FeatureSpec) -> None:
        super().__init__()
        self.config = config
        self.embedding_layout = EmbeddingLayout(
            spec, config.embedding_dim, config.use_side_features
        )
        self.key_dim = self.embedding_layout.item_dim  # 2D
        self.side_dim = self.embedding_layout.side_dim  # D
        self.value_dim = self.key_dim + (self.side_dim if config.use_side_features else 0)
        self.profile_dim = sum(self.embedding_layout.profile_group_dims.values())
        self.short_term_arch = ShortTermArch(config, self.key_dim, self.value_dim)
        train = spec.splits.get("train")
        self.prior_positive_rate = train.positive_rate if train and train.samples else None

    def set_long_term_arch(self, long_term_arch: nn.Module) -> None:
        """Installs the model's long-term module and the over arch sized for its output."""
        self.long_term_arch = long_term_arch
        head_dim = (
            self.profile_dim
            + self.key_dim
            + self.short_term_arch.output_dim
            + long_term_arch.output_dim
        )
        self.over_arch = OverArch(head_dim, self.config.mlp_dims)
        initialize_xavier(self)
        if self.prior_positive_rate is not None:
            # Start at the base rate: from p = 0.5 the first hundreds of steps would only learn it.
            rate = min(max(self.prior_positive_rate, 1e-6), 1 - 1e-6)
            with torch.no_grad():
                self.over_arch.logit.bias.fill_(math.log(rate / (1 - rate)))

    def forward(
        self, looked_up: dict[str, JaggedTensor], batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits [B], auxiliary loss: a weighted scalar, 0 for models without one)."""
        embedded = self.embedding_layout(looked_up, batch.dense_features)
        groups = RequestGroups(batch.request_index, batch.num_requests)
        queries = groups.to_requests(embedded.candidates)  # [R, C, 2D]
        short_term = self.short_term_arch(queries, embedded)  # [R, C, Ds]
        long_term = self.long_term_arch(queries, embedded)  # [R, C, Dl]
        per_candidate = [
            embedded.candidates,  # [B, 2D]
            groups.to_candidates(short_term),  # [B, Ds]
            groups.to_candidates(long_term.interest),  # [B, Dl]
        ]
        profile = embedded.profile()  # [R, P]
        if self.config.split_over_arch and batch.num_samples > batch.num_requests:
            # The profile's share of the first layer once per request (same function).
            logits = self.over_arch.forward_split(
                profile, batch.request_index, torch.cat(per_candidate, dim=-1)
            )  # [B]
        else:
            features = torch.cat([groups.expand(profile), *per_candidate], dim=-1)  # [B, H]
            logits = self.over_arch(features)  # [B]
        auxiliary = logits.new_zeros(())
        if long_term.auxiliary_logits is not None:
            auxiliary_logits = groups.to_candidates(long_term.auxiliary_logits)  # [B]
            auxiliary = long_term.auxiliary_weight * F.binary_cross_entropy_with_logits(
                auxiliary_logits, batch.labels.to(auxiliary_logits.dtype)
            )
        return logits, auxiliary


class LifelongCTRModel(nn.Module):
    """sparse arch (the EmbeddingCollection it is given) -> dense arch (the shared body).

    A model passes its long-term module to `set_long_term_arch`;
    `long_term_arch(queries [R, C, 2D], embedded) -> LongTermOutput` is the only model-specific
    stage.

    Args:
        config: the model's resolved config (a BodyConfig subclass).
        spec: the feature spec (demographics, dense features, short_len).
        sparse_arch: the EmbeddingCollection with the tables of `model.tables.table_layout(spec,
            config.max_table_rows, config.use_side_features)` (or more) at `config.embedding_dim`
            (the trainer builds it; `build_model` builds one when none is given).
    """

    def __init__(
        self, config: BodyConfig, spec: FeatureSpec, sparse_arch: EmbeddingCollection
    ) -> None:
        super().__init__()
        check_sparse_arch(sparse_arch, spec, config)
        self.config = config
        self.sparse_arch = sparse_arch
        self.dense_arch = DenseArch(config, spec)

    @property
    def key_dim(self) -> int:
        return self.dense_arch.key_dim

    @property
    def value_dim(self) -> int:
        return self.dense_arch.value_dim

    @property
    def side_dim(self) -> int:
        return self.dense_arch.side_dim

    @property
    def profile_group_dims(self) -> dict[str, int]:
        return self.dense_arch.embedding_layout.profile_group_dims

    def set_long_term_arch(self, long_term_arch: nn.Module) -> None:
        self.dense_arch.set_long_term_arch(long_term_arch)

    def forward(self, batch: Batch) -> torch.Tensor:
        """-> logits [B]."""
        return self.forward_with_losses(batch)[0]

    def forward_with_losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits [B], auxiliary loss scalar: SIM's GSU loss, already weighted; else 0)."""
        looked_up = self.sparse_arch(batch.sparse_features)  # one lookup for every table
        return self.dense_arch(looked_up, batch)


def check_sparse_arch(sparse_arch: EmbeddingCollection, spec: FeatureSpec, config: BodyConfig):
    """The collection must serve every feature the spec implies, at the config's dim."""
    tables = sparse_arch.embedding_configs()
    served = {name for table in tables for name in table.feature_names}
    layout = table_layout(spec, config.max_table_rows, config.use_side_features)
    needed = set(layout.rows_for_feature())
    if not needed <= served:
        raise ValueError(f"sparse arch has no table for features {sorted(needed - served)}")
    dims = {table.embedding_dim for table in tables}
    if dims != {config.embedding_dim}:
        raise ValueError(
            f"sparse arch tables have dims {sorted(dims)}, the model's embedding_dim is "
            f"{config.embedding_dim}"
        )


class RawHistoryArch(nn.Module):
    """Runs a long-term attention on the raw history embeddings (plain baselines).

    `attention(queries, keys, values, mask, side) -> LongTermOutput`.
    """

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.attention = attention
        self.output_dim: int = attention.output_dim

    def forward(self, queries: torch.Tensor, embedded: EmbeddedBatch) -> LongTermOutput:
        values = embedded.history
        side = embedded.history_side
        if side is not None:
            values = torch.cat([values, side], dim=-1)  # [R, L, 3D]
        return self.attention(queries, embedded.history, values, embedded.history_mask, side)
