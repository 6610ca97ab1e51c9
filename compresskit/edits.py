"""Structural edits: the modules of a model that compression rebuilt, recorded as plain JSON.

Pruning changes a layer's channel counts in place and low-rank replaces a layer by a factorized
pair. Either way the model no longer matches the architecture it was built from (a `ModelSpec` or a
factory such as ``torchvision.models:resnet18``). A checkpoint records those differences as a list
of edits, one per changed module::

    {"path": "layer1.0.conv1", "module": "Conv2d", "kwargs": {"in_channels": 32, ...}}

and `apply_edits` replays them on a freshly built model: each path is replaced by a new module of
that kind built from those keyword arguments, after which the saved state dict fits exactly. Only
the kinds in `KINDS` can be recorded (what pruning and low-rank change in VGG, ResNet, MobileNet and
compresskit's `ConvNet`, plus a few norm layers); their arguments are checked field by field before
anything is constructed, so a checkpoint cannot name any other class or argument.

Compression marks the modules it rebuilt (`mark_edited`, an attribute that survives
`copy.deepcopy`); `recorded_edits` reads each marked module's *current* arguments when a checkpoint
is written, so pruning a factorized model, or factorizing a pruned one, accumulates naturally.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from torch import nn

from compresskit.errors import CompresskitError
from compresskit.models import FactorizedConv2d, FactorizedLinear

EDITED_ATTR = "_compresskit_edited"
_PATH = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_MAX_SIZE = 1 << 24  # no channel count, kernel side or rank in a real network comes near this
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

# --------------------------------------------------------------------------- field checks
# Each check takes a JSON value and returns the value to pass to the constructor, or raises
# ValueError with what is allowed.


def _int(low: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _MAX_SIZE:
            raise ValueError(f"an integer from {low} to {_MAX_SIZE}")
        return value

    return check


def _ints(length: int, low: int) -> Callable[[object], tuple[int, ...]]:
    one = _int(low)

    def check(value: object) -> tuple[int, ...]:
        if not isinstance(value, (list, tuple)) or len(value) != length:
            raise ValueError(f"a list of {length} integers from {low}")
        return tuple(one(v) for v in value)

    return check


def _shape(value: object) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= 8:
        raise ValueError("a list of 1 to 8 positive integers")
    return tuple(_int(1)(v) for v in value)


def _padding(length: int) -> Callable[[object], tuple[int, ...] | str]:
    numbers = _ints(length, 0)

    def check(value: object) -> tuple[int, ...] | str:
        if value in ("same", "valid"):
            return str(value)
        return numbers(value)

    return check


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("a finite number")
    return float(value)


def _optional_float(value: object) -> float | None:
    return None if value is None else _float(value)


def _padding_mode(value: object) -> str:
    if value not in PADDING_MODES:
        raise ValueError(f"one of {', '.join(PADDING_MODES)}")
    return str(value)


# --------------------------------------------------------------------------- the kinds


@dataclass(frozen=True)
class Kind:
    """One module class a checkpoint may rebuild: its constructor's fields (name → check) and how
    to read those arguments back from a module of the class."""

    cls: type[nn.Module]
    fields: Mapping[str, Callable[[object], object]]
    describe: Callable[[nn.Module], dict]


def _conv_fields(n: int) -> dict[str, Callable[[object], object]]:
    return {
        "in_channels": _int(1),
        "out_channels": _int(1),
        "kernel_size": _ints(n, 1),
        "stride": _ints(n, 1),
        "padding": _padding(n),
        "dilation": _ints(n, 1),
        "groups": _int(1),
        "bias": _bool,
        "padding_mode": _padding_mode,
    }


def _describe_conv(m: nn.Module) -> dict:
    assert isinstance(m, nn.modules.conv._ConvNd)
    return {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": m.kernel_size,
        "stride": m.stride,
        "padding": m.padding,
        "dilation": m.dilation,
        "groups": m.groups,
        "bias": m.bias is not None,
        "padding_mode": m.padding_mode,
    }


def _describe_linear(m: nn.Module) -> dict:
    assert isinstance(m, nn.Linear)
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


def _describe_batch_norm(m: nn.Module) -> dict:
    assert isinstance(m, nn.modules.batchnorm._BatchNorm)
    return {
        "num_features": m.num_features,
        "eps": m.eps,
        "momentum": m.momentum,
        "affine": m.affine,
        "track_running_stats": m.track_running_stats,
    }


def _describe_layer_norm(m: nn.Module) -> dict:
    assert isinstance(m, nn.LayerNorm)
    return {
        "normalized_shape": m.normalized_shape,
        "eps": m.eps,
        "elementwise_affine": m.elementwise_affine,
        "bias": m.bias is not None,
    }


def _describe_group_norm(m: nn.Module) -> dict:
    assert isinstance(m, nn.GroupNorm)
    return {"num_groups": m.num_groups, "num_channels": m.num_channels, "eps": m.eps, "affine": m.affine}


def _describe_prelu(m: nn.Module) -> dict:
    assert isinstance(m, nn.PReLU)
    return {"num_parameters": m.num_parameters}


def _describe_factorized_conv(m: nn.Module) -> dict:
    # Read from the factors, not the wrapper's attributes: pruning resizes the factors in place.
    assert isinstance(m, FactorizedConv2d)
    reduce, expand = m.reduce, m.expand
    return {
        "in_channels": reduce.in_channels,
        "out_channels": expand.out_channels,
        "rank": reduce.out_channels,
        "bias": expand.bias is not None,
        "kernel_size": reduce.kernel_size,
        "stride": reduce.stride,
        "padding": reduce.padding,
        "dilation": reduce.dilation,
        "padding_mode": reduce.padding_mode,
    }


def _describe_factorized_linear(m: nn.Module) -> dict:
    assert isinstance(m, FactorizedLinear)
    return {
        "in_features": m.reduce.in_features,
        "out_features": m.expand.out_features,
        "rank": m.reduce.out_features,
        "bias": m.expand.bias is not None,
    }


_BATCH_NORM_FIELDS = {
    "num_features": _int(1),
    "eps": _float,
    "momentum": _optional_float,
    "affine": _bool,
    "track_running_stats": _bool,
}
_LINEAR_FIELDS = {"in_features": _int(1), "out_features": _int(1), "bias": _bool}

KINDS: dict[str, Kind] = {
    "Conv1d": Kind(nn.Conv1d, _conv_fields(1), _describe_conv),
    "Conv2d": Kind(nn.Conv2d, _conv_fields(2), _describe_conv),
    "Linear": Kind(nn.Linear, _LINEAR_FIELDS, _describe_linear),
    "BatchNorm1d": Kind(nn.BatchNorm1d, _BATCH_NORM_FIELDS, _describe_batch_norm),
    "BatchNorm2d": Kind(nn.BatchNorm2d, _BATCH_NORM_FIELDS, _describe_batch_norm),
    "LayerNorm": Kind(
        nn.LayerNorm,
        {"normalized_shape": _shape, "eps": _float, "elementwise_affine": _bool, "bias": _bool},
        _describe_layer_norm,
    ),
    "GroupNorm": Kind(
        nn.GroupNorm,
        {"num_groups": _int(1), "num_channels": _int(1), "eps": _float, "affine": _bool},
        _describe_group_norm,
    ),
    "PReLU": Kind(nn.PReLU, {"num_parameters": _int(1)}, _describe_prelu),
    "FactorizedConv2d": Kind(
        FactorizedConv2d,
        {**{k: v for k, v in _conv_fields(2).items() if k != "groups"}, "rank": _int(1)},
        _describe_factorized_conv,
    ),
    "FactorizedLinear": Kind(
        FactorizedLinear, {**_LINEAR_FIELDS, "rank": _int(1)}, _describe_factorized_linear
    ),
}
_KIND_OF_CLASS = {kind.cls: name for name, kind in KINDS.items()}


def _plain(value: object) -> object:
    """Tuples as lists, so a description equals its JSON round trip."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def describe(module: nn.Module) -> tuple[str, dict] | None:
    """(kind, constructor arguments as JSON values) that rebuild a module of this exact class and
    shapes, or None when the class is not one of `KINDS` (subclasses are not: their forward may
    differ)."""
    name = _KIND_OF_CLASS.get(type(module))
    if name is None:
        return None
    return name, {k: _plain(v) for k, v in KINDS[name].describe(module).items()}


