"""Training-step throughput of each precision / memory-format / compile choice, in one run.

For each model, times `--steps` SGD steps (forward, loss, backward, update) on random batches of
`--batch-size` 3×32×32 images, after `--warmup` untimed steps, in each mode:

* fp32 NCHW (the reference, ratio 1.00)
* fp32 channels_last
* bf16 autocast, NCHW
* bf16 autocast + channels_last
* fp32 NCHW and fp32 channels_last under torch.compile (the first step's time, which includes
  compiling, is printed apart: it is paid once per run)

and prints images/s and the ratio to fp32 NCHW. Whether this CPU has native bf16 (oneDNN's
check, which needs avx512_bf16 or AMX) is printed first: without it bf16 is emulated. This is the
evidence for what ``--precision auto`` chooses. Usage:

    python experiments/bench_precision.py [--models vgg11_bn:0.25,vgg16_bn:1.0] [--steps 10]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

from compresskit.models import build_model, make_spec
from compresskit.train import TrainConfig, cpu_supports_bf16, make_optimizer

MODES = {  # name: (autocast bf16, channels_last, compile)
    "fp32 NCHW": (False, False, False),
    "fp32 channels_last": (False, True, False),
    "bf16 NCHW": (True, False, False),
    "bf16 channels_last": (True, True, False),
    "fp32 NCHW compiled": (False, False, True),
    "fp32 channels_last compiled": (False, True, True),
}


def steps_per_second(name: str, width: float, mode: tuple[bool, bool, bool], args) -> tuple[float, float]:
    """(images/s over the timed steps, seconds of the first call: compile or warm-up)."""
    bf16, channels_last, compiled = mode
    model = build_model(make_spec(name, 10, width=width), seed=0)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory).train()
    optimizer = make_optimizer(model.parameters(), TrainConfig(lr=0.05))
    step_fn = torch.compile(model) if compiled else model
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=generator).contiguous(memory_format=memory)
    y = torch.randint(0, 10, (args.batch_size,), generator=generator)

    def step() -> None:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = F.cross_entropy(step_fn(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    return args.steps * args.batch_size / (time.perf_counter() - start), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg11_bn:0.25,vgg16_bn:1.0", help="NAME:WIDTH,…")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of: " + ", ".join(MODES))
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",")]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_supports_bf16()}, "
          f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up")  # fmt: skip
    print(f"{'model':<14} {'mode':<27} {'img/s':>8} {'× fp32 NCHW':>12} {'first step s':>13}")
    for item in args.models.split(","):
        name, width = item.split(":")
        reference = None
        for mode in modes:
            rate, first = steps_per_second(name, float(width), MODES[mode], args)
            reference = reference or rate
            label = f"{name} w{float(width):g}"
            ratio = rate / reference
            print(f"{label:<14} {mode:<27} {rate:>8.1f} {ratio:>11.2f}x {first:>13.1f}", flush=True)


if __name__ == "__main__":
    main()
