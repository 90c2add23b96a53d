"""Multi-layer perceptron: Linear + ReLU per layer (torchrec `modules/mlp.py` without the extras).

The paper's head is 2048-1024 over the concatenated features, followed by a 1-unit logit layer.
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
