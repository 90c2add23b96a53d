"""ETA (Chen et al., 2022): SimHash retrieval on the ESU's own embeddings, then multi-head ESU.

    hash:  a fixed random projection (SimHash, `num_bits` m) of the *same* key embeddings the
           ESU attends over — computed once per request for the history, once per candidate
    GSU:   top `top_k` history items by Hamming similarity to the candidate's hash
    ESU:   multi-head target attention over those finalists                     -> [R, C, H·E]

The hashes are recomputed every step from the current embeddings and are not differentiated (the
projection is a buffer; the embeddings learn through the ESU only).

Switches: `num_bits` (64; the issue's 32-64), `top_k` (100), `num_heads` (4), `hash_seed` (0).

Letters: R requests, C candidates per request, L history length, M hash bits, K top_k,
H heads, E head width, Dk key width, Dv value width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingCollection

from contract.feature_spec import FeatureSpec
from model.layers.attention import TargetAttention
from model.layers.retrieval import SimHash, hamming_similarity, masked_top_k
from model.lifelong_model import BodyConfig, LifelongCTRModel, LongTermOutput, RawHistoryArch


@dataclass(frozen=True)
class ETAAttentionConfig:
    num_bits: int = 64
    top_k: int = 100
    num_heads: int = 4
    hash_seed: int = 0


class ETAAttention(nn.Module):
    """(queries [R, C, Dk], keys [R, L, Dk], values [R, L, Dv], mask [R, L], side)
    -> LongTermOutput [R, C, H·E]."""

    def __init__(self, config: ETAAttentionConfig, key_dim: int, value_dim: int) -> None:
        super().__init__()
        self.config = config
        self.hash = SimHash(key_dim, config.num_bits, config.hash_seed)
        self.esu = TargetAttention(key_dim, key_dim, value_dim, num_heads=config.num_heads)
        self.output_dim = self.esu.output_dim

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        side: torch.Tensor | None = None,
    ) -> LongTermOutput:
        history_codes = self.hash(keys)  # [R, L, M], once per request
        query_codes = self.hash(queries)  # [R, C, M]
        similarity = hamming_similarity(query_codes, history_codes)  # [R, C, L]
        index, valid = masked_top_k(similarity, mask, self.config.top_k)  # [R, C, K]
        return LongTermOutput(self.esu.forward_selected(queries, keys, values, index, valid))


@dataclass(frozen=True)
class ETAConfig(BodyConfig):
    eta: ETAAttentionConfig = field(default_factory=ETAAttentionConfig)


class ETA(LifelongCTRModel):
    """Shared body + ETA over the raw history."""

    def __init__(
        self, config: ETAConfig, spec: FeatureSpec, sparse_arch: EmbeddingCollection
    ) -> None:
        super().__init__(config, spec, sparse_arch)
        attention = ETAAttention(config.eta, self.key_dim, self.value_dim)
        self.set_long_term_arch(RawHistoryArch(attention))
