"""`compresskit train`: a model from scratch into a run directory, or --resume of a stopped one."""

from pathlib import Path

import typer

from compresskit.cli.app import user_errors
from compresskit.cli.options import (
    DatasetName,
    Device,
    DeviceName,
    Download,
    HeadName,
    InitName,
    LabelSet,
    ModelName,
    OptimizerName,
    Overwrite,
    PatienceMetric,
    PrecisionName,
    PrecisionOption,
    Quiet,
    ScheduleName,
    SyncBn,
    _dataset_option,
    _json_object,
    _model_option,
    _refuse_changes,
    _str_or_none,
)
from compresskit.cli.render import _pct, _print_table
from compresskit.errors import CompresskitError


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
    lr: float | None = typer.Option(
        None,
        help="Peak learning rate (default: 0.05 for sgd; for adamw 0.001, or 0.0003 for a model of more "
        "than 10 conv layers).",
    ),
    optimizer: OptimizerName | None = typer.Option(
        None,
        help="SGD with Nesterov momentum, or AdamW (default: sgd; adamw for a model without batch norm "
        "when --lr is not given either).",
    ),
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
    from compresskit.jobs.train import default_recipe
    from compresskit.layerwise import LayerwiseConfig
    from compresskit.progress import Progress
    from compresskit.train import TrainConfig

    with user_errors():
        progress = Progress(enabled=not quiet and distributed.is_main())
        data_folder = _str_or_none(data_dir)
        if resume is not None:
            _refuse_changes(ctx, {"resume", "data_dir", "download", "quiet"}, "--resume")
            summary = resume_train_run(resume, data_dir=data_folder, download=download, progress=progress)
        else:
            if out is None:
                raise CompresskitError("train needs --out DIR (a new run directory) or --resume RUN.")
            model_options = ModelOptions(
                name=model, width=width, head=head.value, dropout=dropout, global_pool=global_pool,
                init=init.value, kwargs=_json_object(model_kwargs, "--model-kwargs"), cifar_stem=cifar_stem,
            )  # fmt: skip
            # the model's defaults are resolved here, so config.json records the values used
            optimizer_name, lr = default_recipe(model_options, optimizer and optimizer.value, lr)
            cfg = TrainConfig(
                epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer_name, momentum=momentum,
                weight_decay=weight_decay, schedule=schedule.value, step_size=step_size, gamma=gamma,
                label_smoothing=label_smoothing, target_accuracy=target_accuracy, patience=patience,
                seed=seed, device=device.value, compile=compile, precision=precision.value,
                patience_metric=patience_metric.value, min_delta=min_delta, nesterov=nesterov,
                sync_bn=sync_bn, track_test=track_test, ema=ema,
            )  # fmt: skip
            summary = train_run(
                out,
                model_options,
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
    """Training seconds and device, times the process count under torchrun."""
    processes = summary.get("world_size", 1)
    return f"{summary['train_seconds']:.1f} s on {summary['device']}" + (
        f" × {processes} processes" if processes > 1 else ""
    )
