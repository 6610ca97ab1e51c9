"""Save and load any model, compressed or not: ``save(model, path, factory=...)`` and ``load(path)``.

A saved model is its architecture (a compresskit `ModelSpec`, or a factory such as
``"torchvision.models:resnet18"`` with JSON kwargs), the structural edits compression made to it
(recorded on the model by `compresskit.compress` pruning and low-rank, see `compresskit.edits`),
and its weights: a version-2 checkpoint (`compresskit.checkpoint`). `load` rebuilds the
architecture, replays the edits and loads the weights strictly, with ``torch.load(weights_only=True)``
and without torch-pruning; it reads version-1 checkpoints (every training run's) as well.

>>> pruned = ck.prune(torchvision.models.resnet18(num_classes=10), torch.zeros(1, 3, 32, 32))
>>> ck.save(pruned, "pruned.pt", factory="torchvision.models:resnet18", factory_kwargs={"num_classes": 10})
>>> same = ck.load("pruned.pt")
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compresskit.architecture import Architecture, Trust, check_factory_kwargs, check_factory_name
from compresskit.checkpoint import ARCHITECTURE_ATTR, load_checkpoint, save_model_checkpoint
from compresskit.edits import KINDS, apply_edits, recorded_edits
from compresskit.errors import CompresskitError
from compresskit.models import ConvNet, ModelSpec


def architecture_of(model: nn.Module) -> Architecture | None:
    """The architecture a model remembers: the one it was loaded from (`load`), else a `ConvNet`'s
    own spec; None when it knows none (pass ``factory=`` or ``spec=`` to `save`)."""
    remembered = model.__dict__.get(ARCHITECTURE_ATTR)
    if isinstance(remembered, Architecture):
        return remembered
    if isinstance(model, ConvNet):
        return Architecture(spec=model.spec)
    return None


def _architecture(
    model: nn.Module, factory: str | None, factory_kwargs: dict | None, spec: ModelSpec | None
) -> Architecture:
    if factory is not None and spec is not None:
        raise CompresskitError("save takes factory= or spec=, not both.")
    if factory is None and factory_kwargs is not None:
        raise CompresskitError("save got factory_kwargs= without the factory= they are for.")
    if factory is not None:
        name = check_factory_name(factory, "save(factory=...)")
        return Architecture(
            factory=name, kwargs=check_factory_kwargs(factory_kwargs or {}, "save(factory=...)")
        )
    if spec is not None:
        if not isinstance(spec, ModelSpec):
            raise CompresskitError(
                f"save(spec=...) must be a compresskit ModelSpec, not {type(spec).__name__}."
            )
        spec.validate()
        return Architecture(spec=spec)
    known = architecture_of(model)
    if known is None:
        raise CompresskitError(
            f"save needs factory='module:function' (plus factory_kwargs) or spec= to record how to rebuild "
            f"this {type(model).__name__}."
        )
    return known


def _check_rebuilds(model: nn.Module, architecture: Architecture, edits: list[dict]) -> None:
    """Raise CompresskitError unless the architecture with `edits` has exactly the model's state-dict
    keys and tensor shapes (what `load` needs for a strict load)."""
    where = f"save ({architecture.describe()})"
    skeleton = architecture.build(trust_factory=architecture.factory, where=where)
    apply_edits(skeleton, edits, where)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    hint = (
        "only changes made by compresskit's prune and lowrank to modules of these kinds are recorded: "
        + ", ".join(KINDS)
    )
    for key in sorted(set(want) | set(got)):
        if want.get(key) != got.get(key):
            raise CompresskitError(
                f"save cannot record this model: {architecture.describe()} with {len(edits)} recorded "
                f"edits gives '{key}' the shape {got.get(key, 'missing')} but the model has "
                f"{want.get(key, 'no such tensor')}; {hint}."
            )


def save(
    model: nn.Module,
    path: str | Path,
    *,
    factory: str | None = None,
    factory_kwargs: dict | None = None,
    spec: ModelSpec | None = None,
    meta: dict | None = None,
) -> Path:
    """Write `model` as a version-2 checkpoint at `path` (atomically) and return the path.

    The architecture is `factory` (``"module:function"``, called with the JSON `factory_kwargs`) or a
    compresskit `spec`; without either, the one the model remembers (`architecture_of`). Every
    module compression rebuilt is recorded as an edit. Before writing, the architecture is built and
    the edits applied to check that the result has the model's exact tensor names and shapes, so a
    saved file always loads; this imports the factory's module (you named it). `meta`: JSON values.
    """
    architecture = _architecture(model, factory, factory_kwargs, spec)
    edits = recorded_edits(model)
    _check_rebuilds(model, architecture, edits)
    return save_model_checkpoint(path, architecture, edits, model, meta)


def load(path: str | Path, *, trust_factory: Trust = None, device: torch.device | str = "cpu") -> nn.Module:
    """The model saved at `path` (a checkpoint of either version, or a run directory), in eval mode
    on `device`. A factory whose module lies outside ``torchvision.models``, ``timm`` and
    ``compresskit.models`` is refused without importing it, unless `trust_factory` names it
    (``"module:function"`` or a list of such). Never runs code stored in the file."""
    return load_checkpoint(path).build(device, trust_factory=trust_factory)