def construct(kind: str, kwargs: object, where: str) -> nn.Module:
    """A new module of `kind` (a key of `KINDS`) from JSON `kwargs`, every field checked first.
    `where` starts the error sentence (e.g. "checkpoint x.pt, edit 'layer1.0.conv1'")."""
    if kind not in KINDS:
        raise CompresskitError(f"{where} has module kind '{kind}'; allowed kinds: {', '.join(KINDS)}.")
    spec = KINDS[kind]
    if not isinstance(kwargs, dict) or set(kwargs) != set(spec.fields):
        got = sorted(kwargs) if isinstance(kwargs, dict) else type(kwargs).__name__
        raise CompresskitError(
            f"{where} gives {kind} the arguments {got}; it needs exactly {sorted(spec.fields)}."
        )
    checked = {}
    for field, check in spec.fields.items():
        try:
            checked[field] = check(kwargs[field])
        except ValueError as exc:
            raise CompresskitError(
                f"{where} sets {kind}.{field} to {kwargs[field]!r}; it must be {exc}."
            ) from None
    try:
        return spec.cls(**checked)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise CompresskitError(f"{where} cannot build {kind}({checked}): {exc}") from None


# --------------------------------------------------------------------------- marking and recording


def mark_edited(module: nn.Module) -> None:
    """Record that compression rebuilt `module`: a checkpoint stores its arguments (`recorded_edits`)."""
    setattr(module, EDITED_ATTR, True)


