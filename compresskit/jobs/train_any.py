"""``train --model torchvision:NAME``: the model side of training a torchvision classification model.

The model is ``compresskit.models:torchvision_model`` (`compresskit.zoo`) called with ``{"name",
"num_classes", "in_channels", "cifar_stem", "kwargs"}``: the classes and channels come from the
dataset (a 1-channel dataset gets a first conv with one input channel), ``kwargs`` from
``--model-kwargs``. The run's ``config.json`` records that architecture (``model.architecture``),
its checkpoints are format 2 holding it, and ``--resume`` and every later job rebuild it from there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from compresskit.architecture import Architecture, check_factory_kwargs
from compresskit.errors import CompresskitError
from compresskit.jobs.anymodel import TORCHVISION_FACTORY, TORCHVISION_PREFIX, output_count
from compresskit.models import count_parameters
from compresskit.rundir import ModelRecord
from compresskit.train.config import conv_layer_count, has_batch_norm
from compresskit.zoo import check_torchvision_name

if TYPE_CHECKING:
    from compresskit.jobs.train import ModelOptions

TORCHVISION_INIT = "torchvision"  # ModelRecord.init: the model's own initialisation


def is_torchvision(options: ModelOptions) -> bool:
    return options.name.startswith(TORCHVISION_PREFIX)


def check_model_options(options: ModelOptions, *, layerwise: bool) -> nn.Module | None:
    """Refuse flags that do not fit the kind of model asked for; for a torchvision model, also build
    it once (3 channels, 2 classes) so that a bad name, --model-kwargs or --cifar-stem is refused
    before any data is loaded, and return that model (None for compresskit's own)."""
    if not is_torchvision(options):
        if options.kwargs is not None or options.cifar_stem:
            flag = "--model-kwargs" if options.kwargs is not None else "--cifar-stem"
            raise CompresskitError(f"{flag} is for --model torchvision:NAME, not --model {options.name}.")
        return None
    name = options.name.removeprefix(TORCHVISION_PREFIX)
    check_torchvision_name(name)
    defaults = {"width": 1.0, "head": "linear", "dropout": 0.0, "global_pool": False, "init": "kaiming"}
    changed = [key for key, value in defaults.items() if getattr(options, key) != value]
    if changed:
        flags = ", ".join("--" + key.replace("_", "-") for key in changed)
        raise CompresskitError(
            f"{flags} shape compresskit's own models; torchvision:{name} is built as torchvision defines "
            "it (pass its own arguments with --model-kwargs)."
        )
    if layerwise:
        raise CompresskitError(
            "--layerwise grows compresskit's own models block by block, not torchvision's."
        )
    return architecture(options, num_classes=2, in_channels=3).build()


def architecture(options: ModelOptions, *, num_classes: int, in_channels: int) -> Architecture:
    """The factory call that builds `options`' torchvision model for the dataset."""
    kwargs = {
        "name": options.name.removeprefix(TORCHVISION_PREFIX),
        "num_classes": num_classes,
        "in_channels": in_channels,
        "cifar_stem": options.cifar_stem,
        "kwargs": options.kwargs or {},
    }
    return Architecture(factory=TORCHVISION_FACTORY, kwargs=check_factory_kwargs(kwargs, "--model-kwargs"))


def torchvision_traits(options: ModelOptions) -> tuple[bool, int]:
    """Whether `options`' torchvision model has batch norm, and its number of conv layers, from the
    model `check_model_options` builds (the global random generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        model = check_model_options(options, layerwise=False)
    assert model is not None
    return has_batch_norm(model), conv_layer_count(model)


def build_torchvision(
    options: ModelOptions, *, num_classes: int, in_channels: int, image_size: int, seed: int
) -> tuple[Architecture, nn.Module, ModelRecord]:
    """The architecture, the model initialised from `seed` (the global generator is left as it
    was), and its `ModelRecord`; refused when the model does not give `num_classes` logits for
    `in_channels`×`image_size`² images."""
    arch = architecture(options, num_classes=num_classes, in_channels=in_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = arch.build()
    shape = (in_channels, image_size, image_size)
    outputs = output_count(model, shape, torch.device("cpu"), f"--model {options.name}")
    if outputs != num_classes:
        raise CompresskitError(
            f"--model {options.name} gives {outputs} outputs, but the dataset has {num_classes} classes."
        )
    record = ModelRecord(
        name=options.name, width=1.0, head="", dropout=0.0, global_pool=False, spec={},
        parameters=count_parameters(model), init=TORCHVISION_INIT, architecture=arch.to_dict(),
    )  # fmt: skip
    return arch, model, record
