"""The commands that look at one model without changing it: `evaluate` (test accuracy, per
class), `analyze` (per-layer separation and probes) and `sensitivity` (each conv layer pruned
alone)."""

from pathlib import Path

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from compresskit.cli.app import user_errors
from compresskit.cli.options import (
    Device,
    DeviceName,
    Download,
    PrecisionName,
    Quiet,
    RunDataDir,
    SensitivityImportance,
    TrustFactory,
    TtaName,
    _number_list,
    _str_or_none,
)
from compresskit.cli.render import _pct, _print_table, console


def evaluate(
    checkpoint: Path = typer.Option(..., help="Run directory (its checkpoint.pt) or a .pt file."),
    data_dir: RunDataDir = None,
    download: Download = True,
    batch_size: int = typer.Option(256, help="Evaluation batch size."),
    device: Device = DeviceName.auto,
    tta: TtaName = typer.Option(
        "none", help="Test-time augmentation: flip (mirror), flip-translate (mirror + 1-pixel moves)."
    ),
    precision: PrecisionName = typer.Option(
        "fp32", help="fp32: the same accuracy on any machine; bf16 autocast; auto as for training."
    ),
    trust_factory: TrustFactory = False,
) -> None:
    """Test accuracy, per-class precision/recall/F1, confusion matrix, into RUN/evaluation/."""
    from compresskit.jobs import evaluate_run

    with user_errors(trust_factory):
        result = evaluate_run(
            checkpoint,
            data_dir=_str_or_none(data_dir),
            download=download,
            batch_size=batch_size,
            device=device.value,
            tta=tta.value,
            precision=precision.value,
        )
    per_class = result["per_class"]
    table = Table(title=f"per-class results on {result['dataset']} test", title_justify="left")
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in per_class.itertuples(index=False):
        table.add_row(escape(str(row[0])), f"{row[1]:.3f}", f"{row[2]:.3f}", f"{row[3]:.3f}", str(row[4]))
    if len(per_class) <= 20:
        console.print(table)
    folder = Path(result["folder"])
    tta_note = ""
    if result["tta"] != "none":
        tta_note = f" (with --tta {result['tta']}; {_pct(result['test_acc_no_tta'])} without)"
    _print_table(
        "evaluation",
        [
            ("checkpoint", result["checkpoint"]),
            ("test accuracy", _pct(result["test_acc"]) + tta_note),
            ("computed in", f"{result['precision']} on {result['device_name']}"),
            ("macro recall", _pct(result["macro_recall"])),
            ("macro F1", _pct(result["macro_f1"])),
            ("written", f"{folder}/ (evaluation.json, per_class.csv, confusion.png, most_confused.csv)"),
        ],
    )


def analyze(
    checkpoint: Path = typer.Option(..., help="Run directory (its checkpoint.pt) or a .pt file."),
    samples: int = typer.Option(1000, help="Class-balanced images per split (train and test)."),
    layers: str | None = typer.Option(
        None,
        help="A compresskit model: blocks (conv blocks + linear; its default), pools (max-pools + linear), "
        "all, or a regex over module paths. Any other model: all (every leaf module; its default), convs "
        "(conv and linear layers), stages (the model's direct children), a regex over module paths "
        "(e.g. '^layer[1-4]$'), or a comma list of module paths (e.g. layer1.0.conv1,fc).",
        show_default=False,
    ),
    metrics: str = typer.Option("csi,si,probe", help="Comma list of csi, si, probe; or none."),
    filters: bool = typer.Option(False, "--filters", help="Also draw the first-layer filters."),
    data_dir: RunDataDir = None,
    download: Download = True,
    batch_size: int = typer.Option(256, help="Batch size of the forward passes."),
    device: Device = DeviceName.auto,
    seed: int = typer.Option(0, help="Seed of the class-balanced subsets."),
    memory_budget: str | None = typer.Option(
        None,
        help="Host memory a split's features may take to be held for one forward pass (beyond it: "
        "two passes, streamed), e.g. 4GiB, 500MB or bytes; default a quarter of the total memory.",
        show_default=False,
    ),
    quiet: Quiet = False,
    trust_factory: TrustFactory = False,
) -> None:
    """Per-layer center separation index, separation index and linear-probe accuracy, train vs test."""
    from compresskit.jobs import analyze_run
    from compresskit.progress import Progress

    with user_errors(trust_factory):
        result = analyze_run(
            checkpoint,
            samples=samples,
            layers=layers,
            metrics=metrics,
            filters=filters,
            data_dir=_str_or_none(data_dir),
            download=download,
            batch_size=batch_size,
            device=device.value,
            seed=seed,
            memory_budget=memory_budget,
            progress=Progress(enabled=not quiet),
        )
    if "table" in result:
        table = result["table"]
        view = Table(
            box=box.SIMPLE_HEAD,
            title=f"layers of {escape(result['checkpoint'])} on {result['dataset']} "
            f"({result['train_samples']} train / {result['test_samples']} test images)",
            title_justify="left",
        )
        shown = [c for c in table.columns if c != "module" and not table[c].isna().all()]
        for column in shown:
            header = column.replace("_", "\n") if column not in ("layer", "output_shape") else column
            view.add_column(
                "shape" if column == "output_shape" else header,
                justify="left" if column in ("layer", "output_shape") else "right",
                no_wrap=True,
            )
        for row in table.itertuples(index=False):
            values = row._asdict()
            cells = [values[c] for c in shown]
            view.add_row(*(f"{v:.3f}" if isinstance(v, float) else escape(str(v)) for v in cells))
        console.print(view)
    rows = [(f"{split} features", plan.describe()) for split, plan in result.get("features", {}).items()]
    _print_table("analysis", [*rows, ("written", ", ".join(result["files"]))])


def sensitivity(
    checkpoint: Path = typer.Option(..., help="Run directory (its checkpoint.pt) or a .pt file."),
    ratios: str = typer.Option("0.25,0.5,0.75", help="Comma list of fractions of channels to remove."),
    importance: SensitivityImportance = typer.Option("l1", help="How channels are ranked (no data-driven)."),
    samples: int | None = typer.Option(None, help="Evaluate on this many class-balanced test images."),
    data_dir: RunDataDir = None,
    download: Download = True,
    batch_size: int = typer.Option(256, help="Evaluation batch size."),
    device: Device = DeviceName.auto,
    quiet: Quiet = False,
    trust_factory: TrustFactory = False,
) -> None:
    """Prune each conv layer alone at each ratio (no fine-tuning) and chart the accuracy lost."""
    from compresskit.jobs import sensitivity_run
    from compresskit.progress import Progress

    with user_errors(trust_factory):
        result = sensitivity_run(
            checkpoint, _number_list(ratios, "--ratios"), importance=importance.value, samples=samples,
            data_dir=_str_or_none(data_dir), download=download,
            batch_size=batch_size, device=device.value, progress=Progress(enabled=not quiet),
        )  # fmt: skip
    table = result["table"]
    layer_order = list(dict.fromkeys(table["layer"]))
    wide = table.pivot(index="layer", columns="ratio", values="test_acc").loc[layer_order]
    view = Table(box=box.SIMPLE_HEAD, title=f"test accuracy with one layer pruned (unpruned "
                 f"{_pct(result['base_acc'])})", title_justify="left")  # fmt: skip
    view.add_column("layer")
    for ratio in wide.columns:
        view.add_column(f"−{ratio:g}", justify="right")
    for layer, row in wide.iterrows():
        view.add_row(str(layer), *(_pct(v) for v in row))
    console.print(view)
    _print_table("sensitivity", [("written", ", ".join(result["files"]))])
