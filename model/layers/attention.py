"""Target attention: candidates (queries) attend over a request's history (keys, values).

Two scorers, both masked with -inf before the softmax so padding never gets weight:

- `TargetAttention`: scaled dot product with W_Q, W_K, W_V and any number of heads (SIM/ETA/TWIN
  ESU, CAIN's auxiliary attention eqs. 8-9, the short-term branch).
- `ActivationUnitAttention`: DIN's MLP over [q, k, q-k, q⊙k].

Request-only work runs once per request: keys and values are projected on the [R, L, D] history,
never on per-candidate copies. Queries come grouped by request ([R, C, D], see
`request_groups.py`), so scoring is one batched matmul per request.

Both scorers also attend over a per-candidate *selection* of the history (after a top-k), given
as indices [R, C, K] into the history. `TargetAttention.forward_selected` either projects the whole
history once and gathers the projected rows, or gathers the raw rows and projects only those —
whichever touches fewer rows (C·K vs L); the two are equal, checked by a test. When many
candidates share a history (C·K ≥ L, serving) the `DENSE` selection path instead scores every
candidate against all L projected rows (one GEMM), gathers the K scores, and pools with the K
weights scattered back into a zero [.., L] row: the same sums, without moving C·K rows of width
H·E through an index (about 12 ms of a 100-candidate L=1000 LAP request before, ≈1.5 ms now).

Letters: R requests, C candidates per request, L history length, K selected items, H heads,
Dq/Dk/Dv query/key/value widths, E head width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

from model.layers.retrieval import gather_rows


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over `dim` with masked-out entries at -inf; rows with nothing valid give zeros.

    A row with no valid entry would be NaN after the softmax (and poison the backward), so such
    rows are softmaxed over their padding and then zeroed.
    """
    mask = mask.expand_as(scores)
    any_valid = mask.any(dim=dim, keepdim=True)
    usable = mask | ~any_valid
    weights = torch.softmax(scores.masked_fill(~usable, float("-inf")), dim=dim)
    return weights * any_valid


def normalize_scores(
    scores: torch.Tensor, mask: torch.Tensor, use_softmax: bool, dim: int = -1
) -> torch.Tensor:
    """Attention weights: masked softmax, or raw scores with padding zeroed (DIN paper, eq. 9)."""
    if use_softmax:
        return masked_softmax(scores, mask, dim=dim)
    return scores * mask.expand_as(scores)


class AttentionPath(Enum):
    """Where TargetAttention applies W_K / W_V over a shared history (equal results)."""

    AUTO = "auto"  # the cheaper of the two for the batch's shape
    PROJECT_HISTORY = "project_history"
    FOLD_INTO_QUERIES = "fold_into_queries"


class SelectionPath(Enum):
    """How attention over per-candidate selections [R, C, K] reaches the rows (equal results)."""

    AUTO = "auto"  # DENSE when C·K ≥ L (candidates share the history), else GATHER
    GATHER = "gather"  # gather the K rows per candidate (projected before or after)
    DENSE = "dense"  # score all L rows, gather K scores; scatter K weights back, pool all L


