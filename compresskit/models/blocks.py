"""The layers a `ConvNet` is built from: the conv block (`conv_block`: Conv 3×3 pad 1 → [BatchNorm]
→ ReLU → [SqueezeExcite]), the squeeze-and-excitation gate (`SqueezeExcite`, its bottleneck width
`se_width`), and the rank-r stand-ins that low-rank factorization puts in place of a conv or a
linear layer (`FactorizedConv2d`, `FactorizedLinear`; `linear_layer` picks one for the head).
"""

from __future__ import annotations

import torch
from torch import nn

SE_MIN_WIDTH = 4  # the fewest bottleneck units of a `SqueezeExcite` gate (`se_width`)


class FactorizedConv2d(nn.Module):
    """A rank-r stand-in for a k×k conv (groups 1): ``reduce`` (k×k with the original stride,
    padding, dilation and padding mode; in → r channels, no bias) then ``expand`` (1×1, stride 1,
    r → out channels, with the original bias). MACs per output pixel: r·in·k_h·k_w + out·r instead
    of out·in·k_h·k_w. The defaults (3×3, stride 1, padding 1) are the `ConvNet` conv that
    ``ModelSpec.conv_ranks`` factorizes."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rank: int,
        bias: bool = True,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 1,
        dilation: int | tuple[int, int] = 1,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, rank
        self.reduce = nn.Conv2d(
            in_channels, rank, kernel_size, stride=stride, padding=padding, dilation=dilation,
            bias=False, padding_mode=padding_mode,
        )  # fmt: skip
        self.expand = nn.Conv2d(rank, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.reduce(x))


class FactorizedLinear(nn.Module):
    """A rank-r stand-in for a linear layer: ``reduce`` (in → r, no bias) then ``expand`` (r → out,
    with the original bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.reduce = nn.Linear(in_features, rank, bias=False)
        self.expand = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.reduce(x))


FACTORIZED = (FactorizedConv2d, FactorizedLinear)


def linear_layer(in_features: int, out_features: int, rank: int | None) -> nn.Module:
    """A linear layer of the head, in_features → out_features: an `nn.Linear`, or with a `rank` a
    `FactorizedLinear` of that rank."""
    if rank is None:
        return nn.Linear(in_features, out_features)
    return FactorizedLinear(in_features, out_features, rank)


def se_width(channels: int, reduction: int) -> int:
    """Bottleneck units of the `SqueezeExcite` gate of a `channels`-wide block: max(C // r, 4)."""
    return max(channels // reduction, SE_MIN_WIDTH)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al.): rescale each channel by a gate computed from all of
    them, ``x · sigmoid(W₂ relu(W₁ mean_hw(x) + b₁) + b₂)``, x B×C×H×W.

    ``pool`` (global average) → ``down`` (Linear C → `se_width` (C, r)) → ``act`` (ReLU) → ``up``
    (Linear → C) → ``gate`` (Sigmoid), then the product with x. Built from standard modules and a
    broadcast product, so torch-pruning's dependency graph ties ``up``'s outputs and ``down``'s
    inputs to the block's channels. The gate is unsqueezed to B×C×1×1, not ``view``-ed: the graph
    takes a view for a flatten and, reading the head's flatten downstream, would map every gate
    channel to H·W indices.
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.reduction = reduction  # the width follows the modules (pruning changes it), not an attribute
        hidden = se_width(channels, reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.down = nn.Linear(channels, hidden)
        self.act = nn.ReLU(inplace=True)
        self.up = nn.Linear(hidden, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.gate(self.up(self.act(self.down(self.pool(x).flatten(1)))))
        return x * weights[:, :, None, None]


def conv_block(
    in_channels: int,
    out_channels: int,
    batch_norm: bool,
    rank: int | None = None,
    se_reduction: int | None = None,
) -> nn.Sequential:
    """Conv 3×3 (padding 1) → [BatchNorm] → ReLU → [SqueezeExcite]. The conv has no bias when BN
    follows it; with a `rank` it is a `FactorizedConv2d`; with `se_reduction` a `SqueezeExcite`
    gate of that reduction closes the block."""
    conv: nn.Module
    if rank is None:
        conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)
    else:
        conv = FactorizedConv2d(in_channels, out_channels, rank, bias=not batch_norm)
    parts: list[nn.Module] = [conv]
    if batch_norm:
        parts.append(nn.BatchNorm2d(out_channels))
    parts.append(nn.ReLU(inplace=True))
    if se_reduction is not None:
        parts.append(SqueezeExcite(out_channels, se_reduction))
    return nn.Sequential(*parts)
