"""Low-rank factorization by truncated SVD: each chosen conv or linear layer becomes two thinner ones.

A linear layer W (out×in) ≈ U_r·S_r·V_rᵀ becomes ``reduce`` = S_r^½·V_rᵀ (r×in) followed by
``expand`` = U_r·S_r^½ (out×r). A k×k conv is factorized the same way on its weight reshaped to
out×(in·k·k): ``reduce`` is a k×k conv to r channels (the original stride, padding and dilation),
``expand`` a 1×1 conv back to the layer's width (the scheme of Zhang et al. 2015 without their
nonlinear refinement). Splitting S evenly keeps both factors at the same scale, which suits
fine-tuning. By Eckart–Young, the Frobenius error of the weight is √(Σ discarded σ²). This module
works on `ConvNet` blocks and specs; `lowrank_any` applies the same factors to any model.

The rank of each layer comes from ``rank_ratio`` (r = ⌈ratio · full rank⌉) or ``energy`` (the
smallest r keeping that fraction of Σσ²). A layer is left alone when the factorized pair would not
have fewer MACs than the original (r·(in·k² + out) ≥ out·in·k² for a conv, r·(in + out) ≥ in·out for
a linear layer), and the plan says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from compresskit.errors import ParameterError
from compresskit.models import Block, ConvNet, FactorizedConv2d, FactorizedLinear, ModelSpec


@dataclass
class LowRankConfig:
    """Exactly one of `rank_ratio` and `energy`, each in (0, 1]; `layers` is ``all`` or a comma list
    of layer names (``block1``…, ``fc1``…)."""

    rank_ratio: float | None = None
    energy: float | None = None
    layers: str = "all"

    def validate(self) -> None:
        if (self.rank_ratio is None) == (self.energy is None):
            raise ParameterError("give exactly one of {0} and {1}.", "rank_ratio", "energy")
        for name, value in (("rank_ratio", self.rank_ratio), ("energy", self.energy)):
            if value is not None and not 0.0 < value <= 1.0:
                raise ParameterError(f"{{0}} must be in (0, 1]; got {value}.", name)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LayerPlan:
    """What happens to one layer: its name, full rank, chosen rank, the fraction of Σσ² kept, and
    whether it is factorized (``action``: factorized, kept: no MAC saving, kept: not selected,
    kept: already factorized)."""

    layer: str
    shape: str
    full_rank: int
    rank: int
    energy_kept: float
    macs_before: int
    macs_after: int
    action: str


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest r with Σ_{i<r} σ_i² ≥ energy · Σ σ_i² (σ sorted descending)."""
    squared = singular_values.double() ** 2
    kept = torch.cumsum(squared, 0) / squared.sum()
    return int(torch.searchsorted(kept, torch.tensor(energy - 1e-12, dtype=kept.dtype)).item()) + 1


def rank_for_ratio(full_rank: int, ratio: float) -> int:
    return max(1, min(full_rank, math.ceil(ratio * full_rank)))


SVD = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def choose_rank(singular_values: torch.Tensor, full_rank: int, cfg: LowRankConfig) -> tuple[int, float]:
    """The rank `cfg` asks for (by `rank_ratio` or `energy`) and the fraction of Σσ² it keeps."""
    s = singular_values
    if cfg.rank_ratio is not None:
        rank = rank_for_ratio(full_rank, cfg.rank_ratio)
    else:
        assert cfg.energy is not None
        rank = rank_for_energy(s, cfg.energy)
    kept = float((s[:rank] ** 2).sum() / (s**2).sum()) if s.sum() > 0 else 1.0
    return rank, kept


def factorize_matrix(weight: torch.Tensor, rank: int, *, svd: SVD | None = None) -> SVD:
    """Truncated SVD of weight (out×n): returns (reduce r×n, expand out×r, all singular values), with
    expand @ reduce the best rank-r approximation of weight. `svd`: the thin float64 SVD
    ``torch.linalg.svd(weight.double(), full_matrices=False)`` when the caller already has it."""
    u, s, vh = svd if svd is not None else torch.linalg.svd(weight.double(), full_matrices=False)
    root = s[:rank].sqrt()
    reduce = root[:, None] * vh[:rank]
    expand = u[:, :rank] * root[None, :]
    return reduce.to(weight.dtype), expand.to(weight.dtype), s


def factorize_conv(conv: nn.Conv2d, rank: int, *, svd: SVD | None = None) -> FactorizedConv2d:
    """A `FactorizedConv2d` whose weights are the rank-`rank` SVD of `conv`'s (any kernel size,
    groups 1): the first factor keeps the conv's kernel size, stride, padding, dilation and padding
    mode; both factors get its device and dtype."""
    if conv.groups != 1:
        raise ValueError(f"only a conv with groups=1 can be factorized; this one has groups={conv.groups}.")
    out_c, in_c, kh, kw = conv.weight.shape
    reduce, expand, _ = factorize_matrix(conv.weight.detach().reshape(out_c, in_c * kh * kw), rank, svd=svd)
    layer = FactorizedConv2d(
        in_c, out_c, rank, bias=conv.bias is not None, kernel_size=conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, padding_mode=conv.padding_mode,
    ).to(conv.weight)  # fmt: skip
    with torch.no_grad():
        layer.reduce.weight.copy_(reduce.reshape(rank, in_c, kh, kw))
        layer.expand.weight.copy_(expand.reshape(out_c, rank, 1, 1))
        if conv.bias is not None:
            layer.expand.bias.copy_(conv.bias)
    return layer


