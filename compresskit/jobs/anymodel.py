"""What the jobs need to know about a run's model, whatever it is.

A compresskit `ConvNet` is described by its `ModelSpec` and saved as checkpoint format 1, as it
always was. Any other model (``train --model torchvision:NAME``, ``import --factory MOD:FN``, or a
ConvNet compressed by the any-model path) is an `Architecture` (a ``module:function`` factory and
its JSON kwargs) plus the edits compression recorded on it, saved as format 2. Its input shape is
not in the checkpoint's architecture, so every checkpoint the jobs write for it records
``meta["input_shape"]`` ([C, H, W]), and a run's ``config.json`` has it from the data record
(channels = the length of the normalisation mean, side = ``image_size``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compresskit.architecture import Architecture
from compresskit.checkpoint import Checkpoint, save_checkpoint, save_model_checkpoint
from compresskit.edits import recorded_edits
from compresskit.errors import CompresskitError
from compresskit.models import ModelSpec
from compresskit.rundir import RunConfig, read_config

TORCHVISION_FACTORY = "compresskit.models:torchvision_model"
TORCHVISION_PREFIX = "torchvision:"  # --model torchvision:NAME


def is_convnet(ckpt: Checkpoint) -> bool:
    """Whether `ckpt` is a compresskit ConvNet that its spec alone describes (the jobs' ConvNet
    paths: spec-based pruning, depth, sensitivity); False for a factory or an edited model."""
    return ckpt.spec is not None and not ckpt.edits


def factory_label(factory: str | None, kwargs: dict) -> str:
    """A short name for a factory model: ``torchvision:resnet18`` for compresskit's torchvision
    factory, else the factory itself."""
    if factory == TORCHVISION_FACTORY:
        return f"{TORCHVISION_PREFIX}{kwargs.get('name')}"
    return str(factory)


def model_name(ckpt: Checkpoint) -> str:
    """The spec's name (``vgg11_bn``) or `factory_label`."""
    if ckpt.spec is not None:
        return ckpt.spec.name
    return factory_label(ckpt.factory, ckpt.factory_kwargs)


def config_architecture(config: RunConfig) -> Architecture:
    """The architecture a run's ``config.json`` records: its factory, else its ConvNet spec."""
    if config.model.architecture is not None:
        return Architecture.from_dict(config.model.architecture, "config.json")
    return Architecture(spec=ModelSpec.from_dict(config.model.spec))


def input_shape(config: RunConfig) -> tuple[int, int, int]:
    """(C, H, W) of one input image of a run: its data's channels and ``image_size``."""
    size = int(config.data.image_size)
    return len(config.data.mean), size, size


def checkpoint_input_shape(ckpt: Checkpoint) -> tuple[int, int, int]:
    """(C, H, W) of one input of `ckpt`'s model: from its spec, its ``meta["input_shape"]``, or the
    ``config.json`` of the run directory it sits in."""
    if ckpt.spec is not None:
        return ckpt.spec.in_channels, ckpt.spec.input_size, ckpt.spec.input_size
    shape = ckpt.meta.get("input_shape")
    if isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape):
        return shape[0], shape[1], shape[2]
    assert ckpt.path is not None
    return input_shape(read_config(ckpt.path.parent))


def save_run_checkpoint(
    path: Path,
    what: ModelSpec | Architecture,
    model: nn.Module | dict,
    meta: dict,
    *,
    training: dict | None = None,
    edits_of: nn.Module | None = None,
) -> Path:
    """A ConvNet spec: checkpoint format 1, as every run has written. An architecture: format 2 with
    the edits recorded on `edits_of` (default `model`; give it when `model` is a state dict)."""
    if isinstance(what, ModelSpec):
        return save_checkpoint(path, what, model, meta, training=training)
    holder = edits_of if edits_of is not None else model
    assert isinstance(holder, nn.Module)
    return save_model_checkpoint(path, what, recorded_edits(holder), model, meta, training=training)


def output_count(model: nn.Module, shape: tuple[int, int, int], device: torch.device, where: str) -> int:
    """The number of outputs (classes) of `model` for one input of `shape`, from one forward pass
    in eval mode; CompresskitError naming `where` when the model does not take that input or does
    not return one row of logits."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *shape, device=device))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompresskitError(
            f"{where} does not take {shape[0]}×{shape[1]}×{shape[2]} images ({first})."
        ) from None
    finally:
        for module, training in modes.items():
            module.training = training
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        what = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CompresskitError(f"{where} returns {what} for 2 images, not a 2×classes tensor of logits.")
    return int(out.shape[1])
