"""The report job: compare any runs (parameters, MACs, size, latency and speed-ups measured now in
interleaved rounds, the test accuracy each checkpoint recorded) in a new folder holding
``report.csv``, ``report.md`` and ``pareto.png``. `measure_rows` is also the compression jobs'
way of measuring their original / compressed / fine-tuned models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from compresskit.checkpoint import CHECKPOINT_NAME, load_checkpoint, resolve_checkpoint
from compresskit.errors import CompresskitError
from compresskit.jobs.anymodel import checkpoint_input_shape, model_name
from compresskit.latency import ROUNDS, describe, measure_models
from compresskit.models import ModelSpec
from compresskit.plots import plot_pareto
from compresskit.progress import Progress
from compresskit.report import comparison_table, write_report
from compresskit.rundir import check_output, staged_output
from compresskit.train import resolve_device

BATCH_SIZES = (1, 128)

# name, model, spec (or the (C, H, W) of one input), test accuracy, checkpoint path (None: no size),
# lineage steps
Entry = tuple[str, nn.Module, ModelSpec | tuple[int, int, int], float, Path | None, Sequence[str]]

# Seconds of timing per model and batch size, split over ROUNDS rounds: with 4 s and 20 rounds, five
# reports of the same two models agreed within 10% on a 2-core VM (experiments/bench_report_stability.py);
# with 1 s and 10 rounds their batch-128 speed-ups spread by 15%.
REPORT_BENCH_SECONDS = 4.0


def measure_rows(
    entries: Sequence[Entry],
    bench_seconds: float,
    threads: int | None = None,
    *,
    rounds: int = ROUNDS,
    progress: Progress | None = None,
) -> list[dict]:
    """One comparison-table row per entry: `latency.measure_models` of all the models together at
    batch 1 and 128 (channels_last, as compresskit runs every model: `train.resolve_precision`),
    on the first model's device; the first entry is the baseline of the speed-ups. Each row is
    ``{"model": name, **ComparedMeasurement.to_row(), "test_acc", "lineage"}``."""
    progress = progress or Progress(enabled=False)
    for name, _, _, _, path, _ in entries:
        progress.log(f"measuring {name}" + (f" ({path})" if path is not None else ""))
    models = [entry[1] for entry in entries]
    progress.log(
        f"timing {len(models)} models at batch {' and '.join(map(str, BATCH_SIZES))} in {rounds} "
        f"interleaved rounds of about {bench_seconds / rounds:.3g} s each"
    )
    measured = measure_models(
        models,
        [_input_shape(s) for _, _, s, _, _, _ in entries],
        batch_sizes=BATCH_SIZES,
        device=next(models[0].parameters()).device,
        threads=threads,
        checkpoint_paths=[entry[4] for entry in entries],
        bench_seconds=bench_seconds,
        rounds=rounds,
        channels_last=True,
    )
    return [
        {"model": name, **m.to_row(), "test_acc": acc, "lineage": " → ".join(lineage)}
        for (name, _, _, acc, _, lineage), m in zip(entries, measured, strict=True)
    ]


def _input_shape(spec: ModelSpec | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(spec, ModelSpec):
        return spec.in_channels, spec.input_size, spec.input_size
    return spec


def report_run(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    *,
    device: str = "cpu",
    bench_seconds: float = REPORT_BENCH_SECONDS,
    threads: int | None = None,
    rounds: int = ROUNDS,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict:
    """Compare `checkpoints` (run directories or ``.pt`` files; the first is the baseline), with
    reductions and speed-ups relative to the first. Every model gets about `bench_seconds` of
    timing per batch size, split over `rounds` interleaved rounds. `out` must be a new or empty
    folder, or with `overwrite` an earlier report holding none of the inputs."""
    progress = progress or Progress(enabled=False)
    out = Path(out)
    if not checkpoints:
        raise CompresskitError("report needs at least one run directory or checkpoint.")
    if bench_seconds <= 0:
        raise CompresskitError(f"--bench-seconds {bench_seconds} must be positive.")
    if threads is not None and threads < 1:
        raise CompresskitError(f"--threads {threads} must be a positive integer.")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise CompresskitError(f"--rounds {rounds} must be a positive integer.")
    check_output(out, "report", overwrite=overwrite, inputs=[resolve_checkpoint(c) for c in checkpoints])
    loaded = [load_checkpoint(c) for c in checkpoints]
    for ckpt in loaded:
        if not isinstance(ckpt.meta.get("test_acc"), float):
            raise CompresskitError(
                f"{ckpt.path} records no test accuracy (compresskit train and prune write one)."
            )
    torch_device = resolve_device(device)
    entries: list[Entry] = []
    for ckpt in loaded:
        name = ckpt.path.parent.name if ckpt.path.name == CHECKPOINT_NAME else ckpt.path.stem
        lineage = ckpt.meta.get("lineage") or [f"train {model_name(ckpt)} ({ckpt.path.parent.name})"]
        shape = checkpoint_input_shape(ckpt)
        entries.append((name, ckpt.build(torch_device), shape, ckpt.meta["test_acc"], ckpt.path, lineage))
    rows = measure_rows(entries, bench_seconds, threads, rounds=rounds, progress=progress)
    for row, ckpt in zip(rows, loaded, strict=True):
        # checkpoints written before test accuracy was always fp32 do not say
        row["test_precision"] = ckpt.meta.get("test_precision", "not recorded")
    table = comparison_table(rows)
    with staged_output(out, "report") as stage:
        notes = [f"{row['model']}: {ckpt.path}" for row, ckpt in zip(rows, loaded, strict=True)]
        notes.append(describe(rows))
        notes.append("test_acc: as each checkpoint recorded it, computed in test_precision")
        write_report(table, stage, "model comparison", notes)
        plot_pareto(table, stage / "pareto.png", title="accuracy vs cost")
    return {"table": table, "files": [str(out / n) for n in ("report.csv", "report.md", "pareto.png")]}