def factorize_linear(linear: nn.Linear, rank: int, *, svd: SVD | None = None) -> FactorizedLinear:
    """A `FactorizedLinear` whose weights are the rank-`rank` SVD of `linear`'s."""
    reduce, expand, _ = factorize_matrix(linear.weight.detach(), rank, svd=svd)
    has_bias = linear.bias is not None
    layer = FactorizedLinear(linear.in_features, linear.out_features, rank, bias=has_bias).to(linear.weight)
    with torch.no_grad():
        layer.reduce.weight.copy_(reduce)
        layer.expand.weight.copy_(expand)
        if linear.bias is not None:
            layer.expand.bias.copy_(linear.bias)
    return layer


def _layers(model: ConvNet) -> list[Block]:
    """The blocks with a weight layer, in order: every conv block (block1…; its conv is
    ``block.layer``) and every linear layer of the head (fc1…)."""
    return [block for block in model.named_blocks() if block.kind != "pool"]


def factorize(
    model: ConvNet, spec: ModelSpec, cfg: LowRankConfig, *, only_if_cheaper: bool = True
) -> tuple[ConvNet, ModelSpec, list[LayerPlan]]:
    """A factorized copy of `model` (the original is not changed), its spec and the per-layer plan.

    With ``only_if_cheaper=False`` every selected layer is factorized even when that costs MACs
    (for checks such as "full rank reproduces the original"). Raises CompresskitError for an
    unknown layer name in ``cfg.layers``.
    """
    cfg.validate()
    layers = _layers(model)
    names = [block.name for block in layers]
    if cfg.layers.strip() == "all":
        chosen = set(names)
    else:
        chosen = {n.strip() for n in cfg.layers.split(",") if n.strip()}
    unknown = sorted(chosen - set(names))
    if unknown or not chosen:
        raise ParameterError(
            f"{{0}} '{cfg.layers}' names no layer of this model ({', '.join(unknown) or 'empty'}); "
            f"choose all or from: {', '.join(names)}.",
            "layers",
        )
    pixels = [side * side for side in spec.conv_sides()]
    conv_ranks = list(spec.conv_ranks or [None] * len(spec.conv_widths))
    linear_ranks = list(spec.linear_ranks or [None] * (2 if spec.head == "mlp" else 1))
    replacements: dict[str, nn.Module] = {}
    plans = []
    for block in layers:
        name, layer, position, is_conv = block.name, block.layer, block.index, block.kind == "block"
        if isinstance(layer, (FactorizedConv2d, FactorizedLinear)):
            plans.append(LayerPlan(name, "—", layer.rank, layer.rank, 1.0, 0, 0, "kept: already factorized"))
            continue
        weight = layer.weight.detach()
        matrix = weight.reshape(weight.shape[0], -1)
        out_f, n = matrix.shape
        full = min(out_f, n)
        rank, kept = choose_rank(torch.linalg.svdvals(matrix.double()), full, cfg)
        per_position = pixels[position] if is_conv else 1
        before = per_position * out_f * n
        after = per_position * rank * (n + out_f)
        shape = "×".join(str(d) for d in weight.shape)
        if name not in chosen:
            action = "kept: not selected"
        elif after >= before and only_if_cheaper:
            action = "kept: no MAC saving"
        else:
            action = "factorized"
            replacements[name] = factorize_conv(layer, rank) if is_conv else factorize_linear(layer, rank)
            if is_conv:
                conv_ranks[position] = rank
            else:
                linear_ranks[position] = rank
        macs_after = after if action == "factorized" else before
        plans.append(LayerPlan(name, shape, full, rank, kept, before, macs_after, action))
    ranks = {
        "conv_ranks": conv_ranks if any(conv_ranks) else None,
        "linear_ranks": linear_ranks if any(linear_ranks) else None,
    }
    new_spec = ModelSpec(**{**spec.to_dict(), **ranks})
    new_spec.validate()
    new_model = ConvNet(new_spec).to(next(model.parameters()).device)
    new_model.load_state_dict(_merged_state(model, new_model, replacements))
    return new_model.train(model.training), new_spec, plans


def _merged_state(model: ConvNet, new_model: ConvNet, replacements: dict[str, nn.Module]) -> dict:
    """The new model's state dict: the old weights where the structure is unchanged, the SVD
    factors where a layer was replaced."""
    state = dict(model.state_dict())
    paths = {block.name: block.layer_path for block in _layers(new_model)}
    for name, replacement in replacements.items():
        prefix = paths[name]
        for key in [k for k in state if k.startswith(prefix + ".")]:
            del state[key]
        for key, value in replacement.state_dict().items():
            state[f"{prefix}.{key}"] = value
    return state
