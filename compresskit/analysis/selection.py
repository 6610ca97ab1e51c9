"""Which modules of a model the analysis captures: `select_layers(model, layers)`.

A compresskit `ConvNet` keeps its own names and presets (unchanged):

* ``blocks`` (its default): the output of every conv block after its activation
  (`ConvNet.named_blocks` kind ``block``: ``Sequential(conv, [bn], relu)``) and of every linear
  layer of the head (``fc``);
* ``pools``: every max-pool output and every linear layer (the VGG11 layer-wise study's view);
* ``all``: every leaf module;
* any other string is a regular expression matched with ``re.search`` against module paths such
  as ``features.3`` or ``head.1``.

Blocks are named ``block1, block2, …``, pools ``pool1, …``, linear layers ``fc1, …`` (a factorized
layer counts as the one layer it replaces), numbered in model order whatever the selection, exactly
as `ConvNet.named_blocks` names them; other modules keep their path.

Any other `nn.Module` (a torchvision ResNet, MobileNet, …) is read from ``model.named_modules()``;
every layer is named by its module path (``layer1.0.conv2``):

* ``all`` (its default): every *unit* — a leaf module (one without children), or a compresskit
  factorized layer (`models.FACTORIZED`, counted as the one layer it replaces) — except
  ``nn.Identity`` and the dropout modules (both pass their input on unchanged in eval mode);
  a unit that does not run in the forward pass or returns no tensor (an ``nn.LSTM``'s tuple, the
  ``out_proj`` that ``nn.MultiheadAttention`` only reads the weights of) is left out when the
  layers are probed (`capture.probe_layers`);
* ``convs``: every convolution (``nn.Conv1d/2d/3d``) and ``nn.Linear`` unit, factorized ones
  included;
* ``stages``: every direct child of the model (for a ResNet: ``conv1, bn1, relu, maxpool,
  layer1…layer4, avgpool, fc``), Identity and dropout left out, as above;
* any other string is a regular expression matched with ``re.search`` (a match anywhere in the
  path: anchor it with ``^…$`` for a full match) against every module path, containers included;
* a list (or tuple) of module paths takes exactly those modules, in the order given.

A module chosen by a regular expression or a list must run in the forward pass and return a tensor,
or the probe refuses it; a preset's unit that does not is left out instead. A ConvNet takes a list of
paths too (its blocks keep their names). Bad input raises `CompresskitError` naming ``layers``;
a ConvNet's bad preset or regex a `ParameterError`, also a ValueError as it always was.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from compresskit.errors import CompresskitError, ParameterError
from compresskit.models import FACTORIZED, ConvNet

LAYER_PRESETS = ("blocks", "pools", "all")
GENERIC_PRESETS = ("all", "convs", "stages")

_PASS_THROUGH = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.FeatureAlphaDropout,
)  # fmt: skip
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, *FACTORIZED)
_SHOWN_PATHS = 8  # how many valid paths an error message lists


@dataclass(frozen=True)
class Layer:
    """A module chosen for capture: display `name`, its `path` in ``model.named_modules()``.

    `calls` is how many times the module runs in one forward pass (1 unless `capture.probe_layers`
    found more, e.g. a ReLU module a ResNet block applies twice); the capture keeps the output of
    the last of them. `optional`: a preset's candidate, left out by the probe (rather than refused)
    when it does not run or returns no tensor.
    """

    name: str
    path: str
    module: nn.Module
    calls: int = 1
    optional: bool = False


def named_layers(model: ConvNet) -> list[tuple[str, str, nn.Module, str | None]]:
    """Every module of `model` in order as ``(name, path, module, kind)``: the blocks of
    `ConvNet.named_blocks` under their names (``block1``, ``pool1``, ``fc1``…) with their kind
    (block, pool or fc), every other module under its path with kind None. The root module itself
    is left out."""
    blocks = {block.path: block for block in model.named_blocks()}
    rows: list[tuple[str, str, nn.Module, str | None]] = []
    for path, module in model.named_modules():
        if not path:
            continue
        block = blocks.get(path)
        rows.append((block.name, path, module, block.kind) if block else (path, path, module, None))
    return rows


def select_layers(model: nn.Module, layers: str | Sequence[str] | None = None) -> list[Layer]:
    """The layers of `model` that `layers` names: a preset, a regular expression over module paths,
    or a list of module paths (see the module docstring). None is the model's default: ``blocks``
    for a `ConvNet`, ``all`` for any other module.

    Raises `CompresskitError` for an unknown path, an invalid regular expression or one that
    matches nothing (a ConvNet's bad preset or regex: `ParameterError`, a ValueError as before).
    """
    if not isinstance(model, nn.Module):
        raise CompresskitError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if layers is not None and not isinstance(layers, str):
        return _select_paths(model, layers)
    if isinstance(model, ConvNet):
        return _select_convnet(model, "blocks" if layers is None else layers)
    return _select_generic(model, "all" if layers is None else layers)


def _select_convnet(model: ConvNet, selection: str) -> list[Layer]:
    rows = named_layers(model)
    if selection == "blocks":
        chosen = [r for r in rows if r[3] in ("block", "fc")]
    elif selection == "pools":
        chosen = [r for r in rows if r[3] in ("pool", "fc")]
    elif selection == "all":
        chosen = [r for r in rows if not any(True for _ in r[2].children())]
    else:
        try:
            pattern = re.compile(selection)
        except re.error as exc:
            raise ParameterError(
                f"{{0}} '{selection}' is neither a preset ({', '.join(LAYER_PRESETS)}) "
                f"nor a valid regular expression ({exc}).",
                "layers",
            ) from None
        chosen = [r for r in rows if pattern.search(r[1])]
    if not chosen:
        paths = ", ".join(r[1] for r in rows[:12]) + (", …" if len(rows) > 12 else "")
        raise ParameterError(
            f"{{0}} '{selection}' matches no layer of this model; use a preset "
            f"({', '.join(LAYER_PRESETS)}) or a regex over module paths such as: {paths}.",
            "layers",
        )
    return [Layer(name, path, module) for name, path, module, _ in chosen]


def units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every unit of `model` in ``named_modules`` order: the leaf modules, and
    each compresskit factorized layer as one unit (its ``reduce``/``expand`` children left out)."""
    found: list[tuple[str, nn.Module]] = []
    inside: str | None = None  # path of the factorized layer whose children are being skipped
    for path, module in model.named_modules():
        if not path or (inside is not None and path.startswith(inside + ".")):
            continue
        inside = path if isinstance(module, FACTORIZED) else None
        if inside is not None or not any(True for _ in module.children()):
            found.append((path, module))
    return found


def _select_generic(model: nn.Module, selection: str) -> list[Layer]:
    if selection == "all":
        chosen = [(p, m) for p, m in units(model) if not isinstance(m, _PASS_THROUGH)]
    elif selection == "convs":
        chosen = [(p, m) for p, m in units(model) if isinstance(m, _CONVS)]
    elif selection == "stages":
        chosen = [(p, m) for p, m in model.named_children() if not isinstance(m, _PASS_THROUGH)]
    else:
        try:
            pattern = re.compile(selection)
        except re.error as exc:
            raise CompresskitError(
                f"layers '{selection}' is neither a preset ({', '.join(GENERIC_PRESETS)}) nor a valid "
                f"regular expression ({exc}); module paths of this model include: {_some_paths(model)}."
            ) from None
        chosen = [(p, m) for p, m in model.named_modules() if p and pattern.search(p)]
        return _checked([Layer(p, p, m) for p, m in chosen], selection, model)
    return _checked([Layer(p, p, m, optional=True) for p, m in chosen], selection, model)


def _select_paths(model: nn.Module, paths: Sequence[str]) -> list[Layer]:
    if not all(isinstance(p, str) for p in paths):
        raise CompresskitError(
            f"layers must be a preset name, a regular expression or a list of module paths (strings), "
            f"got {paths!r}."
        )
    modules = dict(model.named_modules())
    names = {row[1]: row[0] for row in named_layers(model)} if isinstance(model, ConvNet) else {}
    chosen = []
    for path in dict.fromkeys(paths):
        module = modules.get(path) if path else None
        if module is None:
            raise CompresskitError(
                f"layers: '{path}' is not a module path of this model; paths include: {_some_paths(model)}."
            )
        chosen.append(Layer(names.get(path, path), path, module))
    return _checked(chosen, list(paths), model)


def _checked(chosen: list[Layer], selection: object, model: nn.Module) -> list[Layer]:
    if not chosen:
        raise CompresskitError(
            f"layers {selection!r} matches no module of this model; use a preset "
            f"({', '.join(GENERIC_PRESETS)}), a regular expression over module paths or a list of "
            f"paths, such as: {_some_paths(model)}."
        )
    return chosen


def _some_paths(model: nn.Module) -> str:
    """A few module paths of `model` for an error message: the direct children, then the units,
    the first `_SHOWN_PATHS` of them named and the rest counted."""
    paths = list(dict.fromkeys([p for p, _ in model.named_children()] + [p for p, _ in units(model)]))
    if not paths:
        return "(none: the model has no submodules)"
    more = len(paths) - _SHOWN_PATHS
    return ", ".join(paths[:_SHOWN_PATHS]) + (f" and {more} more" if more > 0 else "")
