"""Where each prunable layer's activated output is, in any model, and one pass that reads it.

For `ConvNet` the activated output of a conv is its block's output. In a general graph,
torch-pruning's dependency graph says what consumes each layer: a layer's *tap* is the layer
itself, or the batch norm that is its only consumer, followed by the elementwise activation that is
the tap's only consumer when that is one of `ACTIVATIONS` (read from the traced autograd node, so
ReLU, ReLU6/hardtanh, SiLU, hardswish, GELU and leaky ReLU are recognised however they are called:
as a module, reused module or function). The activation is applied to the hooked tensor, so a
module that is reused (torchvision's ResNet calls one ``relu`` several times) needs no hook.

`run_taps` runs calibration batches through the model once with a forward hook on every tap and
hands each layer's activated output (and, when asked, its input) to a callback. A tap that runs
other than once per forward pass has no single output to score, and is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from compresskit.errors import CompresskitError

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]
Activation = Callable[[torch.Tensor], torch.Tensor]


def forward_example(model: nn.Module, example_inputs: object) -> object:
    """Call `model` on example inputs as torch-pruning does: a tuple or list as positional
    arguments, a dict as keyword arguments, anything else as the one argument."""
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    return model(example_inputs)


def hooked_forward(
    model: nn.Module, example_inputs: object, layers: Sequence[nn.Module], hook: Callable
) -> None:
    """One `forward_example` pass in eval mode without gradients with `hook` as a forward hook on
    every module of `layers`; the hooks are removed and every module's train/eval flag restored after."""
    handles = [m.register_forward_hook(hook) for m in layers]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            forward_example(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training


def _saved(node: object, name: str) -> float:
    return float(getattr(node, name))


# Autograd node class name → the activation it computes (its parameters read from the node).
ACTIVATIONS: dict[str, Callable[[object], Activation]] = {
    "ReluBackward0": lambda node: F.relu,
    "HardtanhBackward0": lambda node: functools.partial(
        F.hardtanh, min_val=_saved(node, "_saved_min_val"), max_val=_saved(node, "_saved_max_val")
    ),
    "SiluBackward0": lambda node: F.silu,
    "HardswishBackward0": lambda node: F.hardswish,
    "GeluBackward0": lambda node: functools.partial(F.gelu, approximate=str(node._saved_approximate)),  # type: ignore[attr-defined]
    "LeakyReluBackward0": lambda node: functools.partial(
        F.leaky_relu, negative_slope=_saved(node, "_saved_negative_slope")
    ),
}


@dataclass(frozen=True)
class Tap:
    """Where `layer`'s activated output is read: the output of `module` (the layer or its batch
    norm), passed through `activation` when one follows. `name` is the layer's module path."""

    name: str
    layer: nn.Module
    module: nn.Module
    activation: Activation | None

    @property
    def channel_dim(self) -> int:
        """The output's channel dimension: 1 for a conv (N×C×…), -1 for a linear layer (N×…×C)."""
        return -1 if isinstance(self.layer, nn.Linear) else 1


def _only_output(node) -> object | None:
    outputs = node.outputs
    return outputs[0] if len(outputs) == 1 and len(outputs[0].inputs) == 1 else None


def find_taps(model: nn.Module, graph, layers: Sequence[nn.Module]) -> dict[nn.Module, Tap]:
    """The tap of each layer in `layers` (conv or linear modules of `model` present in `graph`, a
    torch-pruning `DependencyGraph` traced on `model`)."""
    names = {module: name for name, module in model.named_modules()}
    taps = {}
    for layer in layers:
        node = graph.module2node[layer]
        module, current, activation = layer, node, None
        after = _only_output(current)
        if after is not None and isinstance(after.module, nn.modules.batchnorm._BatchNorm):
            module, current = after.module, after
        after = _only_output(current)
        if after is not None and type(after.grad_fn).__name__ in ACTIVATIONS:
            try:
                activation = ACTIVATIONS[type(after.grad_fn).__name__](after.grad_fn)
            except (AttributeError, TypeError, ValueError):
                activation = None  # an autograd node of another torch version: score before it
        taps[layer] = Tap(names[layer], layer, module, activation)
    return taps


def channel_means(tap: Tap, output: torch.Tensor) -> torch.Tensor:
    """One value per image and channel, N×C: the output's mean over every other dimension."""
    values = output.movedim(tap.channel_dim, 1) if tap.channel_dim != 1 else output
    return values.flatten(2).mean(2) if values.dim() > 2 else values


def run_taps(
    model: nn.Module,
    batches: Batches,
    taps: Sequence[Tap],
    on_output: Callable[[Tap, torch.Tensor, torch.Tensor], None],
    *,
    on_input: Callable[[Tap, torch.Tensor, torch.Tensor], None] | None = None,
    purpose: str,
) -> None:
    """One pass over `batches` ((images, labels) pairs) in eval mode without gradients; for each
    batch and tap, ``on_output(tap, activated output, labels)`` and, with `on_input`,
    ``on_input(tap, the layer's input, labels)``, called from inside the forward pass (the tensors
    may be changed in place after the callback returns). Every module's train/eval mode is
    restored. `purpose` names what needs the pass, for the error when a tap runs more or less than
    once per forward pass."""
    calls: dict[Tap, int] = {}
    labels: list[torch.Tensor] = []

    def output_hook(tap: Tap) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            calls[tap] += 1
            out = output.detach()
            on_output(tap, tap.activation(out) if tap.activation is not None else out, labels[0])

        return hook

    def input_hook(tap: Tap) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            assert on_input is not None
            on_input(tap, inputs[0].detach(), labels[0])

        return hook

    handles = [tap.module.register_forward_hook(output_hook(tap)) for tap in taps]
    if on_input is not None:
        handles += [tap.layer.register_forward_hook(input_hook(tap)) for tap in taps]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            for x, y in batches:
                labels[:] = [y]
                calls.update(dict.fromkeys(taps, 0))
                model(x)
                wrong = [tap for tap in taps if calls[tap] != 1]
                if wrong:
                    tap = wrong[0]
                    raise CompresskitError(
                        f"{purpose} needs one output per image from layer '{tap.name}', but "
                        f"{'it' if tap.module is tap.layer else 'its batch norm'} ran {calls[tap]} times "
                        "in one forward pass; this model's graph does not allow it (choose another "
                        "importance or allocation, or ignore that layer)."
                    )
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
