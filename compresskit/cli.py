"""The `compresskit` command: a thin typer shell over the library (parse, call, print a summary)."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

try:  # recent typer vendors click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # older typer depends on click itself
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from compresskit.errors import CompresskitError

console = Console()
err_console = Console(stderr=True)


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum of `values` (member name = value): typer validates it and ``--help`` lists it."""
    return Enum(name, {v: v for v in values}, type=str)


# The allowed values of fixed-choice options; tests/test_cli.py checks each against the library's
# own tuple (models.MODEL_NAMES, data.DATASET_NAMES, …), which would pull in torch at import.
ModelName = _choices(
    "ModelName",
    (
        *(
            f"{b}{bn}"
            for b in ("vgg11", "vgg13", "vgg16", "vgg19", "cnn", "cnn_deep", "cnn_se")
            for bn in ("", "_bn")
        ),
    ),
)
DatasetName = _choices(
    "DatasetName", ("cifar10", "cifar100", "fashion-mnist", "mnist", "digits", "synthetic")
)
HeadName = _choices("HeadName", ("linear", "mlp"))
OptimizerName = _choices("OptimizerName", ("sgd", "adamw"))
ScheduleName = _choices("ScheduleName", ("step", "cosine", "onecycle", "none"))
DeviceName = _choices("DeviceName", ("auto", "cpu", "cuda"))
ImportanceName = _choices("ImportanceName", ("l1", "l2", "bn-scale", "taylor", "random", "separation"))
SensitivityImportance = _choices("SensitivityImportance", ("l1", "l2", "bn-scale", "random"))
ScopeName = _choices("ScopeName", ("uniform", "global"))
AllocateName = _choices("AllocateName", ("uniform", "csi"))
TtaName = _choices("TtaName", ("none", "flip", "flip-translate"))
PrecisionName = _choices("PrecisionName", ("auto", "fp32", "bf16"))
PatienceMetric = _choices("PatienceMetric", ("val_acc", "val_loss"))
LabelSet = _choices("LabelSet", ("fine", "coarse"))
InitName = _choices("InitName", ("kaiming", "torch"))

FOLDER_PREFIX = "folder:"  # --dataset folder:PATH: an image folder (compresskit.image_folder)


def _dataset_option(value: str) -> str:
    """A ``--dataset``: one of `DatasetName`, or ``folder:PATH``."""
    if value in DatasetName.__members__ or (value.startswith(FOLDER_PREFIX) and value != FOLDER_PREFIX):
        return value
    names = ", ".join(repr(m.value) for m in DatasetName)
    raise typer.BadParameter(f"Value error, {value!r} is not one of {names}, nor folder:PATH.")


TORCHVISION_PREFIX = "torchvision:"  # --model torchvision:NAME (compresskit.zoo)


def _model_option(value: str) -> str:
    """A ``--model``: one of `ModelName`, or ``torchvision:NAME`` (the name is checked by the job)."""
    torchvision = value.startswith(TORCHVISION_PREFIX) and value != TORCHVISION_PREFIX
    if value in ModelName.__members__ or torchvision:
        return value
    names = ", ".join(repr(m.value) for m in ModelName)
    raise typer.BadParameter(f"Value error, {value!r} is not one of {names}, nor torchvision:NAME.")


def _json_object(value: str | None, flag: str) -> dict | None:
    """`value` parsed as a JSON object, None when not given; one sentence naming `flag` otherwise."""
    import json

    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise CompresskitError(
            f"{flag} {value!r} is not valid JSON ({exc}); give an object such as '{{}}'."
        ) from None
    if not isinstance(parsed, dict):
        raise CompresskitError(f"{flag} {value!r} must be a JSON object such as '{{\"dropout\": 0.2}}'.")
    return parsed


def _version(value: bool) -> None:
    if value:
        from compresskit import __version__

        typer.echo(f"compresskit {__version__}")
        raise typer.Exit()


class _OneLineUsageErrors(TyperGroup):
    """click's own errors (an unknown choice, a missing value) as one line on stderr, ``error: …``,
    with exit code 2, like every other bad input; click would print a usage block first."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except UsageError as exc:
            err_console.print(
                f"[bold red]error:[/] {escape(exc.format_message())}", highlight=False, soft_wrap=True
            )
            sys.exit(2)
        except ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineUsageErrors,
    rich_markup_mode=None,  # click's plain help wraps at any width and never cuts a flag or its choices
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Train VGG-family CNNs on small image sets, look inside them layer by layer, shrink them.",
)


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Train VGG-family CNNs on small image sets, look inside them layer by layer, shrink them."""


