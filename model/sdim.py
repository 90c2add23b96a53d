"""SDIM (Cao et al., CIKM 2022): hash-bucket sampling instead of retrieval and attention.

    hash:       `num_bits` m SimHash bits of the keys, grouped into m / τ signatures of τ bits
                (`bits_per_signature`); each signature puts an item into one of 2^τ buckets
    per request: the sum of the history values in every (signature, bucket)   [R, m/τ, 2^τ, Dv]
    candidate:   read the bucket each of its signatures points at, L2-normalise each sum, average
                 over signatures                                               -> [R, C, Dv]

No top-k and no per-candidate pass over the history: the bucket sums are request-only work. The
projection is fixed (not trained); gradients reach the embeddings through the sums. SDIM itself
has no dense parameters. With few candidates per request (training: one) the candidates' sums
are cheaper computed directly (`SumPath.CANDIDATE_MATCHES`, one matmul of match indicators with
the history) than through every bucket: the same sums, chosen by `sum_path` (AUTO picks the
direct path when a request has fewer candidates than buckets per signature).

`with_esu` switches to the "SDIM + ESU" variant TWIN's paper compares: the number of colliding
signatures is the GSU score, the top `top_k` go to a multi-head ESU (`num_heads`).

Switches: `num_bits` m (48), `bits_per_signature` τ (3), `hash_seed` (0), `with_esu` (False),
`top_k` (100), `num_heads` (4).

Letters: R requests, C candidates per request, L history length, M bits, G = M/τ signatures,
N = 2^τ buckets, Dk key width, Dv value width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingCollection

from contract.feature_spec import FeatureSpec
from model.layers.attention import TargetAttention
from model.layers.retrieval import (
    SimHash,
    bucket_sums,
    masked_top_k,
    matched_sums,
    read_buckets,
    signature_ids,
)
from model.lifelong_model import BodyConfig, LifelongCTRModel, LongTermOutput, RawHistoryArch


class SumPath(Enum):
    """How SDIM reaches each candidate's bucket sums (equal results)."""

    AUTO = "auto"  # CANDIDATE_MATCHES when a request has fewer candidates than 2^τ buckets
    BUCKET_SUMS = "bucket_sums"  # every (signature, bucket) sum once per request, then read
    CANDIDATE_MATCHES = "candidate_matches"  # per candidate: match indicators [L] x history


@dataclass(frozen=True)
class SDIMAttentionConfig:
    num_bits: int = 48
    bits_per_signature: int = 3
    hash_seed: int = 0
    with_esu: bool = False
    top_k: int = 100
    num_heads: int = 4


class SDIMAttention(nn.Module):
    """(queries [R, C, Dk], keys [R, L, Dk], values [R, L, Dv], mask [R, L], side)
    -> LongTermOutput [R, C, Dv] (or [R, C, H·E] with the ESU)."""

    def __init__(self, config: SDIMAttentionConfig, key_dim: int, value_dim: int) -> None:
        super().__init__()
        if config.num_bits % config.bits_per_signature:
            raise ValueError(
                f"sdim.num_bits={config.num_bits} is not a multiple of "
                f"sdim.bits_per_signature={config.bits_per_signature}"
            )
        self.config = config
        self.hash = SimHash(key_dim, config.num_bits, config.hash_seed)
        self.esu = (
            TargetAttention(key_dim, key_dim, value_dim, num_heads=config.num_heads)
            if config.with_esu
            else None
        )
        self.output_dim = self.esu.output_dim if self.esu is not None else value_dim
        self.sum_path = SumPath.AUTO

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        side: torch.Tensor | None = None,
    ) -> LongTermOutput:
        tau = self.config.bits_per_signature
        history_ids = signature_ids(self.hash(keys), tau)  # [R, L, G], once per request
        query_ids = signature_ids(self.hash(queries), tau)  # [R, C, G]
        if self.esu is not None:
            collisions = (query_ids[:, :, None, :] == history_ids[:, None, :, :]).sum(-1)
            index, valid = masked_top_k(collisions.to(keys.dtype), mask, self.config.top_k)
            return LongTermOutput(self.esu.forward_selected(queries, keys, values, index, valid))
        if self._candidate_matches(query_ids.shape[1], 2**tau):
            picked = matched_sums(history_ids, query_ids, values, mask)  # [R, C, G, Dv]
        else:
            sums = bucket_sums(history_ids, values, mask, 2**tau)  # [R, G, N, Dv]
            picked = read_buckets(sums, query_ids)  # [R, C, G, Dv]
        return LongTermOutput(F.normalize(picked, dim=-1).mean(2))  # [R, C, Dv]

    def _candidate_matches(self, num_candidates: int, num_buckets: int) -> bool:
        if self.sum_path is not SumPath.AUTO:
            return self.sum_path is SumPath.CANDIDATE_MATCHES
        return num_candidates < num_buckets


@dataclass(frozen=True)
class SDIMConfig(BodyConfig):
    sdim: SDIMAttentionConfig = field(default_factory=SDIMAttentionConfig)


class SDIM(LifelongCTRModel):
    """Shared body + SDIM over the raw history."""

    def __init__(
        self, config: SDIMConfig, spec: FeatureSpec, sparse_arch: EmbeddingCollection
    ) -> None:
        super().__init__(config, spec, sparse_arch)
        attention = SDIMAttention(config.sdim, self.key_dim, self.value_dim)
        self.set_long_term_arch(RawHistoryArch(attention))
