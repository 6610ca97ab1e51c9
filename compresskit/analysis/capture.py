"""Forward hooks that capture the outputs of chosen layers, all of them in one forward pass.

`select_layers(model, "blocks")` picks the layers; `LayerCapture` hooks them, and after every
``model(x)`` its ``outputs`` dict holds each chosen layer's output for that batch (detached copies,
so later in-place operations such as ``ReLU(inplace=True)`` cannot change them).

Layer selections:

* ``blocks`` (default): the output of every conv block after its activation (`ConvNet.named_blocks`
  kind ``block``: ``Sequential(conv, [bn], relu)``) and of every linear layer of the head (``fc``);
* ``pools``: every max-pool output and every linear layer (the VGG11 layer-wise study's view);
* ``all``: every leaf module;
* anything else is a regular expression matched (``re.search``) against module paths such as
  ``features.3`` or ``head.1``.

Names: blocks are ``block1, block2, …``, pools ``pool1, …``, linear layers ``fc1, …`` (a factorized
layer counts as the one layer it replaces), numbered in model order whatever the selection, exactly
as `ConvNet.named_blocks` names them; other modules keep their path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compresskit.models import ConvNet

LAYER_PRESETS = ("blocks", "pools", "all")


@dataclass(frozen=True)
class Layer:
    """A module chosen for capture: display `name`, its `path` in ``model.named_modules()``."""

    name: str
    path: str
    module: nn.Module


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


def select_layers(model: ConvNet, selection: str = "blocks") -> list[Layer]:
    """The layers of `model` that `selection` names (a preset or a regex over module paths).

    Raises ValueError for an invalid regular expression or a selection that matches nothing.
    """
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
            raise ValueError(
                f"--layers '{selection}' is neither a preset ({', '.join(LAYER_PRESETS)}) "
                f"nor a valid regular expression ({exc})."
            ) from None
        chosen = [r for r in rows if pattern.search(r[1])]
    if not chosen:
        paths = ", ".join(r[1] for r in rows[:12]) + (", …" if len(rows) > 12 else "")
        raise ValueError(
            f"--layers '{selection}' matches no layer of this model; use a preset "
            f"({', '.join(LAYER_PRESETS)}) or a regex over module paths such as: {paths}."
        )
    return [Layer(name, path, module) for name, path, module, _ in chosen]


class LayerCapture:
    """Context manager: hooks on `layers`; after each forward, ``outputs[name]`` is that layer's
    output for the batch (a detached copy, same shape as the module returned). With `consume`,
    nothing is kept: ``consume(name, output)`` is called inside the forward pass, the moment the
    layer returns, and must finish with the tensor there (a later in-place operation such as
    ``ReLU(inplace=True)`` may overwrite it); that saves the copy of every captured output.

    >>> with LayerCapture(select_layers(model)) as capture:
    ...     model(x)
    ...     capture.outputs["block1"].shape   # B×C×H×W
    """

    def __init__(
        self, layers: list[Layer], consume: Callable[[str, torch.Tensor], None] | None = None
    ) -> None:
        self.layers = layers
        self.consume = consume
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {name} returned {type(output).__name__}, not a tensor")
            if self.consume is not None:
                self.consume(name, output.detach())
            else:
                self.outputs[name] = output.detach().clone()

        return hook

    def __enter__(self) -> LayerCapture:
        for layer in self.layers:
            self._handles.append(layer.module.register_forward_hook(self._hook(layer.name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def forward(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run ``model(x)`` once and return the captured outputs (a new dict each call)."""
        self.outputs = {}
        model(x)
        return self.outputs


def iterate_layer_outputs(
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    layers: list[Layer],
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """For each ``(x, y)`` batch: one forward pass of `model` (in eval mode, no grad), yielding
    ``({name: output}, y)``."""
    model.eval()
    with LayerCapture(layers) as capture, torch.inference_mode():
        for x, y in batches:
            yield capture.forward(model, x), y


def consume_layer_outputs(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    layers: list[Layer],
    consume: Callable[[str, torch.Tensor, torch.Tensor, int], None],
    *,
    after_batch: Callable[[], None] | None = None,
) -> int:
    """One forward pass of `model` (eval mode, no grad) per ``(x, y)`` batch, calling
    ``consume(name, output, y, start)`` for each chosen layer as soon as it returns (`start`: the
    index of the batch's first sample among all batches); no output is copied or kept (see
    `LayerCapture`). `after_batch` is called after every batch. Returns the number of samples."""
    model.eval()
    start = 0
    labels = torch.empty(0, dtype=torch.int64)

    def hook(name: str, output: torch.Tensor) -> None:
        consume(name, output, labels, start)

    with LayerCapture(layers, consume=hook), torch.inference_mode():
        for x, y in batches:
            labels = y
            model(x)
            start += len(y)
            if after_batch is not None:
                after_batch()
    return start
