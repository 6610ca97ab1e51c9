"""Structured channel pruning of any PyTorch model (`prune_model`), through torch-pruning's
dependency graph.

`prune.py` prunes compresskit's `ConvNet` and rebuilds it from a new `ModelSpec`; this module
prunes any `nn.Module` in place on a copy and records what it rebuilt (`compresskit.edits`), so
`compresskit.model_io.save` can write the result against the model's factory. torch-pruning's
graph keeps whatever must change together consistent: the channels joined by a residual addition,
a concatenation's parts, a depthwise conv's channels and groups, a squeeze-and-excitation gate's
inputs and outputs.

Left alone by default: the classifier's output layer (`output_layer`: the conv or linear layer
whose output is the model's output, else the last one to run), and the rank of every low-rank
factorized layer (its ``reduce`` factor's outputs; its input and output channels are pruned
with their neighbours).

Importances (``importance``) are those of `prune.py`, registered in `compresskit.compress.importance`.
``separation`` scores a channel by the Fisher ratio of its spatially averaged activated output on
the calibration batches (`fisher_ratio`, read where `taps.find_taps` finds that output); a group's
channel (several layers tied together, e.g. by a residual addition) scores the mean over its
layers. ``allocate="csi"`` gives each group its own ratio from CSI gains
(`allocate_any.csi_group_ratios`); ``only`` prunes the groups it names and keeps every other one
(`sensitivity_any`: one group at a time).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from compresskit.compress.allocate_any import csi_group_ratios, prunable_groups
from compresskit.compress.importance import criterion, make_importance
from compresskit.compress.separation_importance import fisher_ratio
from compresskit.compress.taps import Batches, Tap, channel_means, find_taps, forward_example, run_taps
from compresskit.edits import mark_changed, snapshot
from compresskit.errors import CompresskitError, ParameterError
from compresskit.models import FACTORIZED, FactorizedConv2d, FactorizedLinear

ALLOCATIONS = ("uniform", "csi")
_ROOTS = (nn.modules.conv._ConvNd, nn.Linear)
_OUT_HANDLERS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)


class GraphSeparationImportance(tp.importance.Importance):
    """`separation_importance.SeparationImportance` for any graph: each prunable layer's channels
    are scored by the Fisher ratio of their activated output averaged over every position (one
    number per image and channel; `taps.channel_means`), on the calibration batches. A group's
    score for a root channel is the mean over the group's layers whose outputs hold that channel.
    Call `refresh` before a pruning step."""

    def __init__(self, batches: Batches, taps: dict[nn.Module, Tap]) -> None:
        self.batches, self.taps = batches, taps
        self.scores: dict[nn.Module, torch.Tensor] = {}

    def refresh(self, model: nn.Module) -> None:
        """Recompute every tapped layer's channel scores: one pass over the calibration batches."""
        if not self.taps:
            self.scores = {}
            return
        pooled: dict[Tap, list[torch.Tensor]] = {tap: [] for tap in self.taps.values()}
        labels: list[torch.Tensor] = []

        def record(tap: Tap, output: torch.Tensor, y: torch.Tensor) -> None:
            pooled[tap].append(channel_means(tap, output).double().cpu())
            if tap is first:
                labels.append(y.cpu())

        first = next(iter(self.taps.values()))
        run_taps(model, self.batches, list(self.taps.values()), record, purpose="importance 'separation'")
        y = torch.cat(labels)
        self.scores = {tap.layer: fisher_ratio(torch.cat(values), y) for tap, values in pooled.items()}

    def __call__(self, group) -> torch.Tensor | None:
        channels = len(group[0].idxs)
        total = torch.zeros(channels, dtype=torch.float64)
        count = torch.zeros(channels, dtype=torch.float64)
        for i, (dep, idxs) in enumerate(group):
            layer = dep.target.module
            roots = group[i].root_idxs
            if dep.handler not in _OUT_HANDLERS or layer not in self.scores or any(r is None for r in roots):
                continue
            where = torch.tensor(roots, dtype=torch.long)
            total.index_add_(0, where, self.scores[layer][list(idxs)])
            count.index_add_(0, where, torch.ones(len(roots), dtype=torch.float64))
        if not count.any():
            return None
        return (total / count.clamp(min=1)).float()


