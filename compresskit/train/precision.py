"""Where and how a model computes: the device (``--device``), bf16 autocast or fp32
(``--precision``) and the channels_last memory format."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compresskit.errors import ParameterError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError(f"{{0}} {name} was asked for but no CUDA device is available.", "device")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's own check: avx512_bf16 or AMX). Without
    it, bf16 on the CPU is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Precision:
    """How a model computes: ``bf16`` autocast or plain ``fp32``, and whether activations and
    weights are stored channels_last (NHWC)."""

    name: str
    channels_last: bool

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.name == "bf16")

    def describe(self) -> str:
        return f"{self.name}{' + channels_last' if self.channels_last else ''}"


def resolve_precision(name: str, device: torch.device) -> Precision:
    """What ``--precision`` `name` (auto, fp32, bf16) means on `device`. Always channels_last: it
    measured faster than NCHW for training on CPU too (1.29× vgg11_bn w0.25, 1.12× vgg16_bn w1.0
    on an AVX2 CPU; experiments/bench_precision.py). ``auto`` is bf16 autocast on CUDA and on a CPU
    that computes bf16 natively (`cpu_supports_bf16`), fp32 elsewhere: emulated bf16 measured
    8–20× slower than fp32. Asking for bf16 on such a CPU is refused."""
    if name not in PRECISIONS:
        raise ParameterError(f"{{0}} must be one of: {', '.join(PRECISIONS)}; got '{name}'.", "precision")
    native = device.type == "cuda" or cpu_supports_bf16()
    if name == "bf16" and not native:
        raise ParameterError(
            "{0} bf16: this CPU has no native bf16 (avx512_bf16 or AMX), so it would be emulated "
            "and far slower than fp32; use {0} auto or fp32.",
            "precision",
        )
    return Precision("bf16" if name == "bf16" or (name == "auto" and native) else "fp32", channels_last=True)


def as_input(x: torch.Tensor, precision: Precision) -> torch.Tensor:
    """A batch in the memory format `precision` computes in."""
    return x.contiguous(memory_format=torch.channels_last) if precision.channels_last and x.ndim == 4 else x