# Options shared by several commands.
Device = Annotated[DeviceName, typer.Option(help="Where to compute.")]
PrecisionOption = Annotated[
    PrecisionName,
    typer.Option(
        help="auto: bf16 autocast on CUDA or a CPU with native bf16, else fp32 (always channels_last)."
    ),
]
RunDataDir = Annotated[Path | None, typer.Option(help="Dataset folder (default: the one used in training).")]
Download = Annotated[bool, typer.Option(help="Download CIFAR (checksum-verified) when not on disk.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress output.")]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace --out when it is this command's own earlier output.")
]
BenchSeconds = Annotated[float, typer.Option(help="Seconds of timing per latency measurement.")]
Threads = Annotated[int | None, typer.Option(help="CPU threads for latency (default: torch's count).")]
Source = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint", "--from", help="Run directory (its checkpoint.pt) or .pt file: trained or compressed."
    ),
]
FinetuneEpochs = Annotated[int, typer.Option(help="Fine-tuning epochs in all.")]
FinetuneLr = Annotated[float, typer.Option(help="Peak fine-tuning learning rate (SGD, cosine).")]
Seed = Annotated[int, typer.Option(help="Seed of the fine-tuning batches and the subsets.")]
SyncBn = Annotated[
    bool,
    typer.Option(
        "--sync-bn",
        help="Under torchrun on CUDA: batch-norm statistics over the global batch (SyncBatchNorm).",
    ),
]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a `CompresskitError` into one line on stderr and its exit code (2; 130 for a run
    stopped by a signal)."""
    try:
        yield
    except CompresskitError as exc:
        code = getattr(exc, "exit_code", 2)
        label = "stopped" if code == 130 else "error"
        err_console.print(f"[bold red]{label}:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None


def _print_table(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # a long path wraps instead of losing its end
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _refuse_changes(ctx: typer.Context, allowed: set[str], flag: str) -> None:
    """With --resume the run's own configuration is used: refuse any other flag given explicitly."""
    given = [
        "--" + name.replace("_", "-")
        for name in ctx.params
        if name not in allowed and ctx.get_parameter_source(name).name != "DEFAULT"
    ]
    if given:
        raise CompresskitError(
            f"{flag} continues the run with its own configuration; drop {', '.join(given)} "
            "(only --data-dir, --download and --quiet may be given)."
        )


