"""Conv forward+backward time on one batch: compresskit.scratch naive loops vs fast (sliding-window NumPy)
vs torch (CPU, float64 like the NumPy versions). Prints seconds per forward+backward and the ratios, after
checking that all three give the same output and gradients. Usage:

    python experiments/bench_scratch_conv.py [--batch 16] [--channels 3] [--size 32] [--filters 16]
        [--kernel 3] [--pad 1] [--repeats 5] [--threads 1]

The naive version runs once (it takes seconds); the others report the best of --repeats. --threads sets
torch's intra-op threads (NumPy's BLAS threads are set by the usual OMP/OPENBLAS environment variables).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from compresskit.scratch import (
    conv_backward_fast,
    conv_backward_naive,
    conv_forward_fast,
    conv_forward_naive,
    rel_error,
)


def best_time(step: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best wall time in seconds over `repeats` calls, and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = step()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--pad", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, args.channels, args.size, args.size))
    w = rng.normal(size=(args.filters, args.channels, args.kernel, args.kernel))
    b = rng.normal(size=args.filters)
    dout = rng.normal(size=conv_forward_fast(x, w, b, 1, args.pad)[0].shape)

    def numpy_step(forward, backward):
        def step():
            out, cache = forward(x, w, b, 1, args.pad)
            return (out, *backward(dout, cache))
        return step

    def torch_step():
        tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
        out = F.conv2d(tx, tw, tb, padding=args.pad)
        out.backward(torch.from_numpy(dout))
        return out.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()

    t_naive, r_naive = best_time(numpy_step(conv_forward_naive, conv_backward_naive), 1)
    t_fast, r_fast = best_time(numpy_step(conv_forward_fast, conv_backward_fast), args.repeats)
    t_torch, r_torch = best_time(torch_step, args.repeats)
    worst = max(rel_error(a, c) for ref in (r_fast, r_torch) for a, c in zip(r_naive, ref, strict=True))

    print(f"conv forward+backward, x {x.shape}, w {w.shape}, stride 1, pad {args.pad}, float64, "
          f"torch threads {args.threads}")
    print(f"max rel. error vs naive (out, dx, dw, db): {worst:.1e}")
    print(f"naive (loops, 1 run)         {t_naive:9.4f} s")
    print(f"fast (NumPy, best of {args.repeats})       {t_fast:9.4f} s")
    print(f"torch (CPU, best of {args.repeats})        {t_torch:9.4f} s")
    print(f"naive / fast  = {t_naive / t_fast:8.1f}x")
    print(f"fast / torch  = {t_fast / t_torch:8.1f}x  (how much slower the NumPy version is than torch)")


if __name__ == "__main__":
    main()
