"""Does latency follow MACs after channel pruning? Speed-up against MAC reduction, in one run.

Builds `--model` at `--width` (default full-width vgg16_bn, the issue-11 reference architecture),
prunes a copy at each `--ratios` with uniform l1 importance, once with free widths and once with
``round_to=8`` (every kept width a multiple of 8, the width oneDNN's vectorised kernels prefer),
and times the forward pass of every model at each `--batch-sizes` on `--threads` threads, in
NCHW and in channels_last. Prints, per pruned model: MAC reduction (dense MACs / pruned MACs),
measured speed-up (dense median latency / pruned median latency, same memory format and batch),
and their quotient ``speed-up / MAC reduction`` (1.0: latency follows MACs exactly; the issue's
bar is 0.8 at ratio 0.5, batch 128, 2 threads). Latency depends on the widths, not on the weight
values, so the models keep their initial weights: no data or training is needed. Medians over
`--repeats` repeats of `--seconds` of timing each, with the spread (relative IQR of the repeat
medians). Run it on an otherwise idle machine. Usage:

    python experiments/bench_latency_vs_macs.py [--ratios 0.3,0.5,0.7] [--batch-sizes 1,128]
"""

from __future__ import annotations

import argparse
import platform

import torch

from compresskit.compress.prune import PruneConfig, prune_copy
from compresskit.measure import count_macs, measure_latency
from compresskit.models import build_model, make_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vgg16_bn")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--ratios", default="0.3,0.5,0.7")
    parser.add_argument("--batch-sizes", default="1,128")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    spec = make_spec(args.model, 10, width=args.width)
    dense = build_model(spec, seed=0).eval()
    models = {"dense": dense}
    for ratio in ratios:
        for round_to in (None, 8):
            cfg = PruneConfig(ratio=ratio, importance="l1", round_to=round_to)
            models[f"l1 {ratio} round_to {round_to or '-'}"] = prune_copy(dense, spec, cfg)[0].eval()
    shape = (spec.in_channels, spec.input_size, spec.input_size)
    macs = {name: count_macs(model, shape) for name, model in models.items()}
    cpu = platform.processor() or platform.machine()
    print(f"# {args.model} width {args.width}, torch {torch.__version__}, {cpu}, threads {args.threads}, "
          f"{args.repeats} repeats x {args.seconds / args.repeats:.2f} s")  # fmt: skip
    header = f"{'model':24s} {'format':14s} {'batch':>5s} {'MACs (M)':>9s} {'MAC red.':>8s} " \
             f"{'ms/batch':>9s} {'spread':>6s} {'speed-up':>8s} {'speed-up/MAC red.':>17s}"  # fmt: skip
    print(header)
    for channels_last in (False, True):
        fmt = "channels_last" if channels_last else "NCHW"
        for batch in batch_sizes:
            base = None
            for name, model in models.items():
                latency = measure_latency(model, shape, batch, threads=args.threads,
                                          min_run_time=args.seconds, repeats=args.repeats,
                                          channels_last=channels_last)  # fmt: skip
                base = latency.median_s if base is None else base
                reduction = macs["dense"] / macs[name]
                speedup = base / latency.median_s
                print(f"{name:24s} {fmt:14s} {batch:5d} {macs[name] / 1e6:9.1f} {reduction:7.2f}x "
                      f"{latency.median_s * 1e3:9.2f} {latency.spread:6.1%} {speedup:7.2f}x "
                      f"{speedup / reduction:17.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