@app.command()
def train(
    ctx: typer.Context,
    out: Path | None = typer.Option(None, "--out", help="Run directory to create."),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue this stopped run directory from its last finished epoch."
    ),
    model: str = typer.Option(
        "vgg11_bn",
        metavar="<name>",
        callback=_model_option,
        help="Model: " + ", ".join(m.value for m in ModelName) + ", or torchvision:NAME (any torchvision "
        "classification model, e.g. torchvision:resnet18, randomly initialised).",
    ),
    model_kwargs: str | None = typer.Option(
        None, help="torchvision:NAME: its keyword arguments as a JSON object, e.g. '{\"dropout\": 0.2}'."
    ),
    cifar_stem: bool = typer.Option(
        False,
        "--cifar-stem",
        help="torchvision:NAME: a 3x3 stride-1 stem conv and no max-pool (for ResNets on 32x32 images).",
    ),
    dataset: str = typer.Option(
        "digits",
        metavar="<name>",
        callback=_dataset_option,
        help=f"Dataset: {', '.join(m.value for m in DatasetName)}, or folder:PATH (an image folder: "
        "PATH/train/CLASS/*, PATH/test/CLASS/*, optionally PATH/val/CLASS/* for validation).",
    ),
    data_dir: Path | None = typer.Option(None, help="Folder holding the dataset files (default ./data)."),
    download: Download = True,
    width: float = typer.Option(1.0, help="Channel width multiplier."),
    head: HeadName = typer.Option(
        "linear", help="linear: features→classes; mlp: features→512·width→classes."
    ),
    dropout: float = typer.Option(0.0, help="Dropout before the head's last linear layer."),
    global_pool: bool = typer.Option(False, help="Average-pool the last feature map before the head."),
    init: InitName = typer.Option("kaiming", help="Initial weights: Kaiming, or PyTorch's layer defaults."),
    labels: LabelSet = typer.Option("fine", help="cifar100: 100 fine classes or 20 coarse superclasses."),
    val_fraction: float = typer.Option(0.1, help="Stratified share of train held out for validation."),
    image_size: int = typer.Option(32, help="Side in pixels every image is resized to (square)."),
    augment: str | None = typer.Option(
        None,
        help="Comma list of crop[=PAD], flip, rotate[=DEGREES], cutout[=SIZE], jitter[=AMOUNT], or none. "
        "Default: crop,flip (crop only for digits and mnist).",
    ),
    epochs: int = typer.Option(30, help="Maximum number of epochs."),
    batch_size: int = typer.Option(128, help="Training batch size."),
    lr: float = typer.Option(0.05, help="Peak learning rate."),
    optimizer: OptimizerName = typer.Option("sgd", help="SGD with Nesterov momentum, or AdamW."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    weight_decay: float = typer.Option(5e-4, help="Weight decay on weights (not biases or BN)."),
    schedule: ScheduleName = typer.Option("onecycle", help="Learning-rate schedule, stepped every batch."),
    step_size: int = typer.Option(0, help="Epochs between decays for --schedule step (0: epochs/3)."),
    gamma: float = typer.Option(0.1, help="Decay factor for --schedule step."),
    label_smoothing: float = typer.Option(0.0, help="Label smoothing of the training loss."),
    target_accuracy: float | None = typer.Option(
        None, help="Stop once validation accuracy reaches this fraction, e.g. 0.9."
    ),
    patience: int | None = typer.Option(
        None, help="Stop after this many epochs without a better --patience-metric."
    ),
    patience_metric: PatienceMetric = typer.Option("val_acc", help="What --patience watches."),
    min_delta: float = typer.Option(0.0, help="--patience: the change that counts as better."),
    nesterov: bool = typer.Option(True, help="Nesterov momentum for SGD."),
    seed: int = typer.Option(0, help="Seed of the split, the batches, the initial weights."),
    device: Device = DeviceName.auto,
    precision: PrecisionOption = PrecisionName.auto,
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model (opt-in)."),
    sync_bn: SyncBn = False,
    layerwise: bool = typer.Option(False, "--layerwise", help="Greedy layer-wise: one conv block per stage."),
    freeze: bool = typer.Option(True, help="--layerwise: freeze earlier blocks (variant B) or not (C)."),
    stage_epochs: str = typer.Option("7", help="--layerwise: epochs per stage, one value or one per block."),
    aug_switch: str | None = typer.Option(None, help="--layerwise: STAGE:RECIPE, e.g. 4:jitter."),
    analyze_stages: bool = typer.Option(False, "--analyze-stages", help="--layerwise: CSI after each stage."),
    tensorboard: bool = typer.Option(
        False, "--tensorboard", help="Also write TensorBoard event files into RUN/tensorboard/."
    ),
    track_test: bool = typer.Option(
        False, "--track-test", help="Evaluate the test split every epoch (curves only, not selection)."
    ),
    ema: float | None = typer.Option(
        None, help="Moving average of the weights with this decay, e.g. 0.999: evaluated and saved."
    ),
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Train a model from scratch into a run directory (end to end, or --layerwise); --resume RUN
    continues a stopped one. Under torchrun --nproc_per_node N: data-parallel over N processes."""
    from compresskit import distributed
    from compresskit.jobs import DataOptions, ModelOptions, resume_train_run, train_run
    from compresskit.layerwise import LayerwiseConfig
    from compresskit.progress import Progress
    from compresskit.train import TrainConfig

    with user_errors():
        progress = Progress(enabled=not quiet and distributed.is_main())
        data_folder = str(data_dir) if data_dir is not None else None
        if resume is not None:
            _refuse_changes(ctx, {"resume", "data_dir", "download", "quiet"}, "--resume")
            summary = resume_train_run(resume, data_dir=data_folder, download=download, progress=progress)
        else:
            if out is None:
                raise CompresskitError("train needs --out DIR (a new run directory) or --resume RUN.")
            cfg = TrainConfig(
                epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer.value, momentum=momentum,
                weight_decay=weight_decay, schedule=schedule.value, step_size=step_size, gamma=gamma,
                label_smoothing=label_smoothing, target_accuracy=target_accuracy, patience=patience,
                seed=seed, device=device.value, compile=compile, precision=precision.value,
                patience_metric=patience_metric.value, min_delta=min_delta, nesterov=nesterov,
                sync_bn=sync_bn, track_test=track_test, ema=ema,
            )  # fmt: skip
            summary = train_run(
                out,
                ModelOptions(name=model, width=width, head=head.value, dropout=dropout,
                             global_pool=global_pool, init=init.value,
                             kwargs=_json_object(model_kwargs, "--model-kwargs"), cifar_stem=cifar_stem),
                DataOptions(dataset=dataset, data_dir=data_folder, download=download,
                            val_fraction=val_fraction, augment=augment, labels=labels.value,
                            image_size=image_size),
                cfg,
                overwrite=overwrite,
                progress=progress,
                layerwise=LayerwiseConfig(
                    freeze=freeze, stage_epochs=LayerwiseConfig.parse_stage_epochs(stage_epochs),
                    aug_switch=LayerwiseConfig.parse_aug_switch(aug_switch), analyze_stages=analyze_stages,
                ) if layerwise else None,
                tensorboard=tensorboard,
            )  # fmt: skip
    if not distributed.is_main():
        return
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
            *([("weights", f"moving average, --ema {summary['ema']}")] if summary.get("ema") else []),
            ("training time", _train_time(summary)),
        ],
    )


def _train_time(summary: dict) -> str:
    processes = summary.get("world_size", 1)
    return f"{summary['train_seconds']:.1f} s on {summary['device']}" + (
        f" × {processes} processes" if processes > 1 else ""
    )


@app.command()
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
) -> None:
    """Test accuracy, per-class precision/recall/F1, confusion matrix, into RUN/evaluation/."""
    from compresskit.jobs import evaluate_run

    with user_errors():
        result = evaluate_run(
            checkpoint,
            data_dir=str(data_dir) if data_dir is not None else None,
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


@app.command()
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
) -> None:
    """Per-layer center separation index, separation index and linear-probe accuracy, train vs test."""
    from compresskit.jobs import analyze_run
    from compresskit.progress import Progress

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


def _print_report(table, title: str) -> None:
    """A `report.comparison_table` in 80 columns: per batch size N the latency in ms as
    median±spread% of its repeats ("ms bN") and the speed-up over the first row ("speed × bN":
    the paired ``speedup_bN``±spread% where measured in interleaved rounds), then one warning per
    latency or speed-up that varies too much between repeats (`report.latency_warnings`).
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
        for n in batches:  # the paired speed-up ± its spread, else comparison_table's ratio of medians
            if known(row.get(f"speedup_b{n}")):
                speed.append(ms(row[f"speedup_b{n}"], row.get(f"speedup_b{n}_spread")))
                continue
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


ResumeOut = Annotated[
    Path | None,
    typer.Option("--resume", help="Continue this stopped run directory from its last finished epoch."),
]
RESUME_ALLOWED = {"resume", "data_dir", "download", "quiet", "bench_seconds", "threads"}
Distill = Annotated[
    bool, typer.Option(help="Fine-tune towards a teacher's soft outputs too: (1-w)*CE + w*T^2*KL.")
]
DistillTemperature = Annotated[float, typer.Option(help="--distill: softmax temperature T, above 0.")]
DistillWeight = Annotated[float, typer.Option(help="--distill: weight w of the teacher's term, in [0, 1].")]
Teacher = Annotated[
    Path | None, typer.Option(help="--distill: teacher run directory or .pt (default: --checkpoint).")
]


def _resume_compression(ctx: typer.Context, run: Path, command: str, data_dir: Path | None, download: bool,
                        bench_seconds: float, threads: int | None, quiet: bool) -> dict:  # fmt: skip
    from compresskit.jobs import resume_compress_run

    _refuse_changes(ctx, RESUME_ALLOWED, "--resume")
    return resume_compress_run(
        run, command, data_dir=str(data_dir) if data_dir is not None else None, download=download,
        bench_seconds=bench_seconds, threads=threads, progress=_progress(quiet),
    )  # fmt: skip


def _progress(quiet: bool):
    """Progress on stderr, from rank 0 only under torchrun."""
    from compresskit import distributed
    from compresskit.progress import Progress

    return Progress(enabled=not quiet and distributed.is_main())


def _elsewhere() -> bool:
    """Whether this is a torchrun process other than rank 0 (which prints nothing)."""
    from compresskit import distributed

    return not distributed.is_main()


def _source_and_out(checkpoint: Path | None, out: Path | None, command: str) -> tuple[Path, Path]:
    if checkpoint is None or out is None:
        raise CompresskitError(f"{command} needs --checkpoint RUN and --out DIR (or --resume OUT).")
    return checkpoint, out


@app.command()
def prune(
    ctx: typer.Context,
    checkpoint: Source = None,
    out: Path | None = typer.Option(None, "--out", help="Run directory to create for the pruned model."),
    resume: ResumeOut = None,
    ratio: float = typer.Option(0.5, help="Fraction of each conv layer's channels to remove, in (0, 1)."),
    importance: ImportanceName = typer.Option("l1", help="How channels are ranked."),
    scope: ScopeName = typer.Option("uniform", help="One ratio per layer, or rank all channels together."),
    allocate: AllocateName = typer.Option("uniform", help="csi: per-layer ratios from CSI gains."),
    steps: int = typer.Option(1, help="Prune in this many steps, fine-tuning between them."),
    round_to: int | None = typer.Option(None, help="Keep channel counts a multiple of this."),
    max_layer_ratio: float = typer.Option(1.0, help="No layer loses more than this fraction."),
    calibration_samples: int = typer.Option(
        1000, help="Class-balanced training images for taylor, separation and --allocate csi."
    ),
    finetune_epochs: int = typer.Option(10, help="Fine-tuning epochs in all (split over --steps)."),
    batch_size: int = typer.Option(128, help="Fine-tuning batch size."),
    lr: float = typer.Option(0.01, help="Peak fine-tuning learning rate."),
    optimizer: OptimizerName = typer.Option("sgd", help="SGD with Nesterov momentum, or AdamW."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    weight_decay: float = typer.Option(5e-4, help="Weight decay on weights (not biases or BN)."),
    schedule: ScheduleName = typer.Option("cosine", help="Learning-rate schedule, stepped every batch."),
    label_smoothing: float = typer.Option(0.0, help="Label smoothing of the fine-tuning loss."),
    seed: int = typer.Option(0, help="Seed of the batches, the calibration subset, random importance."),
    device: Device = DeviceName.auto,
    precision: PrecisionOption = PrecisionName.auto,
    sync_bn: SyncBn = False,
    distill: Distill = False,
    distill_temperature: DistillTemperature = 4.0,
    distill_weight: DistillWeight = 0.9,
    teacher: Teacher = None,
    data_dir: RunDataDir = None,
    download: Download = True,
    bench_seconds: BenchSeconds = 1.0,
    threads: Threads = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Remove whole channels (torch-pruning), fine-tune, and report the savings."""
    from compresskit.compress import PruneConfig
    from compresskit.jobs import prune_run
    from compresskit.train import TrainConfig

    with user_errors():
        if resume is not None:
            result = _resume_compression(
                ctx, resume, "prune", data_dir, download, bench_seconds, threads, quiet
            )
            out = resume
        else:
            checkpoint, out = _source_and_out(checkpoint, out, "prune")
            cfg = PruneConfig(
                ratio=ratio, importance=importance.value, scope=scope.value, allocate=allocate.value,
                steps=steps, round_to=round_to, max_layer_ratio=max_layer_ratio, seed=seed,
            )  # fmt: skip
            finetune = TrainConfig(
                epochs=finetune_epochs, batch_size=batch_size, lr=lr, optimizer=optimizer.value,
                momentum=momentum, weight_decay=weight_decay, schedule=schedule.value,
                label_smoothing=label_smoothing, seed=seed, device=device.value, precision=precision.value,
                sync_bn=sync_bn,
            )  # fmt: skip
            result = prune_run(
                checkpoint, out, cfg, finetune, calibration_samples=calibration_samples,
                options=_job_options(data_dir, download, bench_seconds, threads, overwrite,
                                     _distill(distill, teacher, distill_temperature, distill_weight)),
                progress=_progress(quiet),
            )  # fmt: skip
    if _elsewhere():
        return
    _print_report(result["table"], f"pruned → {escape(str(out))}")
    _print_table(
        "pruning",
        [
            ("conv widths", str(result["conv_widths"])) if "conv_widths" in result
            else ("channels", str(result.get("channels"))),
            ("written", f"{out}/ (checkpoint.pt, pruned.pt, report.md, report.csv, widths.csv, curves.png)"),
        ],
    )


def _job_options(data_dir: Path | None, download: bool, bench_seconds: float, threads: int | None,
                 overwrite: bool, distill: dict | None = None):  # fmt: skip
    from compresskit.jobs import JobOptions

    return JobOptions(
        data_dir=str(data_dir) if data_dir is not None else None, download=download,
        bench_seconds=bench_seconds, threads=threads, overwrite=overwrite, **(distill or {}),
    )  # fmt: skip


def _distill(distill: bool, teacher: Path | None, temperature: float, weight: float) -> dict:
    """The `JobOptions` fields of --distill, --teacher, --distill-temperature, --distill-weight."""
    return {"distill": distill, "teacher": str(teacher) if teacher is not None else None,
            "distill_temperature": temperature, "distill_weight": weight}  # fmt: skip


def _finetune_config(
    epochs: int, lr: float, seed: int, device: DeviceName, precision: PrecisionName, sync_bn: bool
):
    from compresskit.train import TrainConfig

    return TrainConfig(
        epochs=epochs, lr=lr, schedule="cosine", seed=seed, device=device.value, precision=precision.value,
        sync_bn=sync_bn,
    )  # fmt: skip


@app.command()
def lowrank(
    ctx: typer.Context,
    checkpoint: Source = None,
    out: Path | None = typer.Option(None, "--out", help="Run directory to create for the factorized model."),
    resume: ResumeOut = None,
    energy: float | None = typer.Option(None, help="Keep this fraction of Σσ² per layer, in (0, 1]."),
    rank_ratio: float | None = typer.Option(None, help="Rank = this fraction of full rank, in (0, 1]."),
    layers: str = typer.Option("all", help="all, or a comma list such as block5,block6,fc1."),
    finetune_epochs: FinetuneEpochs = 10,
    lr: FinetuneLr = 0.01,
    seed: Seed = 0,
    device: Device = DeviceName.auto,
    precision: PrecisionOption = PrecisionName.auto,
    sync_bn: SyncBn = False,
    distill: Distill = False,
    distill_temperature: DistillTemperature = 4.0,
    distill_weight: DistillWeight = 0.9,
    teacher: Teacher = None,
    data_dir: RunDataDir = None,
    download: Download = True,
    bench_seconds: BenchSeconds = 1.0,
    threads: Threads = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Truncated-SVD factorization of conv and linear layers, then fine-tuning and a report."""
    from compresskit.compress.lowrank import LowRankConfig
    from compresskit.jobs import lowrank_run

    with user_errors():
        if resume is not None:
            result = _resume_compression(
                ctx, resume, "lowrank", data_dir, download, bench_seconds, threads, quiet
            )
            out = resume
        else:
            checkpoint, out = _source_and_out(checkpoint, out, "lowrank")
            if energy is None and rank_ratio is None:
                energy = 0.9
            result = lowrank_run(
                checkpoint, out, LowRankConfig(rank_ratio=rank_ratio, energy=energy, layers=layers),
                _finetune_config(finetune_epochs, lr, seed, device, precision, sync_bn),
                options=_job_options(data_dir, download, bench_seconds, threads, overwrite,
                                     _distill(distill, teacher, distill_temperature, distill_weight)),
                progress=_progress(quiet),
            )  # fmt: skip
    if _elsewhere():
        return
    _print_report(result["table"], f"factorized → {escape(str(out))}")
    written = f"{out}/ (checkpoint.pt, factorized.pt, ranks.csv, report.md, report.csv)"
    _print_table("low-rank", [("written", written)])


@app.command()
def depth(
    ctx: typer.Context,
    checkpoint: Source = None,
    out: Path | None = typer.Option(None, "--out", help="Run directory to create for the shallower model."),
    resume: ResumeOut = None,
    min_gain: float = typer.Option(0.01, help="Keep blocks up to the last whose test-CSI gain exceeds this."),
    keep_blocks: int | None = typer.Option(None, help="Keep exactly this many conv blocks instead."),
    samples: int = typer.Option(1000, help="Class-balanced test images for the CSI per block."),
    finetune_epochs: FinetuneEpochs = 10,
    lr: FinetuneLr = 0.01,
    seed: Seed = 0,
    device: Device = DeviceName.auto,
    precision: PrecisionOption = PrecisionName.auto,
    sync_bn: SyncBn = False,
    distill: Distill = False,
    distill_temperature: DistillTemperature = 4.0,
    distill_weight: DistillWeight = 0.9,
    teacher: Teacher = None,
    data_dir: RunDataDir = None,
    download: Download = True,
    bench_seconds: BenchSeconds = 1.0,
    threads: Threads = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Remove the conv blocks after test CSI stops growing, attach a fresh head, fine-tune, report."""
    from compresskit.jobs import depth_run

    with user_errors():
        if resume is not None:
            result = _resume_compression(
                ctx, resume, "depth", data_dir, download, bench_seconds, threads, quiet
            )
            out = resume
        else:
            checkpoint, out = _source_and_out(checkpoint, out, "depth")
            result = depth_run(
                checkpoint, out, _finetune_config(finetune_epochs, lr, seed, device, precision, sync_bn),
                min_gain=min_gain, keep_blocks=keep_blocks, samples=samples,
                options=_job_options(data_dir, download, bench_seconds, threads, overwrite,
                                     _distill(distill, teacher, distill_temperature, distill_weight)),
                progress=_progress(quiet),
            )  # fmt: skip
    if _elsewhere():
        return
    view = Table(box=box.SIMPLE_HEAD, title="test CSI per block", title_justify="left")
    for column in ("block", "test CSI", "gain", "kept"):
        view.add_column(column, justify="left" if column == "block" else "right")
    for row in result["depth"].itertuples():
        view.add_row(row.block, f"{row.csi_test:.3f}", f"{row.gain:+.3f}", "yes" if row.kept else "removed")
    console.print(view)
    _print_report(result["table"], f"shortened → {escape(str(out))}")


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="Run directories or .pt files; the first is the baseline."),
    out: Path = typer.Option(..., "--out", help="New folder for report.csv, report.md, pareto.png."),
    device: DeviceName = typer.Option("cpu", help="Where latency is measured."),
    bench_seconds: BenchSeconds = 4.0,  # jobs.report.REPORT_BENCH_SECONDS
    threads: Threads = None,
    rounds: int = typer.Option(20, help="Rounds the timing is split into; each times every model once."),
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Compare runs: parameters, MACs, size, latency, accuracy, and a Pareto plot."""
    from compresskit.jobs import report_run
    from compresskit.progress import Progress

    with user_errors():
        result = report_run(
            [str(r) for r in runs], out, device=device.value, bench_seconds=bench_seconds, threads=threads,
            rounds=rounds, overwrite=overwrite, progress=Progress(enabled=not quiet),
        )  # fmt: skip
    _print_report(result["table"], "model comparison (reductions relative to the first run)")
    _print_table("report", [("written", ", ".join(result["files"]))])


@app.command("import")
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

    with user_errors():
        summary = import_run(
            out,
            ImportOptions(
                factory=factory, weights=str(weights), dataset=dataset,
                factory_kwargs=_json_object(factory_kwargs, "--factory-kwargs"), trust_factory=trust_factory,
                data_dir=str(data_dir) if data_dir is not None else None, download=download,
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


@app.command()
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
) -> None:
    """Prune each conv layer alone at each ratio (no fine-tuning) and chart the accuracy lost."""
    from compresskit.jobs import sensitivity_run
    from compresskit.progress import Progress

    with user_errors():
        try:
            values = [float(r) for r in ratios.split(",") if r.strip()]
        except ValueError:
            message = f"--ratios '{ratios}' must be a comma list of numbers, e.g. 0.25,0.5."
            raise CompresskitError(message) from None
        result = sensitivity_run(
            checkpoint, values, importance=importance.value, samples=samples,
            data_dir=str(data_dir) if data_dir is not None else None, download=download,
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
