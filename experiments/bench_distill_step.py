"""What distillation costs per fine-tuning step: plain cross-entropy vs `--distill` (the teacher's extra
forward pass), timed in interleaved rounds in one process so a load that changes over time hits both.

The student is the source checkpoint pruned at `--ratio` with l1 importance (as `compresskit prune`
does), the teacher the source itself, both in the precision `fit` would use (`--precision auto`:
bf16 autocast + channels_last where the CPU has native bf16). Each round times `--steps` SGD steps
of each way on the same batch; prints the medians and the median of the per-round ratios.

Usage: python experiments/bench_distill_step.py [--checkpoint results/cifar10-e30-vgg11_bn-w0.25]
           [--ratio 0.5] [--batch-size 128] [--rounds 10] [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from compresskit.checkpoint import load_checkpoint
from compresskit.compress.distill import Distillation
from compresskit.compress.prune import PruneConfig, prune_copy
from compresskit.train import as_input, cpu_supports_bf16, resolve_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="results/cifar10-e30-vgg11_bn-w0.25")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    precision = resolve_precision("auto", device)
    ckpt = load_checkpoint(args.checkpoint)
    teacher = ckpt.build(device)
    student, _ = prune_copy(teacher, ckpt.spec, PruneConfig(ratio=args.ratio, importance="l1"))
    student.train()
    if precision.channels_last:
        student.to(memory_format=torch.channels_last)
    distill = Distillation(teacher)
    distill.prepare(channels_last=precision.channels_last)
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    side = ckpt.spec.input_size
    x = torch.randn(args.batch_size, ckpt.spec.in_channels, side, side, generator=generator)
    y = torch.randint(0, ckpt.spec.num_classes, (args.batch_size,), generator=generator)
    x = as_input(x, precision)

    def steps(with_teacher: bool) -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            with precision.autocast(device):
                out = student(x)
                loss = distill.loss(out, x, y) if with_teacher else F.cross_entropy(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / args.steps

    steps(False), steps(True)  # warm-up: oneDNN kernels for both shapes
    plain, distilled = [], []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for with_teacher in order:
            (distilled if with_teacher else plain).append(steps(with_teacher))
    ratios = [d / p for d, p in zip(distilled, plain, strict=True)]
    print(f"# {args.checkpoint} pruned at {args.ratio} (l1) as student, the source as teacher; "
          f"precision {precision.describe()}, native bf16 {cpu_supports_bf16()}, threads {args.threads}, "
          f"batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps")  # fmt: skip
    print(f"plain step   median {1e3 * statistics.median(plain):.1f} ms")
    print(f"distill step median {1e3 * statistics.median(distilled):.1f} ms")
    q = statistics.quantiles(ratios, n=4)
    print(f"distill / plain: median {statistics.median(ratios):.2f}x "
          f"(per-round ratios, IQR {q[0]:.2f}-{q[2]:.2f})")


if __name__ == "__main__":
    main()
