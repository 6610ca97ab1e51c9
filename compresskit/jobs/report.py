"""The report job: compare any runs (parameters, MACs, size, latency measured now, the test
accuracy each checkpoint recorded) in a new folder holding ``report.csv``, ``report.md`` and
``pareto.png``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from compresskit.checkpoint import CHECKPOINT_NAME, load_checkpoint, resolve_checkpoint
from compresskit.errors import CompresskitError
from compresskit.jobs.compress import measure_row
from compresskit.plots import plot_pareto
from compresskit.progress import Progress
from compresskit.report import comparison_table, write_report
from compresskit.rundir import check_output, staged_output
from compresskit.train import resolve_device


def report_run(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    *,
    device: str = "cpu",
    bench_seconds: float = 1.0,
    threads: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict:
    """Compare `checkpoints` (run directories or ``.pt`` files; the first is the baseline), with
    reductions relative to the first. `out` must be a new or empty folder, or with `overwrite` an
    earlier report holding none of the inputs."""
    progress = progress or Progress(enabled=False)
    out = Path(out)
    if not checkpoints:
        raise CompresskitError("report needs at least one run directory or checkpoint.")
    if bench_seconds <= 0:
        raise CompresskitError(f"--bench-seconds {bench_seconds} must be positive.")
    if threads is not None and threads < 1:
        raise CompresskitError(f"--threads {threads} must be a positive integer.")
    check_output(out, "report", overwrite=overwrite, inputs=[resolve_checkpoint(c) for c in checkpoints])
    loaded = [load_checkpoint(c) for c in checkpoints]
    for ckpt in loaded:
        if not isinstance(ckpt.meta.get("test_acc"), float):
            raise CompresskitError(
                f"{ckpt.path} records no test accuracy (compresskit train and prune write one)."
            )
    torch_device = resolve_device(device)
    rows = []
    with progress.task("measuring", total=len(loaded)) as advance:
        for ckpt in loaded:
            name = ckpt.path.parent.name if ckpt.path.name == CHECKPOINT_NAME else ckpt.path.stem
            progress.log(f"measuring {name} ({ckpt.path})")
            lineage = ckpt.meta.get("lineage") or [f"train {ckpt.spec.name} ({ckpt.path.parent.name})"]
            rows.append(
                measure_row(
                    name,
                    ckpt.build(torch_device),
                    ckpt.spec,
                    ckpt.meta["test_acc"],
                    ckpt.path,
                    bench_seconds,
                    threads,
                    lineage,
                )
            )
            advance()
    table = comparison_table(rows)
    with staged_output(out, "report") as stage:
        notes = [f"{row['model']}: {ckpt.path}" for row, ckpt in zip(rows, loaded, strict=True)]
        notes.append(f"latency: median of torch.utils.benchmark runs on {rows[0]['device']} with "
                     f"{rows[0]['threads']} threads, models and inputs channels_last")  # fmt: skip
        write_report(table, stage, "model comparison", notes)
        plot_pareto(table, stage / "pareto.png", title="accuracy vs cost")
    return {"table": table, "files": [str(out / n) for n in ("report.csv", "report.md", "pareto.png")]}
