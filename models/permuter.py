"""Token order of the codebook grid (spec §4.3): column-major over a 5 (frequency) x 53 (time) grid.

The quantiser's raster index is r = f * W + t (row f = frequency, 0 = lowest band; column t = time). The
sequence position is p = t * H + f: time left to right, and within a column the H rows from low to high
frequency.
"""

from __future__ import annotations

import torch
from torch import nn


def column_major_index(H: int, W: int) -> torch.Tensor:
    """forward_shuffle_idx: position p -> raster index, (H * W,) int64 (0, W, 2W, .., 1, W + 1, ..)."""
    return torch.arange(H * W).view(H, W).t().reshape(-1)  # (W, H) read row by row


class ColumnMajor(nn.Module):
    """Raster <-> column-major reordering with the original's int64 buffers (saved in the state dict).

    A sequence longer than H * W (extended sampling over k * W columns) gets an index rebuilt for W' = L / H.
    """

    def __init__(self, H: int = 5, W: int = 53) -> None:
        super().__init__()
        self.H, self.W = H, W
        idx = column_major_index(H, W)
        self.register_buffer("forward_shuffle_idx", idx)
        self.register_buffer("backward_shuffle_idx", torch.argsort(idx))

    def _indices(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if length == self.H * self.W:
            return self.forward_shuffle_idx, self.backward_shuffle_idx
        if length % self.H:
            raise ValueError(f"a sequence of {length} tokens is not a whole number of {self.H}-row columns")
        idx = column_major_index(self.H, length // self.H).to(device)
        return idx, torch.argsort(idx)

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        """x (B, L) in raster order -> column-major order; `reverse=True` goes back to raster order."""
        fwd, bwd = self._indices(x.shape[1], x.device)
        return x[:, bwd] if reverse else x[:, fwd]
