"""An exponential moving average of a model's weights (``--ema DECAY``).

`EMA` keeps a float32 copy of every floating-point entry of the model's state dict (parameters
and buffers, batch-norm running statistics included) and a plain copy of every integer buffer
(batch norm's step counter). After the t-th optimizer step (t = 0, 1, … counted over the whole
run) every floating-point copy becomes

    average ← d_t · average + (1 − d_t) · weight,   d_t = min(decay, (1 + t) / (10 + t)),

the usual warm-up: early averages forget their random start quickly (d_0 = 0.1), later ones move
at most `decay` per step. Integer buffers are copied as they are. `fit` updates it after every
step, evaluates and keeps the average (`swapped_in`), and trains on the raw weights; its state
(`to_dict`) travels in `TrainingState`, so a resumed run continues the same average.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EMA:
    """The average of `model`'s weights: `averages` maps state-dict names to float32 tensors
    (floating-point entries) or exact copies (integer entries), on the model's device; `updates`
    is how many optimizer steps have been averaged in."""

    decay: float
    averages: dict[str, torch.Tensor]
    updates: int = 0

    @classmethod
    def start(cls, model: nn.Module, decay: float) -> EMA:
        """An average that starts at `model`'s current weights."""
        averages = {
            name: value.detach().float().clone() if value.is_floating_point() else value.detach().clone()
            for name, value in model.state_dict().items()
        }
        return cls(decay, averages)

    def rate(self) -> float:
        """d_t of the next update: min(decay, (1 + t) / (10 + t)) with t = `updates`."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average `model`'s weights in, after one optimizer step."""
        d = self.rate()
        state = model.state_dict()
        averages, weights = [], []
        for name, average in self.averages.items():
            if average.is_floating_point():
                averages.append(average)
                weights.append(state[name].float())
            else:
                average.copy_(state[name])
        if averages:  # one fused kernel per op on CUDA instead of two per tensor
            torch._foreach_mul_(averages, d)
            torch._foreach_add_(averages, weights, alpha=1 - d)
        self.updates += 1

    def weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The average as a state dict of `model` (its dtypes), on the CPU."""
        return {
            name: self.averages[name].to(value.dtype).cpu().clone()
            for name, value in model.state_dict().items()
        }

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """`model` holding the averaged weights for the body, its own weights restored after."""
        state = model.state_dict()
        raw = {name: value.clone() for name, value in state.items()}
        with torch.no_grad():
            for name, value in state.items():
                value.copy_(self.averages[name])
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, value in state.items():
                    value.copy_(raw[name])

    def buffer_averages(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The averages of `model`'s buffers (not its parameters), on the CPU."""
        names = {name for name, _ in model.named_buffers()}
        return {name: value.cpu() for name, value in self.averages.items() if name in names}

    @torch.no_grad()
    def load_buffer_averages(self, averages: dict[str, torch.Tensor]) -> None:
        """Take these buffer averages (`buffer_averages` of another process) as this one's."""
        for name, value in averages.items():
            self.averages[name].copy_(value)

    def to_dict(self) -> dict:
        """Tensors (on the CPU) and plain values only, for `torch.load(weights_only=True)`."""
        return {
            "decay": self.decay,
            "updates": self.updates,
            "averages": {name: value.detach().cpu().clone() for name, value in self.averages.items()},
        }

    @classmethod
    def from_dict(cls, data: dict, decay: float, device: torch.device | str = "cpu") -> EMA:
        """The average `to_dict` saved, continuing with `decay`, its tensors on `device`."""
        averages = {name: value.to(device, copy=True) for name, value in data["averages"].items()}
        return cls(decay, averages, int(data["updates"]))