def is_edited(module: nn.Module) -> bool:
    return bool(getattr(module, EDITED_ATTR, False))


def _own_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    tensors = {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}
    return {k: tuple(v.shape) for k, v in tensors.items() if v is not None}


def snapshot(model: nn.Module) -> dict[nn.Module, tuple]:
    """Every module's description and own tensor shapes, to compare after an in-place change."""
    return {m: (describe(m), _own_shapes(m)) for m in model.modules()}


def mark_changed(model: nn.Module, before: Mapping[nn.Module, tuple]) -> list[str]:
    """Mark every module whose description or own tensor shapes differ from `before` (a `snapshot`
    of the same model); returns their paths."""
    changed = []
    for path, module in model.named_modules():
        if module in before and before[module] != (describe(module), _own_shapes(module)):
            mark_edited(module)
            changed.append(path)
    return changed


def recorded_edits(model: nn.Module) -> list[dict]:
    """The edits of every marked module, in `named_modules` order, with its current arguments.
    A marked module inside a marked one is covered by its parent's arguments and left out. Raises
    CompresskitError for a marked module whose class is not one of `KINDS`."""
    edits: list[dict] = []
    for path, module in model.named_modules():
        if not path or not is_edited(module):
            continue
        if any(path.startswith(e["path"] + ".") for e in edits):
            continue
        described = describe(module)
        if described is None:
            raise CompresskitError(
                f"module '{path}' ({type(module).__name__}) was changed by compression, and a checkpoint can "
                f"only rebuild these kinds: {', '.join(KINDS)}."
            )
        edits.append({"path": path, "module": described[0], "kwargs": described[1]})
    return edits


def check_edits(edits: object, where: str) -> list[dict]:
    """The edits of a checkpoint as a list of ``{path, module, kwargs}`` dicts, their structure
    checked (no module is built): a path of dotted names, a kind of `KINDS`, a dict of arguments."""
    if not isinstance(edits, list):
        raise CompresskitError(f"{where} has edits that are not a list.")
    for i, edit in enumerate(edits):
        if not isinstance(edit, dict) or set(edit) != {"path", "module", "kwargs"}:
            raise CompresskitError(f"{where} has edit {i} that is not a {{path, module, kwargs}} record.")
        if not isinstance(edit["path"], str) or not _PATH.match(edit["path"]):
            raise CompresskitError(
                f"{where} has edit {i} whose path {edit['path']!r} is not a dotted module path."
            )
        if edit["module"] not in KINDS:
            raise CompresskitError(
                f"{where} has edit {i} of kind {edit['module']!r}; allowed kinds: {', '.join(KINDS)}."
            )
        if not isinstance(edit["kwargs"], dict):
            raise CompresskitError(f"{where} has edit {i} whose kwargs are not a dict.")
    return edits


def apply_edits(model: nn.Module, edits: Iterable[dict], where: str) -> nn.Module:
    """Replace each edit's path in `model` (in place, in order) by a new module of its kind and
    arguments, marked as edited; returns `model`. The replaced module must exist and be a child
    registered under that name."""
    for edit in edits:
        path = edit["path"]
        parent_path, _, name = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_path)
        except AttributeError:
            parent = None
        if parent is None or name not in parent._modules:
            raise CompresskitError(f"{where} edits '{path}', which is not a module of the model it builds.")
        new = construct(edit["module"], edit["kwargs"], f"{where}, edit '{path}'")
        setattr(parent, name, new)
        mark_edited(new)
    return model