def output_layer(model: nn.Module, example_inputs: torch.Tensor | tuple) -> nn.Module | None:
    """The classifier's output layer: the conv or linear module whose output tensor is (one of) the
    model's outputs, else the last conv or linear module to run (e.g. a 1×1 conv classifier
    followed by pooling). Found in one forward pass in eval mode; None for a model without any."""
    ran: list[tuple[nn.Module, torch.Tensor]] = []
    handles = [
        m.register_forward_hook(lambda module, inputs, output: ran.append((module, output)))
        for m in model.modules()
        if isinstance(m, _ROOTS)
    ]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            out = forward_example(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    outputs = [t for t in _tensors(out)]
    for module, tensor in reversed(ran):
        if any(tensor is o for o in outputs):
            return module
    return ran[-1][0] if ran else None


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _check(
    ratio: float, importance: str, allocate: str | None, calibration: Batches | None, round_to: int | None
) -> None:
    if not 0.0 < ratio < 1.0:
        raise ParameterError(f"{{0}} {ratio} is outside the allowed range (0, 1).", "ratio")
    needs_data = criterion(importance).needs_calibration
    if allocate is not None and allocate not in ALLOCATIONS:
        raise ParameterError(
            f"{{0}} '{allocate}' is not known; choose None or one of: {', '.join(ALLOCATIONS)}.", "allocate"
        )
    if (needs_data or allocate == "csi") and not calibration:
        what = f"{{0}} '{importance}'" if needs_data else "{0}='csi'"
        raise ParameterError(
            f"{what} needs calibration batches ((images, labels) pairs), but none were given.",
            "importance" if needs_data else "allocate",
        )
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ParameterError(f"{{0}} {round_to!r} must be a positive integer or None.", "round_to")


def _resolve_ignored(
    model: nn.Module, work: nn.Module, ignored: Sequence[nn.Module | str] | None
) -> list[nn.Module]:
    """`ignored` (modules of `model`, or their paths) as the same modules of its copy `work`."""
    paths = {module: path for path, module in model.named_modules()}
    found = []
    for item in ignored or []:
        path = item if isinstance(item, str) else paths.get(item)
        if path is None:
            raise ParameterError(
                f"{{0}} holds a {type(item).__name__} that is not a module of the model.", "ignored_layers"
            )
        try:
            found.append(work.get_submodule(path))
        except AttributeError:
            raise ParameterError(
                f"{{0}} names '{path}', which is not a module of the model.", "ignored_layers"
            ) from None
    return found


def left_alone(
    model: nn.Module,
    work: nn.Module,
    ignored_layers: Sequence[nn.Module | str] | None,
    example_inputs: torch.Tensor | tuple,
) -> list[nn.Module]:
    """The modules of `work` (a copy of `model`) never pruned: `ignored_layers` (modules of `model`
    or their paths), the output layer, and every factorized layer's ``reduce`` (its rank)."""
    ignored = _resolve_ignored(model, work, ignored_layers)
    head = output_layer(work, example_inputs)
    ignored += [head] if head is not None else []
    return ignored + [m.reduce for m in work.modules() if isinstance(m, FACTORIZED)]


def group_layers(graph, group) -> list[nn.Module]:
    """The conv and linear layers whose output channels `group` (of `graph`) prunes, depthwise
    convs included, in group order, once each."""
    return list(
        dict.fromkeys(
            dep.target.module
            for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, _ROOTS)
        )
    )


def _only_ratios(work: nn.Module, graph, groups: list, only: Mapping[str, float]) -> dict[nn.Module, float]:
    """`only` ({layer path: ratio}) as `MetaPruner`'s ``pruning_ratio_dict``: each path must name a
    layer whose output channels a prunable group prunes, one path per group."""
    group_of = {layer: i for i, group in enumerate(groups) for layer in group_layers(graph, group)}
    ratios: dict[nn.Module, float] = {}
    named: dict[int, str] = {}
    for path, ratio in only.items():
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
            raise ParameterError(f"{{0}} gives '{path}' the ratio {ratio!r}, outside (0, 1).", "only")
        try:
            layer = work.get_submodule(path)
        except AttributeError:
            message = f"{{0}} names '{path}', which is not a module of the model."
            raise ParameterError(message, "only") from None
        if layer not in group_of:
            raise ParameterError(
                f"{{0}} names '{path}', whose output channels no prunable group prunes (the output layer "
                "and ignored layers are left alone).",
                "only",
            )
        if group_of[layer] in named:
            raise ParameterError(
                f"{{0}} names '{named[group_of[layer]]}' and '{path}', which prune the same group of "
                "channels; name one of them.",
                "only",
            )
        named[group_of[layer]] = path
        ratios[layer] = float(ratio)
    return ratios


