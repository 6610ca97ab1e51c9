"""Structured channel pruning through torch-pruning, guided by magnitude or by class separation.

torch-pruning builds the dependency graph (a conv's output channels, its batch norm, the next
conv's input channels, the first linear layer's inputs after the flatten) and removes whole
channels; compresskit only chooses *which* channels (an importance) and *how many per layer* (a
ratio per layer), then turns the result back into an ordinary `ModelSpec` + state dict.

The importances (``importance``) are registered in `compresskit.compress.importance`; that of
``separation`` is `separation_importance.SeparationImportance`.

Per-layer ratios (``allocate``): ``uniform`` prunes every conv layer by ``ratio`` of its
channels (with ``scope="global"``, torch-pruning ranks all channels of the network together
instead); ``csi`` gives each layer its own ratio from the layer analysis (`csi_allocation`).
The classifier's output layer is never pruned.

Squeeze-and-excitation gates (`SqueezeExcite`, the ``cnn_se`` models) follow their block: the
graph ties the gate's ``up`` outputs and ``down`` inputs to the block's channels, so they lose the
same channels as its conv. The gate's bottleneck is never a pruning group of its own (``down`` is
an ignored layer); after each step `fit_se_gates` trims it to ``se_width(C, r)`` of the block's
new width C, dropping the hidden units of smallest weight magnitude, so the spec needs no SE
widths: ``layers`` and ``se_reduction`` rebuild the gates.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch_pruning as tp
from torch import nn

from compresskit.compress.importance import IMPORTANCES as IMPORTANCES
from compresskit.compress.importance import NEEDS_DATA as NEEDS_DATA
from compresskit.compress.importance import criterion, make_importance
from compresskit.compress.separation_importance import SeparationImportance as SeparationImportance
from compresskit.compress.separation_importance import channel_outputs as channel_outputs
from compresskit.compress.separation_importance import fisher_ratio as fisher_ratio
from compresskit.compress.separation_importance import unit_outputs as unit_outputs
from compresskit.errors import CompresskitError, ParameterError
from compresskit.models import FACTORIZED, POOL, ConvNet, ModelSpec, SqueezeExcite, conv_sides, se_width

SCOPES = ("uniform", "global")
ALLOCATIONS = ("uniform", "csi")

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class PruneConfig:
    """How to prune. `ratio` is the fraction of each conv layer's output channels removed (uniform),
    or of all conv channels together (global scope); `max_layer_ratio` caps any single layer;
    `round_to` keeps every layer's remaining channel count a multiple of it; `steps` > 1 prunes in
    that many equal steps (fine-tuning in between is the caller's job, see `ChannelPruner`). With
    per-layer ratios (``allocate="csi"``, or `layer_ratios` given: one ratio per conv layer, in
    order, e.g. to prune the parameter-heavy late layers harder) an mlp head's hidden layer is still
    pruned by `ratio`."""

    ratio: float = 0.5
    importance: str = "l1"
    scope: str = "uniform"
    allocate: str = "uniform"
    steps: int = 1
    round_to: int | None = None
    max_layer_ratio: float = 1.0
    seed: int = 0
    layer_ratios: list[float] | None = None

    def validate(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ParameterError(f"{{0}} {self.ratio} is outside the allowed range (0, 1).", "ratio")
        criterion(self.importance)  # raises for a name the registry does not hold
        _choice("scope", self.scope, SCOPES)
        _choice("allocate", self.allocate, ALLOCATIONS)
        if self.allocate == "csi" and self.scope == "global":
            message = "{0} csi sets one ratio per layer, so it needs {1} uniform."
            raise ParameterError(message, "allocate", "scope")
        if self.steps < 1:
            raise ParameterError(f"{{0}} {self.steps} must be a positive integer.", "steps")
        if self.round_to is not None and self.round_to < 1:
            raise ParameterError(f"{{0}} {self.round_to} must be a positive integer.", "round_to")
        if not 0.0 < self.max_layer_ratio <= 1.0:
            raise ParameterError(f"{{0}} {self.max_layer_ratio} must be in (0, 1].", "max_layer_ratio")
        if self.layer_ratios is not None:
            if not self.layer_ratios or not all(0.0 <= r < 1.0 for r in self.layer_ratios):
                message = f"{{0}} {self.layer_ratios} must be ratios in [0, 1), one per conv layer."
                raise ParameterError(message, "layer_ratios")
            if self.allocate != "uniform" or self.scope != "uniform":
                raise ParameterError("{0} sets one ratio per layer, so it needs {1} uniform and {2} uniform.",
                                     "layer_ratios", "allocate", "scope")  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)


def _choice(parameter: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ParameterError(f"{{0}} '{value}' is not known; choose one of: {', '.join(allowed)}.", parameter)


# --------------------------------------------------------------------------- ratio allocation


def conv_macs(layers: Sequence[int | str], in_channels: int, input_size: int = 32) -> int:
    """Multiply-accumulates of the 3×3 convolutions of a `ModelSpec.layers` plan (the bulk of a
    VGG's cost; the head is left out): Σ H·W·9·c_in·c_out."""
    total, c_in = 0, in_channels
    widths = [int(item) for item in layers if item != POOL]
    for side, c_out in zip(conv_sides(layers, input_size), widths, strict=True):
        total += side * side * 9 * c_in * c_out
        c_in = c_out
    return total


def _kept(width: int, ratio: float, round_to: int | None) -> int:
    """Channels torch-pruning keeps of `width` at `ratio` (its rule: int(width · (1 − ratio)), then
    rounded down to a multiple of `round_to`)."""
    keep = int(width * (1 - ratio))
    if round_to:
        keep -= keep % round_to
    return max(1, keep)


def _plan(spec: ModelSpec, ratios: Sequence[float], round_to: int | None) -> list[int | str]:
    widths = iter(_kept(w, r, round_to) for w, r in zip(spec.conv_widths, ratios, strict=True))
    return [item if item == POOL else next(widths) for item in spec.layers]


def csi_allocation(
    spec: ModelSpec,
    csi: Sequence[float],
    input_csi: float,
    ratio: float,
    *,
    max_layer_ratio: float = 1.0,
    round_to: int | None = None,
) -> list[float]:
    """Per-conv-layer pruning ratios from the layer analysis.

    `csi` holds each conv block's CSI in order, `input_csi` the CSI of the input images. A layer's
    gain is how much it raises CSI over the previous one (negative gains count as 0). Its ratio is
    ``s · (1 − gain / (2 · max gain))``: the layer that adds the most separation is pruned half as
    hard as one that adds none. The scale s is found by bisection so that the convolutions' MACs
    (`conv_macs`) after pruning equal those of uniform pruning at `ratio`; each ratio is capped at
    `max_layer_ratio` (and below 1).
    """
    if len(csi) != len(spec.conv_widths):
        raise ValueError(f"csi has {len(csi)} values but the model has {len(spec.conv_widths)} conv layers.")
    previous = [input_csi, *csi[:-1]]
    gains = [max(0.0, c - p) for c, p in zip(csi, previous, strict=True)]
    top = max(gains)
    weights = [1.0 - g / (2 * top) if top > 0 else 1.0 for g in gains]
    cap = min(max_layer_ratio, 0.95)
    target = conv_macs(_plan(spec, [ratio] * len(weights), round_to), spec.in_channels, spec.input_size)

    def ratios(scale: float) -> list[float]:
        return [min(cap, scale * w) for w in weights]

    def macs(scale: float) -> int:
        return conv_macs(_plan(spec, ratios(scale), round_to), spec.in_channels, spec.input_size)

    low, high = 0.0, 2.0 / min(weights)
    for _ in range(60):
        mid = (low + high) / 2
        if macs(mid) > target:
            low = mid
        else:
            high = mid
    return ratios(high)


# --------------------------------------------------------------------------- pruning


def _linears(model: ConvNet) -> list[nn.Module]:
    """The head's linear layers in order (`ConvNet.named_blocks` kind ``fc``)."""
    return [fc.module for fc in model.named_blocks("fc")]


def _convs(model: ConvNet) -> list[nn.Module]:
    """The conv layer of every conv block, in order."""
    return [block.layer for block in model.named_blocks("block")]


def se_gates(model: ConvNet) -> list[SqueezeExcite]:
    """The squeeze-and-excitation gate of every conv block that has one, in order."""
    return [m for block in model.named_blocks("block") for m in block.module if isinstance(m, SqueezeExcite)]


@torch.no_grad()
def fit_se_gates(model: ConvNet) -> None:
    """Trim every SE gate's bottleneck to ``se_width(C, r)`` of its block's current width C (what
    `ConvNet` builds from the pruned spec), keeping the hidden units of largest L1 weight
    magnitude: |row of ``down``'s weight| + |its bias| + |column of ``up``'s weight|."""
    for gate in se_gates(model):
        keep = se_width(gate.up.out_features, gate.reduction)
        if gate.down.out_features <= keep:
            continue
        magnitude = gate.down.weight.abs().sum(1) + gate.down.bias.abs() + gate.up.weight.abs().sum(0)
        drop = magnitude.argsort()[: gate.down.out_features - keep].sort().values.tolist()
        tp.prune_linear_out_channels(gate.down, drop)
        tp.prune_linear_in_channels(gate.up, drop)


def output_layer(model: ConvNet) -> nn.Module:
    """The classifier's output layer (the last linear layer of the head); never pruned."""
    return _linears(model)[-1]


class ChannelPruner:
    """torch-pruning's `MetaPruner` set up from a `PruneConfig`; `step()` prunes one of
    ``cfg.steps`` equal steps in place and returns the model's conv widths afterwards.

    >>> pruner = ChannelPruner(model, PruneConfig(ratio=0.5), example_inputs, batches)
    >>> for _ in range(pruner.cfg.steps):
    ...     pruner.step()          # fine-tune between steps if you like
    """

    def __init__(
        self,
        model: ConvNet,
        cfg: PruneConfig,
        example_inputs: torch.Tensor,
        batches: Batches | None = None,
        *,
        layer_ratios: Sequence[float] | None = None,
        prune_head: bool = True,
    ) -> None:
        cfg.validate()
        if any(isinstance(m, FACTORIZED) for m in model.modules()):
            raise CompresskitError(
                "this model has low-rank factorized layers; prune before factorizing (prune, then lowrank)."
            )
        self.criterion = criterion(cfg.importance)
        has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        if self.criterion.needs_batch_norm and not has_bn:
            raise ParameterError(
                f"{{0}} {cfg.importance} needs a model with batch norm (a *_bn model).", "importance"
            )
        self.model, self.cfg, self.batches = model, cfg, batches
        self.importance = make_importance(cfg.importance, batches)
        convs = _convs(model)
        if sum(c.out_channels for c in convs) <= len(convs):
            raise CompresskitError("the model has nothing left to prune: every conv layer has one channel.")
        ratio_dict = None
        if layer_ratios is not None:
            if len(layer_ratios) != len(convs):
                raise ValueError(f"{len(layer_ratios)} layer ratios for {len(convs)} conv layers.")
            ratio_dict = {conv: float(r) for conv, r in zip(convs, layer_ratios, strict=True)}
        ignored = [output_layer(model)] if prune_head else _linears(model)
        # An SE gate's bottleneck follows its block's width (fit_se_gates), not the ratio.
        ignored += [gate.down for gate in se_gates(model)]
        torch.manual_seed(cfg.seed)  # RandomImportance draws from torch's global generator
        self.pruner = tp.pruner.MetaPruner(
            model,
            example_inputs,
            importance=self.importance,
            global_pruning=cfg.scope == "global",
            pruning_ratio=cfg.ratio,
            pruning_ratio_dict=ratio_dict,
            max_pruning_ratio=cfg.max_layer_ratio,
            iterative_steps=cfg.steps,
            ignored_layers=ignored,
            round_to=cfg.round_to,
        )

    def step(self) -> list[int]:
        if isinstance(self.importance, SeparationImportance):
            self.importance.refresh(self.model)
        elif self.criterion.needs_gradients:
            self._accumulate_gradients()
        self.pruner.step()
        fit_se_gates(self.model)
        self.model.zero_grad(set_to_none=True)
        return [conv.out_channels for conv in _convs(self.model)]

    def _accumulate_gradients(self) -> None:
        assert self.batches
        was_training = self.model.training
        self.model.eval()
        self.model.zero_grad(set_to_none=True)
        for x, y in self.batches:
            nn.functional.cross_entropy(self.model(x), y).backward()
        self.model.train(was_training)


def pruned_spec(model: ConvNet, spec: ModelSpec) -> ModelSpec:
    """The `ModelSpec` of a pruned copy of a model built from `spec`: new conv widths, new mlp
    hidden width; everything else unchanged. SE gates must have the bottleneck width that their
    block's new width implies (`fit_se_gates`, which `ChannelPruner.step` runs)."""
    for gate in se_gates(model):
        if gate.down.out_features != se_width(gate.up.out_features, gate.reduction):
            raise CompresskitError(
                f"an SE gate of {gate.up.out_features} channels has {gate.down.out_features} hidden units, "
                f"not the {se_width(gate.up.out_features, gate.reduction)} its spec rebuilds; "
                "run fit_se_gates after pruning."
            )
    widths = iter(conv.out_channels for conv in _convs(model))
    layers = [item if item == POOL else next(widths) for item in spec.layers]
    head_width = spec.head_width
    if spec.head == "mlp":
        head_width = _linears(model)[0].out_features
    new = ModelSpec(**{**spec.to_dict(), "layers": layers, "head_width": head_width})
    new.validate()
    return new


def rebuild(model: ConvNet, spec: ModelSpec) -> tuple[ConvNet, ModelSpec]:
    """A plain `ConvNet` (no torch-pruning objects attached) with the pruned model's weights, and its
    spec; what a checkpoint stores."""
    new_spec = pruned_spec(model, spec)
    fresh = ConvNet(new_spec)
    fresh.load_state_dict(model.state_dict())
    return fresh.to(next(model.parameters()).device).train(model.training), new_spec


def prune_copy(
    model: ConvNet,
    spec: ModelSpec,
    cfg: PruneConfig,
    batches: Batches | None = None,
    *,
    layer_ratios: Sequence[float] | None = None,
    prune_head: bool = True,
) -> tuple[ConvNet, ModelSpec]:
    """Prune a deep copy of `model` in all ``cfg.steps`` steps at once (no fine-tuning between) and
    return the rebuilt model and its spec. `model` itself is not changed."""
    work = copy.deepcopy(model)
    example = torch.zeros(1, spec.in_channels, spec.input_size, spec.input_size, device=_device(model))
    pruner = ChannelPruner(work, cfg, example, batches, layer_ratios=layer_ratios, prune_head=prune_head)
    for _ in range(cfg.steps):
        pruner.step()
    return rebuild(work, spec)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def as_batches(loader: Iterable) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Materialise a loader's batches once, so every pruning step sees the same calibration data."""
    return [(x, y) for x, y in loader]
