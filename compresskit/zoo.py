"""torchvision classification models as compresskit builds them: `torchvision_model`, the factory
behind ``compresskit train --model torchvision:NAME``.

A checkpoint names it as ``compresskit.models:torchvision_model`` (re-exported there: the trusted
module), with JSON keyword arguments such as ``{"name": "resnet18", "num_classes": 10,
"in_channels": 3, "cifar_stem": true, "kwargs": {}}``, so loading rebuilds the exact architecture
without trusting any other module. Weights are never downloaded (``weights=None``); a checkpoint
carries its own.

Two changes adapt an ImageNet architecture to small images and datasets:

* ``cifar_stem``: a 7×7 stride-2 stem conv followed by a max-pool (a ResNet's ``conv1`` and
  ``maxpool``) becomes a 3×3 stride-1 conv (padding 1, no bias, the same output channels) and an
  ``nn.Identity``, so a 32×32 image is not cut to 8×8 before the first block;
* ``in_channels`` other than 3 (a grey-scale dataset such as digits or mnist): the first conv of
  the model is rebuilt with that many input channels (same geometry and output channels).
"""

from __future__ import annotations

from torch import nn

from compresskit.errors import CompresskitError, ParameterError

LIST_HINT = 'python -c "import torchvision; print(torchvision.models.list_models(module=torchvision.models))"'
_DOWNLOADS = ("weights", "pretrained", "weights_backbone", "pretrained_backbone")


def torchvision_names() -> list[str]:
    """The classification models torchvision can build (``torchvision.models.list_models``)."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def check_torchvision_name(name: object) -> str:
    """`name` if torchvision builds a classification model of that name, else CompresskitError."""
    if not isinstance(name, str) or name not in torchvision_names():
        raise ParameterError(
            f"{{0}} must name a torchvision classification model (list them with: {LIST_HINT}); "
            f"got {name!r}.",
            "name",
        )
    return name


def torchvision_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    cifar_stem: bool = False,
    kwargs: dict | None = None,
) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)`` with
    randomly initialised weights (from the global torch generator), then the optional small-image
    stem (`cifar_stem`) and first conv for `in_channels` input channels (see the module docstring).
    """
    import torchvision

    check_torchvision_name(name)
    if not isinstance(kwargs, (dict, type(None))) or not all(isinstance(k, str) for k in kwargs or {}):
        raise ParameterError(f"{{0}} must be a dict whose keys are argument names; got {kwargs!r}.", "kwargs")
    extra = dict(kwargs or {})
    downloads = [k for k in _DOWNLOADS if extra.get(k) not in (None, False)]
    if downloads or "num_classes" in extra:
        raise ParameterError(
            f"{{0}} sets {', '.join(downloads) or 'num_classes'}, which compresskit sets itself "
            "(no weights are downloaded; the classes come from the dataset).",
            "kwargs",
        )
    for key in _DOWNLOADS:  # set to None or False: nothing to download, torchvision's default
        extra.pop(key, None)
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise CompresskitError(f"in_channels {in_channels!r} must be a positive integer.")
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{{0}} do not fit torchvision's {name}: {exc}", "kwargs") from None
    if cifar_stem:
        _cifar_stem(model, name)
    if in_channels != 3:
        _first_conv_channels(model, name, in_channels)
    return model


def _cifar_stem(model: nn.Module, name: str) -> None:
    conv, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    is_stem = (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (7, 7)
        and conv.stride == (2, 2)
        and conv.groups == 1
        and isinstance(pool, nn.MaxPool2d)
    )
    if not is_stem:
        raise ParameterError(
            f"{{0}} replaces a 7×7 stride-2 conv1 and the maxpool after it (as in ResNets), "
            f"which torchvision's {name} does not have; leave {{0}} off.",
            "cifar_stem",
        )
    model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def _first_conv_channels(model: nn.Module, name: str, in_channels: int) -> None:
    path, conv = next(((p, m) for p, m in model.named_modules() if isinstance(m, nn.Conv2d)), ("", None))
    if type(conv) is not nn.Conv2d or conv.groups != 1 or conv.in_channels != 3:
        raise CompresskitError(
            f"torchvision's {name} does not start with a plain 3-channel conv to adapt to "
            f"{in_channels}-channel images; use a 3-channel dataset."
        )
    new = nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
    )  # fmt: skip
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
