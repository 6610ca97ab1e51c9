"""The commands that bring runs together or in: `report` (compare runs into a new folder) and
`import` (a model trained elsewhere into a run directory)."""

from pathlib import Path

import typer

from compresskit.cli.app import user_errors
from compresskit.cli.options import (
    BenchSeconds,
    DatasetName,
    Device,
    DeviceName,
    Download,
    LabelSet,
    Overwrite,
    Quiet,
    Threads,
    TrustFactory,
    _dataset_option,
    _json_object,
    _str_or_none,
)
from compresskit.cli.render import _pct, _print_report, _print_table


def report(
    runs: list[Path] = typer.Argument(..., help="Run directories or .pt files; the first is the baseline."),
    out: Path = typer.Option(..., "--out", help="New folder for report.csv, report.md, pareto.png."),
    device: DeviceName = typer.Option("cpu", help="Where latency is measured."),
    bench_seconds: BenchSeconds = 4.0,  # jobs.report.REPORT_BENCH_SECONDS
    threads: Threads = None,
    rounds: int = typer.Option(20, help="Rounds the timing is split into; each times every model once."),
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    trust_factory: TrustFactory = False,
) -> None:
    """Compare runs: parameters, MACs, size, latency, accuracy, and a Pareto plot."""
    from compresskit.jobs import report_run
    from compresskit.progress import Progress

    with user_errors(trust_factory):
        result = report_run(
            [str(r) for r in runs], out, device=device.value, bench_seconds=bench_seconds, threads=threads,
            rounds=rounds, overwrite=overwrite, progress=Progress(enabled=not quiet),
        )  # fmt: skip
    _print_report(result["table"], "model comparison (reductions relative to the first run)")
    _print_table("report", [("written", ", ".join(result["files"]))])


def import_(
    factory: str = typer.Option(
        ..., metavar="MODULE:FUNCTION", help="Function building the model, e.g. torchvision.models:resnet18."
    ),
    factory_kwargs: str | None = typer.Option(
        None, help="Its keyword arguments as a JSON object, e.g. '{\"num_classes\": 10}'."
    ),
    trust_factory: bool = typer.Option(
        False,
        "--trust-factory",
        help="Import --factory's module even outside torchvision.models, timm and compresskit.models "
        "(it runs that code).",
    ),
    weights: Path = typer.Option(
        ..., help="The trained weights: a .pt state dict (bare, or under 'state_dict' or 'model')."
    ),
    out: Path = typer.Option(..., "--out", help="Run directory to create."),
    dataset: str = typer.Option(
        ...,
        metavar="<name>",
        callback=_dataset_option,
        help=f"Data the model was trained for: {', '.join(m.value for m in DatasetName)}, or folder:PATH.",
    ),
    data_dir: Path | None = typer.Option(None, help="Folder holding the dataset files (default ./data)."),
    download: Download = True,
    labels: LabelSet = typer.Option("fine", help="cifar100: 100 fine classes or 20 coarse superclasses."),
    image_size: int = typer.Option(32, help="Side in pixels every image is resized to (square)."),
    val_fraction: float = typer.Option(0.1, help="Stratified share of train held out for validation."),
    augment: str | None = typer.Option(
        None, help="Augmentation later fine-tuning uses (as train's --augment); default the dataset's."
    ),
    seed: int = typer.Option(0, help="Seed of the validation split."),
    device: Device = DeviceName.auto,
    overwrite: Overwrite = False,
) -> None:
    """Bring a model trained elsewhere into a run directory (evaluated on import), so evaluate,
    analyze, prune, lowrank and report work on it."""
    from compresskit.jobs.import_ import ImportOptions, import_run

    with user_errors(trust_factory):
        summary = import_run(
            out,
            ImportOptions(
                factory=factory, weights=str(weights), dataset=dataset,
                factory_kwargs=_json_object(factory_kwargs, "--factory-kwargs"), trust_factory=trust_factory,
                data_dir=_str_or_none(data_dir), download=download,
                labels=labels.value, image_size=image_size, val_fraction=val_fraction, augment=augment,
                seed=seed, device=device.value,
            ),
            overwrite=overwrite,
        )  # fmt: skip
    _print_table(
        f"imported {summary['model']} for {summary['dataset']}",
        [
            ("run directory", summary["run"]),
            ("parameters", f"{summary['parameters']:,}"),
            ("test accuracy", _pct(summary["test_acc"]) + f" ({summary['test_precision']})"),
        ],
    )
