"""BN-Inception (Ioffe & Szegedy 2015) with TSN's layer names, as a per-frame feature extractor.

The original's default condition is the TSN BN-Inception trunk (`bn_inception-9f5701afb96c8044.pth`):
a 1024-d 7x7 global average pool per frame, once on RGB frames and once on optical flow. TSN builds the
network from a Caffe-style layer list, so every layer is a top-level module with a flat name
(`conv1_7x7_s2`, `conv1_7x7_s2_bn`, `conv2_3x3_reduce`, `inception_3a_1x1`, `inception_3a_1x1_bn`,
`inception_3a_double_3x3_2`, `inception_3c_pool`, ..., `inception_5b_pool_proj_bn`); we keep those names
so that the released state dict loads strictly. Every conv has a bias (Caffe) and is followed by a
BatchNorm and an in-place ReLU; inception outputs concatenate [1x1 | 3x3 | double 3x3 | pool branch].

The flow network is the same trunk with 2 input channels (x, y flow), made from the RGB weights as TSN's
`_construct_flow_model` does: `flow_state_dict` averages the first kernel over its 3 input channels and
repeats it for the 2 flow channels. No flow-specific weights are loaded.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Block(NamedTuple):
    """Channels of one inception block (0 = branch absent); stride 2 blocks pass the max-pool through."""

    name: str
    c1x1: int
    c3x3_reduce: int
    c3x3: int
    double_reduce: int
    double: int
    pool: str  # "avg" | "max"
    pool_proj: int
    stride: int


BLOCKS = (
    Block("3a", 64, 64, 64, 64, 96, "avg", 32, 1),
    Block("3b", 64, 64, 96, 64, 96, "avg", 64, 1),
    Block("3c", 0, 128, 160, 64, 96, "max", 0, 2),
    Block("4a", 224, 64, 96, 96, 128, "avg", 128, 1),
    Block("4b", 192, 96, 128, 96, 128, "avg", 128, 1),
    Block("4c", 160, 128, 160, 128, 160, "avg", 128, 1),
    Block("4d", 96, 128, 192, 160, 192, "avg", 128, 1),
    Block("4e", 0, 128, 192, 192, 256, "max", 0, 2),
    Block("5a", 352, 192, 320, 160, 224, "avg", 128, 1),
    Block("5b", 352, 192, 320, 192, 224, "max", 128, 1),
)


class BNInception(nn.Module):
    """BN-Inception trunk; `forward` maps (B, in_channels, 224, 224) to (B, 1024 * width) pooled features.

    `width=1.0` is the released network (1024-d); smaller widths scale every channel count and exist only
    for fast tests with random weights. `in_channels` is 3 for RGB (BGR order, 0..255 minus
    [104, 117, 128]) and 2 for flow (x, y images in 0..255 minus 128).
    """

    def __init__(self, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        self.in_channels = in_channels

        def ch(c: int) -> int:
            return max(1, round(c * width)) if c else 0

        self._plan: list[tuple] = []  # (block, input channels) for forward
        self._conv("conv1_7x7_s2", in_channels, ch(64), 7, stride=2, padding=3)
        self._conv("conv2_3x3_reduce", ch(64), ch(64), 1)
        self._conv("conv2_3x3", ch(64), ch(192), 3, padding=1)
        c_in = ch(192)
        for b in BLOCKS:
            p = f"inception_{b.name}"
            out = 0
            if b.c1x1:
                self._conv(f"{p}_1x1", c_in, ch(b.c1x1), 1)
                out += ch(b.c1x1)
            self._conv(f"{p}_3x3_reduce", c_in, ch(b.c3x3_reduce), 1)
            self._conv(f"{p}_3x3", ch(b.c3x3_reduce), ch(b.c3x3), 3, stride=b.stride, padding=1)
            self._conv(f"{p}_double_3x3_reduce", c_in, ch(b.double_reduce), 1)
            self._conv(f"{p}_double_3x3_1", ch(b.double_reduce), ch(b.double), 3, padding=1)
            self._conv(f"{p}_double_3x3_2", ch(b.double), ch(b.double), 3, stride=b.stride, padding=1)
            out += ch(b.c3x3) + ch(b.double)
            if b.pool_proj:
                self._conv(f"{p}_pool_proj", c_in, ch(b.pool_proj), 1)
                out += ch(b.pool_proj)
            else:
                out += c_in  # stride-2 block: the max-pooled input is passed through
            self._plan.append(b)
            c_in = out
        self.out_dim = c_in

    def _conv(self, name: str, c_in: int, c_out: int, k: int, stride: int = 1, padding: int = 0) -> None:
        self.add_module(name, nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, bias=True))
        self.add_module(f"{name}_bn", nn.BatchNorm2d(c_out))

    def _cbr(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """conv -> BN -> ReLU (TSN applies the ReLU in place, so branches see post-ReLU outputs)."""
        return F.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)))

    @staticmethod
    def _max_pool(x: torch.Tensor, stride: int, padding: int = 0) -> torch.Tensor:
        return F.max_pool2d(x, 3, stride=stride, padding=padding, ceil_mode=True)  # Caffe pooling rounds up

    def _block(self, b: Block, x: torch.Tensor) -> torch.Tensor:
        p = f"inception_{b.name}"
        branches = []
        if b.c1x1:
            branches.append(self._cbr(f"{p}_1x1", x))
        branches.append(self._cbr(f"{p}_3x3", self._cbr(f"{p}_3x3_reduce", x)))
        d = self._cbr(f"{p}_double_3x3_reduce", x)
        branches.append(self._cbr(f"{p}_double_3x3_2", self._cbr(f"{p}_double_3x3_1", d)))
        if b.pool_proj:
            if b.pool == "avg":
                pooled = F.avg_pool2d(x, 3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
            else:
                pooled = self._max_pool(x, 1, padding=1)
            branches.append(self._cbr(f"{p}_pool_proj", pooled))
        else:
            branches.append(self._max_pool(x, 2))
        return torch.cat(branches, dim=1)  # (B, sum of branch channels, H', W')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._max_pool(self._cbr("conv1_7x7_s2", x), 2)  # (B, 64, 56, 56) for 224 x 224
        x = self._max_pool(self._cbr("conv2_3x3", self._cbr("conv2_3x3_reduce", x)), 2)  # (B, 192, 28, 28)
        for b in self._plan:
            x = self._block(b, x)  # ... (B, 1024, 7, 7) after 5b
        return x.mean(dim=(2, 3))  # the 7x7 global average pool: (B, 1024)


class TwoStreamBNInception(nn.Module):
    """The RGB and the flow BN-Inception side by side (`rgb`, `flow`); each returns (B, out_dim)."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.rgb = BNInception(3, width)
        self.flow = BNInception(2, width)
        self.out_dim = self.rgb.out_dim


def flow_state_dict(rgb_state: dict[str, torch.Tensor], flow_channels: int = 2) -> dict[str, torch.Tensor]:
    """The flow network's weights from the RGB network's (TSN `_construct_flow_model`).

    conv1_7x7_s2.weight (64, 3, 7, 7) -> mean over the input channels (64, 1, 7, 7) -> repeated to
    (64, flow_channels, 7, 7); every other tensor (the first conv's bias included) is kept.
    """
    state = dict(rgb_state)
    w = state["conv1_7x7_s2.weight"]
    state["conv1_7x7_s2.weight"] = w.mean(dim=1, keepdim=True).expand(-1, flow_channels, -1, -1).contiguous()
    return state
