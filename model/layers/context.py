"""Context extractors the CAIN paper compares with its TCN (Table 1): a GRU and self-attention.

Both map the history [R, L, Din] to context-aware representations [R, L, Dout] with the same
(inputs, mask, profile) -> (outputs, mask) interface as `TemporalConvolution`, so CAIN can put
either in place of its first TCN layer. The TCN looks at both sides of an item, so the GRU is
bidirectional (each direction Dout/2) and the self-attention is unmasked in time; both ignore
padding (packed sequences, key padding mask) so extra padding never changes their output.

Letters: R requests, L history length, Din/Dout widths.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class BidirectionalGRUContext(nn.Module):
    """[R, L, Din] -> [R, L, Dout] (Dout even), run only over each history's real items."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.gru = nn.GRU(in_dim, out_dim // 2, batch_first=True, bidirectional=True)

    def forward(
        self, inputs: torch.Tensor, mask: torch.Tensor, profile: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = mask.sum(-1).clamp(min=1).cpu()  # an empty history runs over one zero vector
        packed = pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
        outputs, _ = self.gru(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=inputs.shape[1])
        return outputs * mask[:, :, None], mask


class SelfAttentionContext(nn.Module):
    """One Transformer encoder layer (multi-head self-attention + FFN, pre-norm) then a projection
    to Dout: [R, L, Din] -> [R, L, Dout]. Cost grows with L², the paper's point against it."""

    def __init__(self, in_dim: int, out_dim: int, num_heads: int = 2) -> None:
        super().__init__()
        self.input_projection = nn.Linear(in_dim, out_dim)
        self.encoder = nn.TransformerEncoderLayer(
            out_dim,
            num_heads,
            dim_feedforward=2 * out_dim,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )

    def forward(
        self, inputs: torch.Tensor, mask: torch.Tensor, profile: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # A fully padded row would softmax over nothing (NaN): let it attend to its position 0.
        key_padding = ~mask
        key_padding[:, 0] &= mask.any(-1)
        hidden = self.input_projection(inputs)  # [R, L, Dout]
        outputs = self.encoder(hidden, src_key_padding_mask=key_padding)
        return outputs * mask[:, :, None], mask
