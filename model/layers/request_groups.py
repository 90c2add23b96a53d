"""Candidates grouped by request, so request-only work runs once per request.

A batch has R requests and B candidates; `request_index [B]` (non-decreasing) says which request
each candidate belongs to. Attention over a history needs queries next to that history: instead of
copying the history once per candidate ([B, L, D]), the candidates are laid out as [R, C, D]
(C = most candidates of any request, zero-padded), and every attention runs as a batched matmul
against the [R, L, D] history. With one candidate per request this costs nothing extra; with 100
candidates sharing one request it avoids 100 copies of the history.

Letters: R requests, B candidates, C candidates per request (padded), D any feature width.
"""

from __future__ import annotations

import torch


class RequestGroups:
    """Maps per-candidate tensors [B, ...] to per-request layout [R, C, ...] and back."""

    def __init__(self, request_index: torch.Tensor, num_requests: int) -> None:
        counts = torch.bincount(request_index, minlength=num_requests)  # [R]
        starts = torch.cumsum(counts, dim=0) - counts  # [R]
        self.request_index = request_index  # [B]
        self.slot = (
            torch.arange(request_index.numel(), device=request_index.device) - starts[request_index]
        )  # [B] position of each candidate within its request
        self.num_requests = num_requests
        self.max_candidates = int(counts.max().item()) if request_index.numel() else 0
        # True where a [R, C] slot holds a real candidate.
        self.mask = (
            torch.arange(self.max_candidates, device=request_index.device)[None, :]
            < (counts[:, None])
        )  # [R, C]

    def to_requests(self, per_candidate: torch.Tensor) -> torch.Tensor:
        """[B, ...] -> [R, C, ...], zeros in the padded slots."""
        out = per_candidate.new_zeros(
            (self.num_requests, self.max_candidates, *per_candidate.shape[1:])
        )
        out[self.request_index, self.slot] = per_candidate
        return out

    def to_candidates(self, per_slot: torch.Tensor) -> torch.Tensor:
        """[R, C, ...] -> [B, ...]."""
        return per_slot[self.request_index, self.slot]

    def expand(self, per_request: torch.Tensor) -> torch.Tensor:
        """[R, ...] -> [B, ...]: a request feature copied to each of its candidates."""
        return per_request[self.request_index]
