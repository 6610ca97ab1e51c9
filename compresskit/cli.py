"""The `compresskit` command: a thin typer shell over the library (parse, call, print a summary)."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from compresskit.errors import CompresskitError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Train VGG-family CNNs on small image sets, look inside them layer by layer, shrink them.",
)
console = Console()
err_console = Console(stderr=True)


# Options shared by several commands.
Device = Annotated[str, typer.Option(help="auto|cpu|cuda.")]
RunDataDir = Annotated[Path | None, typer.Option(help="Dataset folder (default: the one used in training).")]
Download = Annotated[bool, typer.Option(help="Download CIFAR (checksum-verified) when not on disk.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress output.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out directory.")]
BenchSeconds = Annotated[float, typer.Option(help="Seconds of timing per latency measurement.")]
Threads = Annotated[int | None, typer.Option(help="CPU threads for latency (default: torch's count).")]
Source = Annotated[
    Path,
    typer.Option(
        "--checkpoint", "--from", help="Run directory (its checkpoint.pt) or .pt file: trained or compressed."
    ),
]
FinetuneEpochs = Annotated[int, typer.Option(help="Fine-tuning epochs in all.")]
FinetuneLr = Annotated[float, typer.Option(help="Peak fine-tuning learning rate (SGD, cosine).")]
Seed = Annotated[int, typer.Option(help="Seed of the fine-tuning batches and the subsets.")]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a `CompresskitError` into one line on stderr and exit code 2."""
    try:
        yield
    except CompresskitError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _print_table(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="Run directory to create."),
    model: str = typer.Option("vgg11_bn", help="vgg11|vgg13|vgg16|vgg19|cnn, each also with _bn."),
    dataset: str = typer.Option("digits", help="cifar10|cifar100|fashion-mnist|mnist|digits|synthetic."),
    data_dir: Path | None = typer.Option(None, help="Folder holding the dataset files (default ./data)."),
    download: Download = True,
    width: float = typer.Option(1.0, help="Channel width multiplier."),
    head: str = typer.Option("linear", help="linear (features→classes) or mlp (features→512·width→classes)."),
    dropout: float = typer.Option(0.0, help="Dropout before the head's last linear layer."),
    global_pool: bool = typer.Option(False, help="Average-pool the last feature map before the head."),
    val_fraction: float = typer.Option(0.1, help="Stratified share of train held out for validation."),
    augment: str | None = typer.Option(
        None,
        help="Comma list of crop[=PAD], flip, cutout[=SIZE], jitter[=AMOUNT], or none. "
        "Default: crop,flip (crop only for digits and mnist).",
    ),
    epochs: int = typer.Option(30, help="Maximum number of epochs."),
    batch_size: int = typer.Option(128, help="Training batch size."),
    lr: float = typer.Option(0.05, help="Peak learning rate."),
    optimizer: str = typer.Option("sgd", help="sgd (Nesterov momentum) or adamw."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    weight_decay: float = typer.Option(5e-4, help="Weight decay on weights (not biases or BN)."),
    schedule: str = typer.Option("onecycle", help="step|cosine|onecycle|none, stepped every batch."),
    step_size: int = typer.Option(0, help="Epochs between decays for --schedule step (0: epochs/3)."),
    gamma: float = typer.Option(0.1, help="Decay factor for --schedule step."),
    label_smoothing: float = typer.Option(0.0, help="Label smoothing of the training loss."),
    target_accuracy: float | None = typer.Option(
        None, help="Stop once validation accuracy reaches this fraction, e.g. 0.9."
    ),
    patience: int | None = typer.Option(
        None, help="Stop after this many epochs without a better validation accuracy."
    ),
    seed: int = typer.Option(0, help="Seed of the split, the batches, the initial weights."),
    device: Device = "auto",
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model (opt-in)."),
    layerwise: bool = typer.Option(False, "--layerwise", help="Greedy layer-wise: one conv block per stage."),
    freeze: bool = typer.Option(True, help="--layerwise: freeze earlier blocks (variant B) or not (C)."),
    stage_epochs: str = typer.Option("7", help="--layerwise: epochs per stage, one value or one per block."),
    aug_switch: str | None = typer.Option(None, help="--layerwise: STAGE:RECIPE, e.g. 4:jitter."),
    analyze_stages: bool = typer.Option(False, "--analyze-stages", help="--layerwise: CSI after each stage."),
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Train a model from scratch into a run directory (end to end, or --layerwise)."""
    from compresskit.layerwise import LayerwiseConfig
    from compresskit.progress import Progress
    from compresskit.runs import DataOptions, ModelOptions, train_run
    from compresskit.train import TrainConfig

    with user_errors():
        cfg = TrainConfig(
            epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
            weight_decay=weight_decay, schedule=schedule, step_size=step_size, gamma=gamma,
            label_smoothing=label_smoothing, target_accuracy=target_accuracy, patience=patience,
            seed=seed, device=device, compile=compile,
        )  # fmt: skip
        summary = train_run(
            out,
            ModelOptions(name=model, width=width, head=head, dropout=dropout, global_pool=global_pool),
            DataOptions(
                dataset=dataset,
                data_dir=str(data_dir) if data_dir is not None else None,
                download=download,
                val_fraction=val_fraction,
                augment=augment,
            ),
            cfg,
            overwrite=overwrite,
            progress=Progress(enabled=not quiet),
            layerwise=LayerwiseConfig(
                freeze=freeze, stage_epochs=LayerwiseConfig.parse_stage_epochs(stage_epochs),
                aug_switch=LayerwiseConfig.parse_aug_switch(aug_switch), analyze_stages=analyze_stages,
            ) if layerwise else None,
        )  # fmt: skip
    _print_table(
        f"trained {summary['model']} on {summary['dataset']}",
        [
            ("run directory", summary["run"]),
            ("parameters", f"{summary['parameters']:,}"),
            ("epochs run", f"{summary['epochs_run']} (stopped: {summary['stop_reason']})"),
            ("best epoch", str(summary["best_epoch"])),
            ("best val accuracy", _pct(summary["best_val_acc"])),
            ("test accuracy (best)", _pct(summary["test_acc"])),
            ("test accuracy (last)", _pct(summary["last_test_acc"])),
            ("training time", f"{summary['train_seconds']:.1f} s on {summary['device']}"),
        ],
    )


@app.command()
def evaluate(
    checkpoint: Path = typer.Option(..., help="Run directory (its checkpoint.pt) or a .pt file."),
    data_dir: RunDataDir = None,
    download: Download = True,
    batch_size: int = typer.Option(256, help="Evaluation batch size."),
    device: Device = "auto",
    tta: str = typer.Option(
        "none", help="Test-time augmentation: none, flip (mirror), flip-translate (mirror + 1-pixel moves)."
    ),
) -> None:
    """Test accuracy, per-class precision/recall/F1 and a confusion matrix, into the run directory."""
    from compresskit.runs import evaluate_run

    with user_errors():
        result = evaluate_run(
            checkpoint,
            data_dir=str(data_dir) if data_dir is not None else None,
            download=download,
            batch_size=batch_size,
            device=device,
            tta=tta,
        )
    per_class = result["per_class"]
    table = Table(title=f"per-class results on {result['dataset']} test", title_justify="left")
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in per_class.itertuples(index=False):
        table.add_row(escape(str(row[0])), f"{row[1]:.3f}", f"{row[2]:.3f}", f"{row[3]:.3f}", str(row[4]))
    if len(per_class) <= 20:
        console.print(table)
    run_dir = Path(result["checkpoint"]).parent
    tta_note = ""
    if result["tta"] != "none":
        tta_note = f" (with --tta {result['tta']}; {_pct(result['test_acc_no_tta'])} without)"
    _print_table(
        "evaluation",
        [
            ("checkpoint", result["checkpoint"]),
            ("test accuracy", _pct(result["test_acc"]) + tta_note),
            ("macro recall", _pct(result["macro_recall"])),
            ("macro F1", _pct(result["macro_f1"])),
            (
                "written",
                ", ".join(str(run_dir / f) for f in ("evaluation.json", "per_class.csv", "confusion.png")),
            ),
        ],
    )


@app.command()
def analyze(
    checkpoint: Path = typer.Option(..., help="Run directory (its checkpoint.pt) or a .pt file."),
    samples: int = typer.Option(1000, help="Class-balanced images per split (train and test)."),
    layers: str = typer.Option(
        "blocks", help="blocks (conv blocks + linear), pools (max-pools + linear), all, or a regex."
    ),
    metrics: str = typer.Option("csi,si,probe", help="Comma list of csi, si, probe; or none."),
    filters: bool = typer.Option(False, "--filters", help="Also draw the first-layer filters."),
    data_dir: RunDataDir = None,
    download: Download = True,
    batch_size: int = typer.Option(256, help="Batch size of the forward passes."),
    device: Device = "auto",
    seed: int = typer.Option(0, help="Seed of the class-balanced subsets."),
    quiet: Quiet = False,
) -> None:
    """Per-layer center separation index, separation index and linear-probe accuracy, train vs test."""
    from compresskit.progress import Progress
    from compresskit.runs import analyze_run

    with user_errors():
        result = analyze_run(
            checkpoint,
            samples=samples,
            layers=layers,
            metrics=metrics,
            filters=filters,
            data_dir=str(data_dir) if data_dir is not None else None,
            download=download,
            batch_size=batch_size,
            device=device,
            seed=seed,
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
    _print_table("analysis", [("written", ", ".join(result["files"]))])


def _print_report(table, title: str) -> None:
    """A `report.comparison_table` in 80 columns: per batch size N the latency in ms as
    median±spread% of its repeats ("ms bN") and the speed-up over the first row ("speed × bN"),
    then one warning per latency that varies too much between repeats (`report.latency_warnings`).
    Long model names wrap instead of being cut."""
    import math
    import re

    from compresskit.report import latency_warnings

    def known(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)

    def ms(value: object, spread: object) -> str:
        if not known(value):
            return "—"
        text = f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"
        return text + (f"±{100 * spread:.0f}%" if known(spread) else "")

    def number(value: object, fmt: str, scale: float = 1.0, unit: str = "") -> str:
        return f"{value / scale:{fmt}}{unit}" if known(value) else "—"

    found = (re.fullmatch(r"latency_b(\d+)_ms", str(c)) for c in table.columns)
    batches = sorted(int(m.group(1)) for m in found if m)
    # Columns one space apart (the SIMPLE_HEAD divider), no outer edge: 80 columns leave the model
    # name about 20 characters before it wraps.
    view = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", show_edge=False, padding=0)
    view.add_column("model", overflow="fold")
    labels = ["params", "MACs", *(f"ms\nb{n}" for n in batches), "test\nacc", "MACs\n×"]
    for label in [*labels, *(f"speed ×\nb{n}" for n in batches)]:
        view.add_column(label, justify="right", no_wrap=True)
    for row in table.to_dict("records"):
        speed = []
        for n in batches:  # comparison_table's ratio, else relative to the first row
            ratio = row.get(f"latency_reduction_b{n}")
            if ratio is None:
                ratio = table[f"latency_b{n}_ms"].iloc[0] / row[f"latency_b{n}_ms"]
            speed.append(number(ratio, ".2f"))
        view.add_row(
            escape(str(row["model"])), number(row.get("params"), ",.0f", 1e3, "k"),
            number(row.get("macs"), ".1f", 1e6, "M"),
            *(ms(row[f"latency_b{n}_ms"], row.get(f"latency_b{n}_spread")) for n in batches),
            _pct(row["test_acc"] if known(row.get("test_acc")) else None),
            number(row.get("macs_reduction"), ".2f"), *speed,
        )  # fmt: skip
    console.print(view)
    for warning in latency_warnings(table):
        console.print(f"[yellow]warning:[/] {escape(warning)}")


@app.command()
def prune(
    checkpoint: Source = ...,
    out: Path = typer.Option(..., "--out", help="Run directory to create for the pruned model."),
    ratio: float = typer.Option(0.5, help="Fraction of each conv layer's channels to remove, in (0, 1)."),
    importance: str = typer.Option("l1", help="l1|l2|bn-scale|taylor|random|separation."),
    scope: str = typer.Option("uniform", help="uniform (one ratio per layer) or global (rank all channels)."),
    allocate: str = typer.Option("uniform", help="uniform, or csi: per-layer ratios from CSI gains."),
    steps: int = typer.Option(1, help="Prune in this many steps, fine-tuning between them."),
    round_to: int | None = typer.Option(None, help="Keep channel counts a multiple of this."),
    max_layer_ratio: float = typer.Option(1.0, help="No layer loses more than this fraction."),
    calibration_samples: int = typer.Option(
        1000, help="Class-balanced training images for taylor, separation and --allocate csi."
    ),
    finetune_epochs: int = typer.Option(10, help="Fine-tuning epochs in all (split over --steps)."),
    batch_size: int = typer.Option(128, help="Fine-tuning batch size."),
    lr: float = typer.Option(0.01, help="Peak fine-tuning learning rate."),
    optimizer: str = typer.Option("sgd", help="sgd (Nesterov momentum) or adamw."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    weight_decay: float = typer.Option(5e-4, help="Weight decay on weights (not biases or BN)."),
    schedule: str = typer.Option("cosine", help="step|cosine|onecycle|none, stepped every batch."),
    label_smoothing: float = typer.Option(0.0, help="Label smoothing of the fine-tuning loss."),
    seed: int = typer.Option(0, help="Seed of the batches, the calibration subset, random importance."),
    device: Device = "auto",
    data_dir: RunDataDir = None,
    download: Download = True,
    bench_seconds: BenchSeconds = 1.0,
    threads: Threads = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Remove whole channels (torch-pruning), fine-tune, and report the savings."""
    from compresskit.compress import PruneConfig
    from compresskit.compress.jobs import prune_run
    from compresskit.progress import Progress
    from compresskit.train import TrainConfig

    with user_errors():
        cfg = PruneConfig(
            ratio=ratio, importance=importance, scope=scope, allocate=allocate, steps=steps,
            round_to=round_to, max_layer_ratio=max_layer_ratio, seed=seed,
        )  # fmt: skip
        finetune = TrainConfig(
            epochs=finetune_epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
            weight_decay=weight_decay, schedule=schedule, label_smoothing=label_smoothing, seed=seed,
            device=device,
        )  # fmt: skip
        result = prune_run(
            checkpoint, out, cfg, finetune, calibration_samples=calibration_samples,
            options=_job_options(data_dir, download, bench_seconds, threads, overwrite),
            progress=Progress(enabled=not quiet),
        )  # fmt: skip
    _print_report(result["table"], f"pruned {escape(str(checkpoint))} → {escape(str(out))}")
    _print_table(
        "pruning",
        [
            ("conv widths", str(result["conv_widths"])),
            ("written", f"{out}/ (checkpoint.pt, pruned.pt, report.md, report.csv, widths.csv, curves.png)"),
        ],
    )


def _job_options(data_dir: Path | None, download: bool, bench_seconds: float, threads: int | None,
                 overwrite: bool):  # fmt: skip
    from compresskit.compress.jobs import JobOptions

    return JobOptions(
        data_dir=str(data_dir) if data_dir is not None else None, download=download,
        bench_seconds=bench_seconds, threads=threads, overwrite=overwrite,
    )  # fmt: skip


def _finetune_config(epochs: int, lr: float, seed: int, device: str):
    from compresskit.train import TrainConfig

    return TrainConfig(epochs=epochs, lr=lr, schedule="cosine", seed=seed, device=device)


@app.command()
def lowrank(
    checkpoint: Source = ...,
    out: Path = typer.Option(..., "--out", help="Run directory to create for the factorized model."),
    energy: float | None = typer.Option(None, help="Keep this fraction of Σσ² per layer, in (0, 1]."),
    rank_ratio: float | None = typer.Option(None, help="Rank = this fraction of full rank, in (0, 1]."),
    layers: str = typer.Option("all", help="all, or a comma list such as block5,block6,fc1."),
    finetune_epochs: FinetuneEpochs = 10,
    lr: FinetuneLr = 0.01,
    seed: Seed = 0,
    device: Device = "auto",
    data_dir: RunDataDir = None,
    download: Download = True,
    bench_seconds: BenchSeconds = 1.0,
    threads: Threads = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Truncated-SVD factorization of conv and linear layers, then fine-tuning and a report."""
    from compresskit.compress.jobs import lowrank_run
    from compresskit.compress.lowrank import LowRankConfig
    from compresskit.progress import Progress

    with user_errors():
        if energy is None and rank_ratio is None:
            energy = 0.9
        result = lowrank_run(
            checkpoint, out, LowRankConfig(rank_ratio=rank_ratio, energy=energy, layers=layers),
            _finetune_config(finetune_epochs, lr, seed, device),
            options=_job_options(data_dir, download, bench_seconds, threads, overwrite),
            progress=Progress(enabled=not quiet),
        )  # fmt: skip
    _print_report(result["table"], f"factorized {escape(str(checkpoint))} → {escape(str(out))}")
    written = f"{out}/ (checkpoint.pt, factorized.pt, ranks.csv, report.md, report.csv)"
    _print_table("low-rank", [("written", written)])


@app.command()
def depth(
    checkpoint: Source = ...,
    out: Path = typer.Option(..., "--out", help="Run directory to create for the shallower model."),
    min_gain: float = typer.Option(0.01, help="Keep blocks up to the last whose test-CSI gain exceeds this."),
    keep_blocks: int | None = typer.Option(None, help="Keep exactly this many conv blocks instead."),
    samples: int = typer.Option(1000, help="Class-balanced test images for the CSI per block."),
    finetune_epochs: FinetuneEpochs = 10,
    lr: FinetuneLr = 0.01,
    seed: Seed = 0,
    device: Device = "auto",
    data_dir: RunDataDir = None,
    download: Download = True,
    bench_seconds: BenchSeconds = 1.0,
    threads: Threads = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Remove the conv blocks after test CSI stops growing, attach a fresh head, fine-tune, report."""
    from compresskit.compress.jobs import depth_run
    from compresskit.progress import Progress

    with user_errors():
        result = depth_run(
            checkpoint, out, _finetune_config(finetune_epochs, lr, seed, device), min_gain=min_gain,
            keep_blocks=keep_blocks, samples=samples,
            options=_job_options(data_dir, download, bench_seconds, threads, overwrite),
            progress=Progress(enabled=not quiet),
        )  # fmt: skip
    view = Table(box=box.SIMPLE_HEAD, title="test CSI per block", title_justify="left")
    for column in ("block", "test CSI", "gain", "kept"):
        view.add_column(column, justify="left" if column == "block" else "right")
    for row in result["depth"].itertuples():
        view.add_row(row.block, f"{row.csi_test:.3f}", f"{row.gain:+.3f}", "yes" if row.kept else "removed")
    console.print(view)
    _print_report(result["table"], f"shortened {escape(str(checkpoint))} → {escape(str(out))}")


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="Run directories or .pt files; the first is the baseline."),
    out: Path = typer.Option(Path("report"), "--out", help="Folder for report.csv, report.md, pareto.png."),
    device: str = typer.Option("cpu", help="Where latency is measured: cpu|cuda|auto."),
    bench_seconds: BenchSeconds = 1.0,
    threads: Threads = None,
    quiet: Quiet = False,
) -> None:
    """Compare runs: parameters, MACs, size, latency, accuracy, and a Pareto plot."""
    from compresskit.compress.jobs import report_run
    from compresskit.progress import Progress

    with user_errors():
        result = report_run(
            [str(r) for r in runs], out, device=device, bench_seconds=bench_seconds, threads=threads,
            progress=Progress(enabled=not quiet),
        )  # fmt: skip
    _print_report(result["table"], "model comparison (reductions relative to the first run)")
    _print_table("report", [("written", ", ".join(result["files"]))])


@app.command()
def sensitivity(
    checkpoint: Path = typer.Option(..., help="Run directory (its checkpoint.pt) or a .pt file."),
    ratios: str = typer.Option("0.25,0.5,0.75", help="Comma list of fractions of channels to remove."),
    importance: str = typer.Option("l1", help="l1|l2|bn-scale|random (no data-driven ones here)."),
    samples: int | None = typer.Option(None, help="Evaluate on this many class-balanced test images."),
    data_dir: RunDataDir = None,
    download: Download = True,
    batch_size: int = typer.Option(256, help="Evaluation batch size."),
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Prune each conv layer alone at each ratio (no fine-tuning) and chart the accuracy lost."""
    from compresskit.compress.jobs import sensitivity_run
    from compresskit.progress import Progress

    with user_errors():
        try:
            values = [float(r) for r in ratios.split(",") if r.strip()]
        except ValueError:
            message = f"--ratios '{ratios}' must be a comma list of numbers, e.g. 0.25,0.5."
            raise CompresskitError(message) from None
        result = sensitivity_run(
            checkpoint, values, importance=importance, samples=samples,
            data_dir=str(data_dir) if data_dir is not None else None, download=download,
            batch_size=batch_size, device=device, progress=Progress(enabled=not quiet),
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
