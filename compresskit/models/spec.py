"""The JSON-able description of a compresskit CNN: `ModelSpec` (every conv layer's width, with "M"
for each 2×2 max-pool; the head; the ranks of factorized layers; the SE reduction), the named
channel plans (`VGG_LAYERS`, `SE_MODELS`, `MODEL_NAMES`), `conv_sides`, and `make_spec`, which
scales a named plan by a width multiplier. Plain data: no torch module is built here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

from compresskit.errors import CompresskitError, ParameterError

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
HEADS = ("linear", "mlp")
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
            raise ParameterError(f"{{0}} must be one of: {', '.join(HEADS)}; got '{self.head}'.", "head")
        if not 0.0 <= self.dropout < 1.0:
            raise ParameterError(f"{{0}} must be in [0, 1); got {self.dropout}.", "dropout")
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
        raise ParameterError(f"{{0}} must be one of: {', '.join(MODEL_NAMES)}; got '{name}'.", "name")
    if not width > 0:
        raise ParameterError(f"{{0}} must be a positive number; got {width}.", "width")
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
