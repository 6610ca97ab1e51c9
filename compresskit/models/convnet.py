"""`ConvNet`, the network a `ModelSpec` describes: its structure as `ConvNet.named_blocks` lists it
(`Block`: blockN / poolN / fcN with their module paths, the list every walker over blocks uses),
`build_model` and its initialisations (`INITS`, `init_weights`), and `count_parameters`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compresskit.errors import ParameterError
from compresskit.models.blocks import FactorizedLinear, conv_block, linear_layer
from compresskit.models.spec import POOL, ModelSpec

BLOCK_KINDS = ("block", "pool", "fc")


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
            head += [linear_layer(c * h * w, spec.head_width, linear_ranks[0]), nn.ReLU(inplace=True)]
            if spec.dropout:
                head.append(nn.Dropout(spec.dropout))
            head.append(linear_layer(spec.head_width, spec.num_classes, linear_ranks[1]))
        else:
            if spec.dropout:
                head.append(nn.Dropout(spec.dropout))
            head.append(linear_layer(c * h * w, spec.num_classes, linear_ranks[0]))
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
        raise ParameterError(f"{{0}} must be one of: {', '.join(INITS)}; got '{init}'.", "init")


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
