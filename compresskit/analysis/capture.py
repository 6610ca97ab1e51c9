"""Forward hooks that capture the outputs of chosen layers, all of them in one forward pass.

`select_layers` (in `selection`, re-exported here) picks the layers; `probe_layers` runs one small
batch to learn each layer's output shape and how many times it runs per forward pass; `LayerCapture`
hooks them, and after every ``model(x)`` its ``outputs`` dict holds each chosen layer's output for
that batch (detached copies, so later in-place operations such as ``ReLU(inplace=True)`` cannot
change them).

A module that runs more than once in a forward pass (torchvision's BasicBlock applies its one
``relu`` module twice) is captured at its **last** call: copies are overwritten call after call,
and a consumer (`consume_layer_outputs`) is handed only the output of call number `Layer.calls`,
after checking that the module ran exactly that many times, so two calls are never mixed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from compresskit.analysis.selection import (  # noqa: F401  (re-exported: the old home of these names)
    LAYER_PRESETS,
    Layer,
    named_layers,
    select_layers,
)
from compresskit.errors import CompresskitError


@dataclass(frozen=True)
class LayerProbe:
    """What `probe_layers` found: the `layers` to capture (each with its `Layer.calls`), each one's
    output shape per sample (``shapes[name]``, e.g. (C, H, W)), and the optional layers it left out
    as ``(path, reason)``."""

    layers: list[Layer]
    shapes: dict[str, tuple[int, ...]]
    left_out: list[tuple[str, str]]


def probe_layers(model: nn.Module, x: torch.Tensor, layers: Sequence[Layer]) -> LayerProbe:
    """One forward pass of the small batch `x` (one sample is enough; eval mode, no grad) with a
    hook on every layer, counting its calls and reading the shape of its last output.

    A layer that does not run, returns something other than a tensor, or returns a tensor whose
    first dimension is not the batch (or that holds no values) is left out when it is
    `Layer.optional` and refused with a `CompresskitError` otherwise.
    """
    calls = {layer.name: 0 for layer in layers}
    last: dict[str, object] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            calls[name] += 1
            last[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__

        return hook

    handles = [layer.module.register_forward_hook(hook_for(layer.name)) for layer in layers]
    model.eval()
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    kept, shapes, left_out = [], {}, []
    for layer in layers:
        shape = last.get(layer.name)
        if calls[layer.name] == 0:
            problem = "does not run in the forward pass"
        elif not isinstance(shape, tuple):
            problem = f"returns a {shape}, not a tensor"
        elif len(shape) == 0 or shape[0] != len(x) or math.prod(shape[1:]) == 0:
            problem = f"returns a tensor of shape {shape} for a batch of {len(x)}, not one row per sample"
        else:
            kept.append(replace(layer, calls=calls[layer.name]))
            shapes[layer.name] = shape[1:]
            continue
        if not layer.optional:
            raise CompresskitError(
                f"layers: module '{layer.path}' {problem}, so it has no per-sample output to analyse; "
                "leave it out of layers."
            )
        left_out.append((layer.path, problem))
    if not kept:
        raise CompresskitError(
            "layers: none of the chosen modules runs in the forward pass and returns one tensor row per "
            "sample; choose other modules."
        )
    return LayerProbe(kept, shapes, left_out)


class LayerCapture:
    """Context manager: hooks on `layers`; after each forward, ``outputs[name]`` is that layer's
    output for the batch (a detached copy, same shape as the module returned; of its last call when
    the module runs more than once). With `consume`, nothing is kept: ``consume(name, output)`` is
    called inside the forward pass, the moment the layer returns from its call number
    `Layer.calls`, and must finish with the tensor there (a later in-place operation such as
    ``ReLU(inplace=True)`` may overwrite it); that saves the copy of every captured output.
    ``calls[name]`` counts the module's runs since the last `reset` (`forward` resets).

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
        self.calls: dict[str, int] = {}
        self._handles: list[Any] = []

    def _hook(self, layer: Layer):
        name, last_call = layer.name, layer.calls

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            count = self.calls[name] = self.calls.get(name, 0) + 1
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {name} returned {type(output).__name__}, not a tensor")
            if self.consume is None:
                self.outputs[name] = output.detach().clone()
            elif count % last_call == 0:
                self.consume(name, output.detach())

        return hook

    def __enter__(self) -> LayerCapture:
        self.reset()
        for layer in self.layers:
            self._handles.append(layer.module.register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def reset(self) -> None:
        """Forget the outputs and call counts (before a new forward pass)."""
        self.outputs = {}
        self.calls = {}

    def check_calls(self) -> None:
        """Refuse a forward pass in which a layer's module ran other than `Layer.calls` times: its
        consumer would have been handed another call's output, or none."""
        for layer in self.layers:
            ran = self.calls.get(layer.name, 0)
            if ran != layer.calls:
                raise CompresskitError(
                    f"layers: module '{layer.path}' ran {ran} time(s) in a forward pass but {layer.calls} "
                    "time(s) were expected (see probe_layers); only a module that runs the same number of "
                    "times in every forward pass can be captured."
                )

    def forward(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run ``model(x)`` once and return the captured outputs (a new dict each call)."""
        self.reset()
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
    ``consume(name, output, y, start)`` for each chosen layer as soon as it returns from its last
    call (`Layer.calls`; `start`: the index of the batch's first sample among all batches); no output
    is copied or kept (see `LayerCapture`). `after_batch` is called after every batch. Returns the
    number of samples."""
    model.eval()
    start = 0
    labels = torch.empty(0, dtype=torch.int64)

    def hook(name: str, output: torch.Tensor) -> None:
        consume(name, output, labels, start)

    with LayerCapture(layers, consume=hook) as capture, torch.inference_mode():
        for x, y in batches:
            labels = y
            capture.reset()
            model(x)
            capture.check_calls()
            start += len(y)
            if after_batch is not None:
                after_batch()
    return start