def pool_shared(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """weights [R, C, H, L], values [R, L, H, E] -> [R, C, H·E] (one matmul per request·head)."""
    pooled = weights.permute(0, 2, 1, 3) @ values.permute(0, 2, 1, 3)  # [R, H, C, E]
    return pooled.permute(0, 2, 1, 3).flatten(-2)


def score_selected(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """queries [R, C, H, E], keys [R, C, K, H, E] -> [R, C, H, K]."""
    return (queries[:, :, :, None, :] @ keys.permute(0, 1, 3, 4, 2)).squeeze(3)


def pool_selected(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """weights [R, C, H, K], values [R, C, K, H, E] -> [R, C, H·E]."""
    pooled = weights[:, :, :, None, :] @ values.permute(0, 1, 3, 2, 4)  # [R, C, H, 1, E]
    return pooled.squeeze(3).flatten(-2)


class TargetAttention(nn.Module):
    """Multi-head scaled dot-product target attention.

    Args:
        query_dim, key_dim, value_dim: input widths.
        num_heads: H.
        head_dim: E, the inner dimension d of eq. 8 (default key_dim // H).
        use_softmax: normalise scores with a masked softmax (CAIN eq. 8 has none: a switch).
        project_values: apply W_V (eq. 9); off pools the raw values per head.

    Output: [R, C, H * E] (or [R, C, H * Dv] without W_V).
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        value_dim: int,
        num_heads: int = 1,
        head_dim: int | None = None,
        use_softmax: bool = True,
        project_values: bool = True,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or max(key_dim // num_heads, 1)
        self.use_softmax = use_softmax
        self.query_projection = nn.Linear(query_dim, num_heads * self.head_dim, bias=False)
        self.key_projection = nn.Linear(key_dim, num_heads * self.head_dim, bias=False)
        self.value_projection = (
            nn.Linear(value_dim, num_heads * self.head_dim, bias=False) if project_values else None
        )
        self.value_head_dim = self.head_dim if project_values else value_dim
        self.output_dim = num_heads * self.value_head_dim
        self.path = AttentionPath.AUTO
        self.selection_path = SelectionPath.AUTO

    def project_queries(self, queries: torch.Tensor) -> torch.Tensor:
        """[R, C, Dq] -> [R, C, H, E], pre-scaled by 1/sqrt(E)."""
        projected = self.query_projection(queries) * self.head_dim**-0.5
        return projected.unflatten(-1, (self.num_heads, self.head_dim))

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """[..., Dk] -> [..., H, E]."""
        return self.key_projection(keys).unflatten(-1, (self.num_heads, self.head_dim))

    def project_values(self, values: torch.Tensor) -> torch.Tensor:
        """[..., Dv] -> [..., H, E] (or the raw values repeated per head)."""
        if self.value_projection is None:
            return values.unsqueeze(-2).expand(*values.shape[:-1], self.num_heads, values.shape[-1])
        return self.value_projection(values).unflatten(-1, (self.num_heads, self.value_head_dim))

    def _project_history(self, num_candidates: int, length: int, in_dim: int) -> bool:
        """Whether projecting the L history rows beats folding W into the C queries.

        Scores are linear in W_K, so q·(W_K k) = (W_Kᵀ q)·k: with few candidates per request
        (training) folding W_K into the queries skips projecting all L rows; with many candidates
        sharing a history (serving) projecting the history once is cheaper. Same for W_V, which
        commutes with the weighted sum. Both give the same result (tested).
        """
        if self.path is not AttentionPath.AUTO:
            return self.path is AttentionPath.PROJECT_HISTORY
        width = self.num_heads * self.head_dim
        project_history = length * in_dim * width + num_candidates * length * width
        fold_into_queries = (
            num_candidates * width * in_dim + num_candidates * self.num_heads * length * in_dim
        )
        return project_history <= fold_into_queries

    def scores(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Shared history. queries [R, C, Dq], keys [R, L, Dk] -> scores [R, C, H, L]."""
        queries_by_head = self.project_queries(queries).permute(0, 2, 1, 3)  # [R, H, C, E]
        if self._project_history(queries.shape[1], keys.shape[1], keys.shape[-1]):
            keys_by_head = self.project_keys(keys).permute(0, 2, 3, 1)  # [R, H, E, L]
            return (queries_by_head @ keys_by_head).permute(0, 2, 1, 3)  # [R, C, H, L]
        key_weight = self.key_projection.weight.view(
            self.num_heads, self.head_dim, -1
        )  # [H, E, Dk]
        folded = queries_by_head @ key_weight  # [R, H, C, Dk]: W_Kᵀ q per head
        return (folded @ keys.transpose(1, 2)[:, None]).permute(0, 2, 1, 3)  # [R, C, H, L]

    def pool(self, weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """weights [R, C, H, L], values [R, L, Dv] -> [R, C, H·E]."""
        if self.value_projection is None or self._project_history(
            weights.shape[1], values.shape[1], values.shape[-1]
        ):
            return pool_shared(weights, self.project_values(values))
        pooled_raw = weights.permute(0, 2, 1, 3) @ values[:, None]  # [R, H, C, Dv]
        value_weight = self.value_projection.weight.view(self.num_heads, self.head_dim, -1)
        pooled = pooled_raw @ value_weight.transpose(1, 2)  # [R, H, C, E]: W_V Σ w v
        return pooled.permute(0, 2, 1, 3).flatten(-2)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        score_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """queries [R, C, Dq]; keys [R, L, Dk]; values [R, L, Dv]; mask [R, L];
        score_bias [R, L, H] or None -> [R, C, H*E]."""
        scores = self.scores(queries, keys)  # [R, C, H, L]
        if score_bias is not None:
            scores = scores + score_bias.permute(0, 2, 1)[:, None]
        weights = normalize_scores(scores, mask[:, None, None, :], self.use_softmax)
        return self.pool(weights, values)  # [R, C, H*E]

    def project_selected(
        self, keys: torch.Tensor, values: torch.Tensor, indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected keys and values of the selected rows: [R, C, K, H, E] each.

        keys [R, L, Dk]; values [R, L, Dv]; indices [R, C, K]. When keys and values are one tensor
        (a body without side features) and the rows are gathered before they are projected, they
        are gathered once: one index, and one scatter of its gradient into a zero [R, L, D]
        history instead of two plus their sum.
        """
        if keys is values and indices.shape[1] * indices.shape[2] < keys.shape[1]:
            rows = gather_rows(keys, indices)  # [R, C, K, Dk]
            return self.project_keys(rows), self.project_values(rows)
        return (
            _project_rows(keys, indices, self.project_keys),
            _project_rows(values, indices, self.project_values),
        )

    def _dense_selection(self, indices: torch.Tensor, length: int) -> bool:
        if self.selection_path is not SelectionPath.AUTO:
            return self.selection_path is SelectionPath.DENSE
        return indices.shape[1] * indices.shape[2] >= length

    def scores_at(
        self, queries: torch.Tensor, keys: torch.Tensor, indices: torch.Tensor
    ) -> torch.Tensor:
        """Scores of the selected rows. queries [R, C, Dq]; keys [R, L, Dk]; indices [R, C, K]
        -> [R, C, H, K]."""
        if self._dense_selection(indices, keys.shape[1]):
            scores = self.scores(queries, keys)  # [R, C, H, L]
            return scores.gather(-1, indices[:, :, None, :].expand(-1, -1, self.num_heads, -1))
        projected_keys = _project_rows(keys, indices, self.project_keys)  # [R, C, K, H, E]
        return score_selected(self.project_queries(queries), projected_keys)

    def pool_at(
        self, weights: torch.Tensor, values: torch.Tensor, indices: torch.Tensor
    ) -> torch.Tensor:
        """Σ_k weight_k · W_V value_{index_k}. weights [R, C, H, K]; values [R, L, Dv];
        indices [R, C, K] -> [R, C, H·E]."""
        if self._dense_selection(indices, values.shape[1]):
            # scatter_add: a repeated index sums its weights, as the gathered sum would.
            dense = weights.new_zeros((*weights.shape[:3], values.shape[1])).scatter_add(
                -1, indices[:, :, None, :].expand_as(weights), weights
            )  # [R, C, H, L]
            return self.pool(dense, values)
        projected_values = _project_rows(values, indices, self.project_values)
        return pool_selected(weights, projected_values)  # [R, C, K, H, E] -> [R, C, H·E]

    def attend_selected(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        indices: torch.Tensor,
        valid: torch.Tensor,
        score_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward_selected` that also returns the weights: ([R, C, H, K], [R, C, H·E])."""
        dense = self._dense_selection(indices, keys.shape[1])
        if dense:
            scores = self.scores_at(queries, keys, indices)  # [R, C, H, K]
        else:  # = scores_at / pool_at's gathering path, the rows gathered once for both
            projected_keys, projected_values = self.project_selected(keys, values, indices)
            scores = score_selected(self.project_queries(queries), projected_keys)
        if score_bias is not None:
            scores = scores + gather_rows(score_bias, indices).permute(0, 1, 3, 2)
        weights = normalize_scores(scores, valid[:, :, None, :], self.use_softmax)
        if dense:
            return weights, self.pool_at(weights, values, indices)
        return weights, pool_selected(weights, projected_values)  # [R, C, H·E]

    def forward_selected(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        indices: torch.Tensor,
        valid: torch.Tensor,
        score_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention over per-candidate selections of the history.

        queries [R, C, Dq]; keys [R, L, Dk]; values [R, L, Dv]; indices, valid [R, C, K];
        score_bias [R, L, H] or None -> [R, C, H*E].
        """
        return self.attend_selected(queries, keys, values, indices, valid, score_bias)[1]


def _project_rows(
    rows: torch.Tensor,
    indices: torch.Tensor,
    project: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """project(rows) at indices: rows [R, L, D]; indices [R, C, K] -> [R, C, K, H, E]."""
    if indices.shape[1] * indices.shape[2] >= rows.shape[1]:
        # Many candidates share the history: project it once, then gather projected rows.
        return gather_rows(project(rows), indices)
    return project(gather_rows(rows, indices))


class LastDimPReLU(nn.Module):
    """PReLU with one slope per feature of the *last* dimension (`nn.PReLU` uses dim 1)."""

    def __init__(self, width: int, initial_slope: float = 0.25) -> None:
        super().__init__()
        self.slope = nn.Parameter(torch.full((width,), initial_slope))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        # F.prelu treats dim 1 of a 2-d input as the channels: one fused kernel instead of
        # compare + multiply + where (equal to torch.where(x >= 0, x, slope·x)).
        width = inputs.shape[-1]
        return F.prelu(inputs.reshape(-1, width), self.slope).view(inputs.shape)


class ActivationUnitAttention(nn.Module):
    """DIN's activation unit: score = MLP([q, k, q−k, q⊙k]); output = Σ score · value.

    Args:
        key_dim: width of queries and keys (they must share a space).
        hidden_dims: the scoring MLP (DIN's released code: 80-40), PReLU between layers.
        use_softmax: normalise scores (DIN paper: off; its released code: on).
        fast: split the first layer so the query-only and key-only terms are computed once per
            candidate and once per history item; only the q⊙k term is per pair. Equal to the
            concatenating reference (tested).

    Output: [R, C, Dv].
    """

    def __init__(
        self,
        key_dim: int,
        hidden_dims: Sequence[int] = (80, 40),
        use_softmax: bool = True,
        fast: bool = True,
    ) -> None:
        super().__init__()
        self.key_dim = key_dim
        self.use_softmax = use_softmax
        self.fast = fast
        self.first = nn.Linear(4 * key_dim, hidden_dims[0])
        rest: list[nn.Module] = [LastDimPReLU(hidden_dims[0])]
        for width_in, width_out in zip(hidden_dims[:-1], hidden_dims[1:], strict=True):
            rest += [nn.Linear(width_in, width_out), LastDimPReLU(width_out)]
        # Under a softmax a constant shift of the scores changes nothing, so the last bias would
        # never receive a gradient: it exists only for unnormalised scores.
        rest.append(nn.Linear(hidden_dims[-1], 1, bias=not use_softmax))
        self.rest = nn.Sequential(*rest)

    def _first_layer_reference(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        if keys.dim() == 3:  # shared history [R, L, D] -> per pair [R, C, L, D]
            keys = keys[:, None].expand(-1, queries.shape[1], -1, -1)
        queries = queries[:, :, None].expand_as(keys)
        return self.first(torch.cat([queries, keys, queries - keys, queries * keys], dim=-1))

    def _first_layer_fast(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        weight_q, weight_k, weight_diff, weight_product = self.first.weight.chunk(4, dim=-1)
        query_term = queries @ (weight_q + weight_diff).T + self.first.bias  # [R, C, H1]
        key_term = keys @ (weight_k - weight_diff).T  # [R, L, H1] or [R, C, K, H1]
        if keys.dim() == 3:
            num_requests, num_candidates = queries.shape[:2]
            length, hidden = keys.shape[1], weight_product.shape[0]
            if length < num_candidates:
                # Scale the (fewer) history rows: one GEMM per request, [C, D] x [D, L·H1],
                # already in [R, C, L, H1] order.
                scaled_keys = keys[:, :, None, :] * weight_product  # [R, L, H1, D]
                product_term = (queries @ scaled_keys.flatten(1, 2).transpose(1, 2)).view(
                    num_requests, num_candidates, length, hidden
                )  # [R, C, L, H1]
            else:
                scaled = queries[:, :, None, :] * weight_product  # [R, C, H1, D]
                # One GEMM per request: [L, D] x [D, C·H1].
                product_term = (
                    (keys @ scaled.flatten(1, 2).transpose(1, 2))
                    .view(num_requests, length, num_candidates, hidden)
                    .permute(0, 2, 1, 3)
                )  # [R, C, L, H1]
            return query_term[:, :, None] + key_term[:, None] + product_term
        if keys.shape[2] <= weight_product.shape[0]:
            # Fewer selected keys than hidden units: (q ⊙ k) · W_product as one plain GEMM.
            product_term = (keys * queries[:, :, None, :]) @ weight_product.T  # [R, C, K, H1]
        else:
            scaled = queries[:, :, None, :] * weight_product  # [R, C, H1, D]
            product_term = keys @ scaled.transpose(-1, -2)  # [R, C, K, H1]
        return query_term[:, :, None] + key_term + product_term

    def scores(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """queries [R, C, D]; keys [R, L, D] or [R, C, K, D] -> [R, C, L] (or [R, C, K])."""
        hidden = (
            self._first_layer_fast(queries, keys)
            if self.fast
            else self._first_layer_reference(queries, keys)
        )
        return self.rest(hidden).squeeze(-1)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """queries [R, C, D]; keys [R, L, D] or [R, C, K, D]; values [R, L, Dv] or
        [R, C, K, Dv]; mask [R, L] or [R, C, K] -> [R, C, Dv]."""
        if mask.dim() == 2:
            mask = mask[:, None, :]
        weights = normalize_scores(self.scores(queries, keys), mask, self.use_softmax)
        if values.dim() == 3:
            return weights @ values  # [R, C, L] x [R, L, Dv]
        return (weights[:, :, None, :] @ values).squeeze(2)  # [R, C, 1, K] x [R, C, K, Dv]