def _sync_factorized(model: nn.Module) -> None:
    """Pruning resizes a factorized layer's factors in place; keep the wrapper's sizes in step."""
    for m in model.modules():
        if isinstance(m, FactorizedConv2d):
            m.in_channels, m.out_channels, m.rank = (
                m.reduce.in_channels,
                m.expand.out_channels,
                m.reduce.out_channels,
            )
        elif isinstance(m, FactorizedLinear):
            m.in_features, m.out_features, m.rank = (
                m.reduce.in_features,
                m.expand.out_features,
                m.reduce.out_features,
            )


def prune_model(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple,
    ratio: float = 0.5,
    importance: str = "l1",
    allocate: str | None = None,
    calibration: Batches | None = None,
    ignored_layers: Sequence[nn.Module | str] | None = None,
    round_to: int | None = None,
    *,
    seed: int = 0,
    only: Mapping[str, float] | None = None,
) -> nn.Module:
    """A pruned copy of `model` (which is not changed), in the train/eval modes it had.

    - example_inputs: one input batch to trace the graph, e.g. ``torch.zeros(1, 3, 32, 32)`` (a
      tensor, a tuple of the forward's arguments or a dict of its keyword arguments).
    - ratio: the fraction of each group's channels removed (with the uniform allocation).
    - importance: l1, l2, bn-scale, taylor, random or separation.
    - allocate: None / "uniform", or "csi": per-group ratios whose conv and linear MACs total those
      of uniform pruning at `ratio` (`allocate_any`).
    - calibration: (images, labels) batches, a list or a loader (read once); needed by separation,
      taylor and csi.
    - ignored_layers: modules of `model`, or their paths, never pruned (besides the output layer).
    - round_to: keep every pruned group's width a multiple of it.
    - seed: for the random importance; the global torch generator is left as it was.
    - only: {layer path: ratio}: prune only the groups of these layers' output channels, each by
      its ratio, and keep every other group (`ratio` is then unused); not with allocate='csi'.

    Every rebuilt module is marked (`compresskit.edits`), so ``compresskit.model_io.save`` records it.
    """
    if calibration is not None:  # every pass (scores, CSI) must see the same batches: a loader once
        calibration = [(x, y) for x, y in calibration]
    _check(ratio, importance, allocate, calibration, round_to)
    if only is not None and allocate == "csi":
        message = "{0} and {1}='csi' exclude each other: {0} gives each group its own ratio."
        raise ParameterError(message, "only", "allocate")
    work = copy.deepcopy(model)
    modes = {name: m.training for name, m in work.named_modules()}
    ignored = left_alone(model, work, ignored_layers, example_inputs)
    before = snapshot(work)
    graph = tp.DependencyGraph().build_dependency(work, example_inputs=example_inputs)
    groups = prunable_groups(graph, ignored)
    if not groups:
        raise CompresskitError(
            "the model has nothing to prune: every group of channels holds an ignored layer."
        )
    layers = list(
        dict.fromkeys(
            dep.target.module
            for g in groups
            for dep, _ in g
            if dep.handler in _OUT_HANDLERS and isinstance(dep.target.module, _ROOTS)
        )
    )
    taps = find_taps(work, graph, layers) if importance == "separation" or allocate == "csi" else {}
    ratios = None if only is None else _only_ratios(work, graph, groups, only)
    if allocate == "csi":
        assert calibration
        ratios = csi_group_ratios(work, graph, groups, taps, calibration, example_inputs, ratio, round_to)
    scorer = make_importance(importance, calibration, taps=taps)
    pruner = tp.pruner.MetaPruner(
        work,
        example_inputs,
        importance=scorer,
        pruning_ratio=ratio if only is None else 0.0,  # only: every group not named keeps its channels
        pruning_ratio_dict=ratios,
        ignored_layers=ignored,
        round_to=round_to,
    )
    if isinstance(scorer, GraphSeparationImportance):
        scorer.refresh(work)
    elif criterion(importance).needs_gradients:
        _accumulate_gradients(work, calibration or [])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pruner.step()
    work.zero_grad(set_to_none=True)
    _sync_factorized(work)
    mark_changed(work, before)
    for name, m in work.named_modules():
        m.training = modes.get(name, m.training)
    return work


def _accumulate_gradients(model: nn.Module, batches: Batches) -> None:
    """Cross-entropy gradients of the (logit) outputs summed over the batches, in eval mode."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        nn.functional.cross_entropy(model(x), y).backward()
    for module, training in modes.items():
        module.training = training
