"""Multi-layer perceptron: Linear + ReLU per layer (torchrec `modules/mlp.py` without the extras).

The paper's head is 2048-1024 over the concatenated features, followed by a 1-unit logit layer.

`OverArch.forward_split` computes the same head when part of the features is per request (the
profile): W·[p, x] = W_p·p + W_x·x, so W_p·p runs once per request and is gathered per candidate
(one 100-candidate request: one row instead of 100). Equal to `forward` on the concatenation
(tested, outputs and gradients); the parameters are the same.

Letters: N rows (candidates), R requests, P per-request width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """[N, in_dim] -> [N, dims[-1]] (or in_dim when dims is empty)."""

    def __init__(self, in_dim: int, dims: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in dims:
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        self.layers = nn.Sequential(*layers)
        self.output_dim = in_dim

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.layers(inputs)


class OverArch(nn.Module):
    """MLP head ending in one logit: [N, in_dim] -> [N]."""

    def __init__(self, in_dim: int, dims: Sequence[int]) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, dims)
        self.logit = nn.Linear(self.mlp.output_dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit(self.mlp(features)).squeeze(-1)

    def forward_split(
        self, per_request: torch.Tensor, request_index: torch.Tensor, per_candidate: torch.Tensor
    ) -> torch.Tensor:
        """= forward(cat([per_request[request_index], per_candidate], -1)).

        per_request [R, P]; request_index [N]; per_candidate [N, in_dim − P] -> [N]."""
        if len(self.mlp.layers) == 0:  # no hidden layer: nothing to split
            return self.forward(torch.cat([per_request[request_index], per_candidate], dim=-1))
        first = self.mlp.layers[0]
        assert isinstance(first, nn.Linear)
        width = per_request.shape[-1]
        request_term = per_request @ first.weight[:, :width].T  # [R, H1]
        hidden = torch.addmm(first.bias, per_candidate, first.weight[:, width:].T)  # [N, H1]
        hidden = hidden + request_term[request_index]
        return self.logit(self.mlp.layers[1:](hidden)).squeeze(-1)
