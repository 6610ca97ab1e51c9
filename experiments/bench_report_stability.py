"""Do `compresskit report`'s speed-ups hold still when the report is run again?

Builds two models and saves them as checkpoints (default: vgg11_bn at width 0.25 and a copy pruned
at 0.5 with uniform l1 importance by `compress.prune.prune_copy`; both keep their initial weights,
since latency depends on the widths, not on the values; test_acc is recorded as 0.0), or takes
`--checkpoints A B [C …]` (run directories or .pt files; the first is the baseline). Then runs
``compresskit report`` on them `--repeats` times (default 5), each in a fresh Python process as a
user rerunning the command would, and reads each ``report.csv``. Prints, per repeat and model, the
paired speed-up at batch 1 and 128 (``speedup_bN``: median over interleaved rounds of baseline
time / model time, ± the relative IQR of those ratios) and, for comparison, the ratio of median
latencies (``latency_reduction_bN``); then per model and batch size the max/min of each over the
repeats, and PASS when every paired speed-up's max/min is within `--tolerance` (default 1.10: all
repeats within 10% of each other), else FAIL.

Run it on an otherwise idle machine (a training run in the background makes every timing
meaningless). A quick check that it works: ``--repeats 2 --bench-seconds 0.2``. Usage:

    python experiments/bench_report_stability.py [--repeats 5] [--bench-seconds 4] [--threads 2]
        [--rounds 20] [--checkpoints A B] [--keep DIR] [--out results/bench_report_stability.txt]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

from compresskit.checkpoint import save_checkpoint
from compresskit.compress.prune import PruneConfig, prune_copy
from compresskit.jobs.evaluate import device_name
from compresskit.jobs.report import REPORT_BENCH_SECONDS
from compresskit.latency import ROUNDS
from compresskit.models import build_model, make_spec

BATCHES = (1, 128)


def default_checkpoints(folder: Path, model: str, width: float) -> list[Path]:
    """`model` at `width` and its 50% l1-pruned copy, saved under `folder` (dense.pt, pruned.pt)."""
    spec = make_spec(model, 10, width=width)
    dense = build_model(spec, seed=0).eval()
    pruned, pruned_spec = prune_copy(dense, spec, PruneConfig(ratio=0.5, importance="l1"))
    meta = {"test_acc": 0.0, "note": "untrained; for timing only"}
    lineage = [f"{model} w{width}"]
    pruned_meta = {**meta, "lineage": [*lineage, "prune l1 0.5"]}
    return [
        save_checkpoint(folder / "dense.pt", spec, dense, {**meta, "lineage": lineage}),
        save_checkpoint(folder / "pruned.pt", pruned_spec, pruned, pruned_meta),
    ]


def run_report(checkpoints: list[Path], out: Path, args: argparse.Namespace) -> pd.DataFrame:
    """One ``compresskit report`` in a fresh process; its report.csv."""
    command = [sys.executable, "-m", "compresskit", "report", *map(str, checkpoints), "--out", str(out),
               "--bench-seconds", str(args.bench_seconds), "--rounds", str(args.rounds),
               "--quiet"]  # fmt: skip
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"compresskit report failed ({done.returncode}):\n{done.stderr}")
    return pd.read_csv(out / "report.csv")


def max_over_min(values: list[float]) -> float:
    return max(values) / min(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", nargs="+", type=Path, help="two or more; the first is the baseline")
    parser.add_argument("--model", default="vgg11_bn")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bench-seconds", type=float, default=REPORT_BENCH_SECONDS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tolerance", type=float, default=1.10, help="largest max/min that passes")
    parser.add_argument("--keep", type=Path, help="a new folder to build the default models in and keep")
    parser.add_argument("--out", type=Path, help="also write what is printed to this new file")
    args = parser.parse_args()
    if args.checkpoints is not None and len(args.checkpoints) < 2:
        parser.error("--checkpoints needs at least two (the first is the baseline)")
    if args.repeats < 2:
        parser.error("--repeats must be at least 2")
    if args.out is not None and args.out.exists():
        parser.error(f"--out {args.out} exists; name a new file")
    if args.keep is not None and args.keep.exists():
        parser.error(f"--keep {args.keep} exists; name a new folder")

    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    with tempfile.TemporaryDirectory(prefix="bench_report_stability.") as scratch:
        scratch = Path(scratch)
        if args.checkpoints is not None:
            checkpoints = args.checkpoints
        else:
            folder = args.keep or scratch / "models"
            folder.mkdir(parents=True)
            checkpoints = default_checkpoints(folder, args.model, args.width)
        say(f"# compresskit report x {args.repeats}: {', '.join(map(str, checkpoints))}")
        say(f"# torch {torch.__version__}, {device_name(torch.device('cpu'))}, "
            f"threads {args.threads or 'torch default'}, bench-seconds {args.bench_seconds}, "
            f"rounds {args.rounds}")  # fmt: skip
        tables = []
        for repeat in range(1, args.repeats + 1):
            table = run_report(checkpoints, scratch / f"report-{repeat}", args)
            tables.append(table)
            for row in table.iloc[1:].itertuples(index=False):
                row = row._asdict()
                cells = "  ".join(
                    f"b{n}: {row[f'speedup_b{n}']:.3f}x ±{100 * row[f'speedup_b{n}_spread']:.0f}% "
                    f"(medians {row[f'latency_reduction_b{n}']:.3f}x)"
                    for n in BATCHES
                )
                say(f"repeat {repeat}  {row['model']:>12s}  {cells}")
        verdicts = []
        say()
        for position in range(1, len(tables[0])):
            name = tables[0]["model"].iloc[position]
            for n in BATCHES:
                paired = [float(t[f"speedup_b{n}"].iloc[position]) for t in tables]
                medians = [float(t[f"latency_reduction_b{n}"].iloc[position]) for t in tables]
                ratio = max_over_min(paired)
                verdicts.append(ratio <= args.tolerance)
                say(f"{name} batch {n}: paired speed-up {min(paired):.3f}–{max(paired):.3f}x, max/min "
                    f"{ratio:.3f}; ratio of medians max/min {max_over_min(medians):.3f}")  # fmt: skip
        verdict = "PASS" if all(verdicts) else "FAIL"
        say(f"{verdict}: every paired speed-up's max/min over {args.repeats} repeats "
            f"{'is' if all(verdicts) else 'is not'} within {args.tolerance:.2f}")  # fmt: skip
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
