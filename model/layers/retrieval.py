"""Retrieval over a long history: masked top-k, SimHash, and SDIM's bucket sampling.

- `masked_top_k` never selects padding: padded positions score -inf, and when a history has fewer
  than k real items the extra picks are returned with `valid = False` so attention masks them.
- `SimHash` is a *fixed* random projection (a buffer, not a parameter): ETA and SDIM hash the same
  embeddings the attention uses, and the hash itself is not differentiated.
- `bucket_sums` is SDIM's sampling: each history item falls into one bucket per signature, the
  bucket sums are computed once per request, and each candidate reads the buckets its own
  signatures point at — no per-candidate pass over the history. `matched_sums` computes the same
  candidate sums directly, as one matmul per request of the candidates' match indicators with the
  history: cheaper when a request has few candidates (training), since it skips the scatter into
  every bucket and its backward (equal results, tested).

Letters: R requests, C candidates per request, L history length, K selected, M hash bits,
G signatures (M / T), T bits per signature, D width.
"""

from __future__ import annotations

import torch
from torch import nn


def gather_rows(rows: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """rows [R, L, *F], indices [R, C, K] (positions in L) -> [R, C, K, *F].

    One `torch.gather` along L (the index expanded over F, never materialised). Its backward
    scatter-adds into a fresh [R, L, F] zero tensor, which autograd then accumulates in place with
    the history's other gradients (e.g. the short-term window's). Advanced indexing
    (`flat[indices + offsets]`, the same values) returned its gradient as a view of a flattened
    buffer, and autograd sums into a view out of place: a new [R, L, F] tensor per extra gradient.
    For the same reason 3-d rows are not reshaped (a reshape's backward is such a view).
    """
    num_requests, num_candidates, num_selected = indices.shape
    features = rows.shape[2:]
    flat = rows if rows.dim() == 3 else rows.reshape(num_requests, rows.shape[1], -1)  # [R, L, F]
    index = indices.reshape(num_requests, num_candidates * num_selected, 1)  # [R, C*K, 1]
    picked = torch.gather(flat, 1, index.expand(-1, -1, flat.shape[-1]))  # [R, C*K, F]
    return picked.view(num_requests, num_candidates, num_selected, *features)


def masked_top_k(
    scores: torch.Tensor, mask: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k positions per candidate among real items.

    scores [R, C, L]; mask [R, L] or [R, C, L] -> indices [R, C, K], valid [R, C, K] with
    K = min(k, L); `valid` is False exactly for picks that landed on padding.
    """
    if mask.dim() == 2:
        mask = mask[:, None, :].expand_as(scores)
    k = min(k, scores.shape[-1])
    masked = scores.detach().masked_fill(~mask, float("-inf"))  # selection is not differentiated
    indices = masked.topk(k, dim=-1).indices  # [R, C, K]
    valid = torch.gather(mask, -1, indices)
    return indices, valid


class SimHash(nn.Module):
    """Sign of a fixed Gaussian random projection: [..., D] -> ±1 codes [..., M] (float).

    The projection is drawn from `seed` (same seed -> same hashes) and registered as a buffer, so
    it is saved in checkpoints but never trained: the documented exception to "every parameter
    receives a gradient".
    """

    def __init__(self, dim: int, num_bits: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(dim, num_bits, generator=generator))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            projected = inputs.detach() @ self.projection
            return torch.where(projected >= 0, 1.0, -1.0).to(inputs.dtype)


def hamming_similarity(query_codes: torch.Tensor, history_codes: torch.Tensor) -> torch.Tensor:
    """Number of equal bits. query_codes [R, C, M], history_codes [R, L, M] (±1) -> [R, C, L]."""
    num_bits = query_codes.shape[-1]
    return (query_codes @ history_codes.transpose(1, 2) + num_bits) / 2


def signature_ids(codes: torch.Tensor, bits_per_signature: int) -> torch.Tensor:
    """±1 codes [..., M] -> bucket id per signature [..., G] in [0, 2^T), G = M / T."""
    bits = (codes > 0).long().unflatten(-1, (-1, bits_per_signature))  # [..., G, T]
    powers = 2 ** torch.arange(bits_per_signature, device=codes.device)
    return (bits * powers).sum(-1)


def bucket_sums(
    bucket_ids: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, num_buckets: int
) -> torch.Tensor:
    """Per request, the sum of the values in each (signature, bucket).

    bucket_ids [R, L, G]; values [R, L, D]; mask [R, L] -> [R, G, num_buckets, D].
    """
    num_requests, length, num_signatures = bucket_ids.shape
    signature = torch.arange(num_signatures, device=bucket_ids.device)
    request = torch.arange(num_requests, device=bucket_ids.device)
    slot = (request[:, None, None] * num_signatures + signature) * num_buckets + bucket_ids
    masked_values = (values * mask[:, :, None]).unsqueeze(2).expand(-1, -1, num_signatures, -1)
    sums = values.new_zeros((num_requests * num_signatures * num_buckets, values.shape[-1]))
    sums = sums.index_add(0, slot.reshape(-1), masked_values.reshape(-1, values.shape[-1]))
    return sums.view(num_requests, num_signatures, num_buckets, values.shape[-1])


def read_buckets(sums: torch.Tensor, query_bucket_ids: torch.Tensor) -> torch.Tensor:
    """sums [R, G, N, D]; query_bucket_ids [R, C, G] -> the candidates' buckets [R, C, G, D]."""
    num_requests, num_signatures = sums.shape[:2]
    index = query_bucket_ids.permute(0, 2, 1)  # [R, G, C]
    picked = torch.gather(sums, 2, index[..., None].expand(-1, -1, -1, sums.shape[-1]))
    return picked.permute(0, 2, 1, 3)  # [R, C, G, D]


def matched_sums(
    history_bucket_ids: torch.Tensor,
    query_bucket_ids: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """= read_buckets(bucket_sums(history_bucket_ids, values, mask, N), query_bucket_ids).

    history_bucket_ids [R, L, G]; query_bucket_ids [R, C, G]; values [R, L, D]; mask [R, L]
    -> [R, C, G, D]: per candidate and signature, the sum of the real history values that share
    the candidate's bucket.
    """
    num_requests, num_candidates, num_signatures = query_bucket_ids.shape
    same_bucket = query_bucket_ids[:, :, :, None] == history_bucket_ids.permute(0, 2, 1)[:, None]
    weights = (same_bucket & mask[:, None, None, :]).to(values.dtype)  # [R, C, G, L]
    sums = weights.flatten(1, 2) @ values  # [R, C·G, L] x [R, L, D]
    return sums.view(num_requests, num_candidates, num_signatures, values.shape[-1])


def unique_union(indices: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge selections that may repeat a position (e.g. one top-k per head), keeping each once.

    indices, valid [R, C, N] -> sorted indices [R, C, N], valid [R, C, N] with repeats marked
    invalid (TWIN's "unique union across heads").
    """
    # Invalid picks sort last and never count as a repeat of a valid one.
    sentinel = torch.iinfo(indices.dtype).max
    keyed = torch.where(valid, indices, torch.full_like(indices, sentinel))
    ordered, order = keyed.sort(dim=-1)
    repeat = torch.zeros_like(valid)
    repeat[..., 1:] = ordered[..., 1:] == ordered[..., :-1]
    sorted_valid = torch.gather(valid, -1, order) & ~repeat
    return torch.gather(indices, -1, order), sorted_valid
