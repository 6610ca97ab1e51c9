"""VGG-family networks and small baseline CNNs for 32×32 inputs, rebuilt from a JSON-able spec.

Every model is a `ConvNet`: ``features`` (a `nn.Sequential` of conv blocks — each itself
``Sequential(Conv2d 3×3 pad 1, [BatchNorm2d], ReLU, [SqueezeExcite])`` — and 2×2 max-pools)
followed by ``head``. A `ModelSpec` lists every conv layer's output channels, so pruned networks
with arbitrary per-layer widths rebuild exactly from the spec alone, with no pickled code.

The attention CNNs (``cnn_se``, ``cnn_se_bn``) are the ``cnn_deep`` plan with a squeeze-and-excitation
gate (`SqueezeExcite`) closing every conv block; its bottleneck width follows from the block's
width and ``ModelSpec.se_reduction`` (`se_width`), so it needs no entry of its own in the spec.

The model owns its structure: `ConvNet.named_blocks` lists its conv blocks (``block1…``), max-pools
(``pool1…``) and head linear layers (``fc1…``) in forward order, with their module paths; capture,
pruning, low-rank factorization, depth reduction and layer-wise training all walk that list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from compresskit.errors import CompresskitError

POOL = "M"

# Channel plans of the VGG paper (configurations A, B, D, E); "M" is a 2×2 max-pool.
VGG_LAYERS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
    # The reference studies' conv-relu-pool "sandwich" baseline: three conv + pool stages.
    "cnn": [32, "M", 64, "M", 128, "M"],
    # The staged study's "deeper" intermediate network: two conv layers before each pool.
    "cnn_deep": [32, 32, "M", 64, 64, "M", 128, 128, "M"],
}  # fmt: skip
# Attention models: a channel plan of VGG_LAYERS with a squeeze-and-excitation gate in every conv
# block, reducing by SE_REDUCTION.
SE_MODELS: dict[str, str] = {"cnn_se": "cnn_deep"}
SE_REDUCTION = 8
SE_MIN_WIDTH = 4
HEADS = ("linear", "mlp")
BLOCK_KINDS = ("block", "pool", "fc")
MODEL_NAMES = tuple(f"{base}{bn}" for base in (*VGG_LAYERS, *SE_MODELS) for bn in ("", "_bn"))


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model; round-trips through JSON.

    layers: conv output channels in order, with "M" for each 2×2 max-pool.
    head: "linear" (features → classes) or "mlp" (features → head_width → classes, ReLU between).
    global_pool: average the last feature map to 1×1 before the head instead of flattening it.
    conv_ranks: one entry per conv layer, None (a plain 3×3 conv) or a rank r (a `FactorizedConv2d`:
        3×3 conv to r channels, then 1×1 conv to the layer's width); None for no factorization.
    linear_ranks: the same for the head's linear layers (a `FactorizedLinear` of rank r).
    se_reduction: None (no attention) or r: every conv block of width C ends with a `SqueezeExcite`
        gate whose bottleneck has `se_width` (C, r) = max(C // r, 4) units.
    """

    name: str
    layers: list[int | str]
    batch_norm: bool = False
    in_channels: int = 3
    num_classes: int = 10
    input_size: int = 32
    head: str = "linear"
    head_width: int = 512
    dropout: float = 0.0
    global_pool: bool = False
    conv_ranks: list[int | None] | None = None
    linear_ranks: list[int | None] | None = None
    se_reduction: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        if not isinstance(data, dict):
            raise CompresskitError("the model spec must be a mapping of field names to values.")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise CompresskitError(f"the model spec has unknown field(s): {', '.join(sorted(unknown))}.")
        spec = cls(**data)
        spec.validate()
        return spec

    def validate(self) -> None:
        convs = [c for c in self.layers if c != POOL]
        if not convs:
            raise CompresskitError("a model needs at least one convolution layer.")
        if any(not isinstance(c, int) or isinstance(c, bool) or c <= 0 for c in convs):
            raise CompresskitError("every conv layer width in the model spec must be a positive integer.")
        if self.head not in HEADS:
            raise CompresskitError(f"--head '{self.head}' is not known; choose one of: {', '.join(HEADS)}.")
        if not 0.0 <= self.dropout < 1.0:
            raise CompresskitError(f"--dropout {self.dropout} is outside the allowed range [0, 1).")
        for field_name, ranks, count in (
            ("conv_ranks", self.conv_ranks, len(convs)),
            ("linear_ranks", self.linear_ranks, 2 if self.head == "mlp" else 1),
        ):
            if ranks is None:
                continue
            if not isinstance(ranks, list) or len(ranks) != count:
                raise CompresskitError(f"the model spec's {field_name} must list {count} ranks (or nulls).")
            if any(r is not None and not _positive_int(r) for r in ranks):
                raise CompresskitError(f"every rank in the model spec's {field_name} must be positive.")
        if self.se_reduction is not None and not _positive_int(self.se_reduction):
            raise CompresskitError(
                f"the model spec's se_reduction {self.se_reduction!r} must be a positive integer (or null)."
            )
        if self.input_size >> self.layers.count(POOL) < 1:
            raise CompresskitError(
                f"{self.layers.count(POOL)} max-pools shrink a {self.input_size}-pixel input to nothing."
            )

    @property
    def conv_widths(self) -> list[int]:
        return [int(c) for c in self.layers if c != POOL]

    def conv_sides(self) -> list[int]:
        """Output side length (pixels) of every conv layer, in order; see `conv_sides`."""
        return conv_sides(self.layers, self.input_size)

    def feature_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of the last feature map, before the head."""
        side = self.input_size >> self.layers.count(POOL)
        return self.conv_widths[-1], side, side


def conv_sides(layers: Sequence[int | str], input_size: int) -> list[int]:
    """Output side length of every conv layer of a `ModelSpec.layers` plan on a square input of
    `input_size` pixels: 3×3 convs (padding 1) keep the side, each 2×2 max-pool halves it."""
    side, sides = input_size, []
    for item in layers:
        if item == POOL:
            side //= 2
        else:
            sides.append(side)
    return sides


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def make_spec(
    name: str,
    num_classes: int = 10,
    *,
    in_channels: int = 3,
    width: float = 1.0,
    head: str = "linear",
    dropout: float = 0.0,
    global_pool: bool = False,
    input_size: int = 32,
) -> ModelSpec:
    """The spec of a named model (`MODEL_NAMES`, e.g. ``"vgg11_bn"``) at a width multiplier, for
    square inputs of `input_size` pixels (the flattened head's size depends on it).

    `width` scales every conv layer and the mlp head's hidden layer (512), rounding to the nearest
    integer and keeping at least one channel. The attention models (`SE_MODELS`, e.g.
    ``"cnn_se_bn"``) get ``se_reduction`` = `SE_REDUCTION`; the others None.
    """
    if name not in MODEL_NAMES:
        raise CompresskitError(f"--model '{name}' is not known; choose one of: {', '.join(MODEL_NAMES)}.")
    if not width > 0:
        raise CompresskitError(f"--width {width} must be a positive number.")
    base, batch_norm = name.removesuffix("_bn"), name.endswith("_bn")
    se_reduction = SE_REDUCTION if base in SE_MODELS else None
    plan = VGG_LAYERS[SE_MODELS.get(base, base)]
    layers = [c if c == POOL else max(1, round(int(c) * width)) for c in plan]
    spec = ModelSpec(
        name=name,
        layers=layers,
        batch_norm=batch_norm,
        in_channels=in_channels,
        num_classes=num_classes,
        head=head,
        head_width=max(1, round(512 * width)),
        dropout=dropout,
        global_pool=global_pool,
        se_reduction=se_reduction,
        input_size=input_size,
    )
    spec.validate()
    return spec


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


def _linear(in_features: int, out_features: int, rank: int | None) -> nn.Module:
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


@dataclass(frozen=True)
class Block:
    """One unit of a `ConvNet`'s structure, as `ConvNet.named_blocks` lists them.

    name: ``blockN``, ``poolN`` or ``fcN``, numbered from 1 within its kind in forward order.
    kind: ``"block"`` (a conv block: ``Sequential(conv, [BatchNorm2d], ReLU, [SqueezeExcite])``,
        the conv an `nn.Conv2d` or a `FactorizedConv2d`; an SE gate's linear layers belong to its
        block), ``"pool"`` (an `nn.MaxPool2d`) or ``"fc"`` (a linear layer of the head: an
        `nn.Linear` or a `FactorizedLinear`).
    index: N − 1, the position among the blocks of its kind (for a conv block, the index into
        `ModelSpec.conv_widths` / ``conv_ranks``; for an fc, into ``linear_ranks``).
    path: the module's path in ``model.named_modules()``, e.g. ``features.0`` or ``head.1``.
    module: the block itself (the whole conv block, activation and SE gate included, for kind
        ``block``: its output is what the next layer sees).
    """

    name: str
    kind: str
    index: int
    path: str
    module: nn.Module

    @property
    def layer(self) -> nn.Module:
        """The weight layer: a conv block's conv (its first child), an fc's own module. Raises
        ValueError for a pool, which has none."""
        if self.kind == "pool":
            raise ValueError(f"{self.name} is a max-pool; it has no weight layer.")
        return self.module[0] if self.kind == "block" else self.module  # type: ignore[index]

    @property
    def layer_path(self) -> str:
        """Module path of `layer` (``features.3.0`` for a conv block's conv, ``head.1`` for an fc)."""
        if self.kind == "pool":
            raise ValueError(f"{self.name} is a max-pool; it has no weight layer.")
        return f"{self.path}.0" if self.kind == "block" else self.path


class ConvNet(nn.Module):
    """A VGG-style network built from a `ModelSpec`. Input B×C×32×32, output B×num_classes logits."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        spec.validate()
        self.spec = spec
        blocks: list[nn.Module] = []
        channels = spec.in_channels
        conv_ranks = iter(spec.conv_ranks or [None] * len(spec.conv_widths))
        linear_ranks = list(spec.linear_ranks or [None, None])
        for item in spec.layers:
            if item == POOL:
                blocks.append(nn.MaxPool2d(2))
            else:
                blocks.append(
                    conv_block(channels, int(item), spec.batch_norm, next(conv_ranks), spec.se_reduction)
                )
                channels = int(item)
        self.features = nn.Sequential(*blocks)
        c, h, w = spec.feature_shape()
        head: list[nn.Module] = []
        if spec.global_pool:
            head.append(nn.AdaptiveAvgPool2d(1))
            h = w = 1
        head.append(nn.Flatten())
        if spec.head == "mlp":
            head += [_linear(c * h * w, spec.head_width, linear_ranks[0]), nn.ReLU(inplace=True)]
            if spec.dropout:
                head.append(nn.Dropout(spec.dropout))
            head.append(_linear(spec.head_width, spec.num_classes, linear_ranks[1]))
        else:
            if spec.dropout:
                head.append(nn.Dropout(spec.dropout))
            head.append(_linear(c * h * w, spec.num_classes, linear_ranks[0]))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def named_blocks(self, kind: str | None = None) -> list[Block]:
        """Every conv block, max-pool and head linear layer in forward order (see `Block`), or only
        those of one `kind` (``"block"``, ``"pool"`` or ``"fc"``). Read from the modules, so it
        follows in-place changes such as pruning. Other head modules (flatten, ReLU, dropout,
        global pool) are not blocks.

        >>> [b.name for b in build_model(make_spec("cnn")).named_blocks()]
        ['block1', 'pool1', 'block2', 'pool2', 'block3', 'pool3', 'fc1']
        """
        if kind is not None and kind not in BLOCK_KINDS:
            raise ValueError(f"block kind '{kind}' is not known; choose one of: {', '.join(BLOCK_KINDS)}.")
        found: list[Block] = []
        counts = dict.fromkeys(BLOCK_KINDS, 0)
        for prefix, container in (("features", self.features), ("head", self.head)):
            for position, module in enumerate(container):
                what = _block_kind(module)
                if what is None:
                    continue
                index = counts[what]
                found.append(Block(f"{what}{index + 1}", what, index, f"{prefix}.{position}", module))
                counts[what] += 1
        return found if kind is None else [b for b in found if b.kind == kind]


def _block_kind(module: nn.Module) -> str | None:
    """block, pool or fc for a direct child of `ConvNet.features` or ``head``; None for the rest."""
    if isinstance(module, nn.Sequential):
        return "block"
    if isinstance(module, nn.MaxPool2d):
        return "pool"
    if isinstance(module, (nn.Linear, FactorizedLinear)):
        return "fc"
    return None


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) for convolutions, Kaiming-normal (fan-in) for hidden linear
    layers (SE gates' included), N(0, 0.01) for the output layer, BN scale 1 and shift 0, all
    biases 0."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linears and m is linears[-1]:
                nn.init.normal_(m.weight, 0.0, 0.01)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            nn.init.zeros_(m.bias)


INITS = ("kaiming", "torch")


def check_init(init: str) -> None:
    if init not in INITS:
        raise CompresskitError(f"--init '{init}' is not known; choose one of: {', '.join(INITS)}.")


def build_model(spec: ModelSpec, *, seed: int | None = None, init: str = "kaiming") -> ConvNet:
    """Build a model and initialise it: ``kaiming`` (`init_weights`) or ``torch`` (PyTorch's own
    defaults for each layer, for comparison); with `seed`, the initial weights are reproducible."""
    check_init(init)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = ConvNet(spec)
        if init == "kaiming":
            init_weights(model)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Re-exported so a checkpoint can name it as "compresskit.models:torchvision_model" (a trusted module).
from compresskit.zoo import torchvision_model  # noqa: E402, F401
