"""Run directories and the jobs that fill them: `train_run` makes one, `evaluate_run` adds to one.

A run directory holds ``config.json``, ``history.csv``, ``checkpoint.pt`` (best validation
accuracy), ``last.pt``, ``curves.png`` and ``summary.json`` (with the best checkpoint's test
accuracy). It is built in a hidden staging folder beside its final place and renamed into place
only when complete, so a failed run never leaves a half-made directory behind.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from compresskit import __version__
from compresskit.analysis.layers import block_csi
from compresskit.checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint, save_checkpoint
from compresskit.data import (
    Augmentation,
    ImageDataset,
    Loader,
    balanced_subset,
    check_val_fraction,
    default_augmentation,
    load_dataset,
    stratified_split,
)
from compresskit.errors import CompresskitError
from compresskit.evaluation import classification_report
from compresskit.layerwise import LayerwiseConfig, StageResult, stage_row, stage_spec, train_layerwise
from compresskit.models import ConvNet, ModelSpec, build_model, count_parameters, make_spec
from compresskit.plots import plot_confusion_matrix, plot_stages, plot_training_curves
from compresskit.progress import Progress
from compresskit.train import (
    HISTORY_COLUMNS,
    FitResult,
    TrainConfig,
    check_tta,
    evaluate,
    fit_keeping_finished_epochs,
    predict,
    resolve_device,
)


@dataclass
class ModelOptions:
    """How to build the model: a name from `MODEL_NAMES` and its variations."""

    name: str = "vgg11_bn"
    width: float = 1.0
    head: str = "linear"
    dropout: float = 0.0
    global_pool: bool = False


@dataclass
class DataOptions:
    """Which data, and how it is split and augmented. `augment=None` picks the dataset default."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = True
    val_fraction: float = 0.1
    augment: str | None = None


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def check_output_dir(out: Path, *, overwrite: bool) -> None:
    """Refuse an `--out` that is a file, or a non-empty directory unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise CompresskitError(f"--out {out} exists and is not a directory.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CompresskitError(
            f"--out {out} already exists and is not empty; choose a new directory or pass --overwrite."
        )


@contextmanager
def staged_directory(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a fresh staging folder; on success it replaces `out`, on any error it is removed."""
    out = Path(out)
    check_output_dir(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


def make_loaders(
    data: ImageDataset,
    *,
    val_fraction: float,
    augment: Augmentation,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> tuple[Loader, Loader | None, Loader]:
    """Train (shuffled, augmented), validation (a stratified `val_fraction` of train, or None)
    and test loaders, all on `device`."""
    train_idx, val_idx = stratified_split(data.train.labels, val_fraction, seed)
    stats = {
        "mean": data.mean,
        "std": data.std,
        "device": device,
        "channels_last": device.type == "cuda",
    }
    eval_batch = max(batch_size, 256)
    train = Loader(
        data.train.subset(train_idx), batch_size, augment=augment, shuffle=True, seed=seed, **stats
    )
    val = Loader(data.train.subset(val_idx), eval_batch, **stats) if len(val_idx) else None
    test = Loader(data.test, eval_batch, **stats)
    return train, val, test


def _versions() -> dict:
    import torchvision

    return {
        "compresskit": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def _model_spec(options: ModelOptions, *, num_classes: int, in_channels: int) -> ModelSpec:
    return make_spec(
        options.name,
        num_classes,
        in_channels=in_channels,
        width=options.width,
        head=options.head,
        dropout=options.dropout,
        global_pool=options.global_pool,
    )


def train_run(
    out: str | Path,
    model_options: ModelOptions,
    data_options: DataOptions,
    cfg: TrainConfig,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    layerwise: LayerwiseConfig | None = None,
) -> dict:
    """Train a model from scratch into the run directory `out`; returns the summary dict.

    With `layerwise`, train greedily block by block (`compresskit.layerwise`); the run directory
    then also holds ``stages/NN/history.csv``, ``stages.csv`` and ``stages.png``, and the final
    model is the whole network with the last stage's mlp head.
    """
    progress = progress or Progress(enabled=False)
    out = Path(out)
    # Validate every flag before touching data or disk.
    check_val_fraction(data_options.val_fraction)
    cfg.validate(has_validation=data_options.val_fraction > 0)
    # checks --model, --width, --head, --dropout
    plan = _model_spec(model_options, num_classes=2, in_channels=1)
    augment = (
        Augmentation.parse(data_options.augment)
        if data_options.augment is not None
        else default_augmentation(data_options.dataset)
    )
    device = resolve_device(cfg.device)
    if layerwise is not None:
        layerwise.epochs_for(len(plan.conv_widths))
        if layerwise.aug_switch is not None:
            Augmentation.parse(layerwise.aug_switch[1])
    check_output_dir(out, overwrite=overwrite)
    data = load_dataset(data_options.dataset, data_options.data_dir, download=data_options.download)
    spec = _model_spec(model_options, num_classes=data.num_classes, in_channels=data.channels)
    if layerwise is not None:
        spec = stage_spec(spec, len(spec.conv_widths))
    train_loader, val_loader, test_loader = make_loaders(
        data,
        val_fraction=data_options.val_fraction,
        augment=augment,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=device,
    )
    model = build_model(spec, seed=cfg.seed).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    config = {
        "model": {
            **vars(model_options),
            "spec": spec.to_dict(),
            "parameters": count_parameters(model),
        },
        "data": {
            **vars(data_options),
            "augment": augment.describe(),
            "train_samples": train_loader.num_samples,
            "val_samples": val_loader.num_samples if val_loader else 0,
            "test_samples": test_loader.num_samples,
        },
        "train": cfg.to_dict(),
        "layerwise": None if layerwise is None else asdict(layerwise),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "versions": _versions(),
    }
    progress.log(
        f"{spec.name} (width {model_options.width:g}, {count_parameters(model):,} parameters) on "
        f"{data.name}: {train_loader.num_samples} train / {config['data']['val_samples']} val / "
        f"{test_loader.num_samples} test images, device {device}"
    )
    with staged_directory(out, overwrite=overwrite) as stage:
        write_json(stage / "config.json", config)
        if layerwise is None:
            result = fit_keeping_finished_epochs(model, train_loader, val_loader, cfg, progress=progress)
            history = pd.DataFrame(result.history, columns=list(HISTORY_COLUMNS))
        else:
            def stage_loaders(stage_number: int) -> tuple:
                switch = layerwise.aug_switch
                if switch is None or stage_number < switch[0]:
                    return train_loader, val_loader
                switched = make_loaders(data, val_fraction=data_options.val_fraction,
                                        augment=Augmentation.parse(switch[1]), batch_size=cfg.batch_size,
                                        seed=cfg.seed + stage_number, device=device)  # fmt: skip
                return switched[0], switched[1]

            model, result = _fit_layerwise(
                stage, spec, layerwise, cfg, stage_loaders, test_loader, data, data_options, device, progress
            )
            history = pd.DataFrame(result.history, columns=[*HISTORY_COLUMNS, "stage"])
        history.to_csv(stage / "history.csv", index=False)
        base_meta = {
            "dataset": data.name,
            "data_dir": data_options.data_dir,
            "classes": data.classes,
            "mean": list(data.mean),
            "std": list(data.std),
        }
        last_epoch = int(history["epoch"].iloc[-1]) if len(history) else 0
        _, last_test_acc = evaluate(model, test_loader, device)
        save_checkpoint(
            stage / "last.pt", spec, model,
            {**base_meta, "epoch": last_epoch, "test_acc": last_test_acc},
        )  # fmt: skip
        model.load_state_dict(result.best_state)
        test_loss, test_acc = evaluate(model, test_loader, device)
        save_checkpoint(
            stage / CHECKPOINT_NAME, spec, model,
            {**base_meta, "epoch": result.best_epoch, "val_acc": result.best_val_acc,
             "test_acc": test_acc},
        )  # fmt: skip
        if len(history):
            plot_training_curves(history, stage / "curves.png", title=f"{spec.name} on {data.name}")
        summary = {
            "run": str(out),
            "model": spec.name,
            "width": model_options.width,
            "parameters": count_parameters(model),
            "dataset": data.name,
            "epochs_run": len(history),
            "stop_reason": result.stop_reason,
            "best_epoch": result.best_epoch,
            "best_val_acc": result.best_val_acc,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "last_test_acc": last_test_acc,
            "train_seconds": result.seconds,
            "device": str(device),
        }
        write_json(stage / "summary.json", summary)
    return summary


def _fit_layerwise(
    stage_dir: Path,
    spec: ModelSpec,
    cfg: LayerwiseConfig,
    train_cfg: TrainConfig,
    stage_loaders,
    test_loader: Loader,
    data: ImageDataset,
    data_options: DataOptions,
    device: torch.device,
    progress: Progress,
) -> tuple[ConvNet, FitResult]:
    """Run every layer-wise stage, writing ``stages/NN/history.csv``, ``stages.csv`` and
    ``stages.png``; return the final model (last-epoch weights) and a `FitResult` that spans all
    stages (history with a ``stage`` column; best state and epoch from the last stage)."""
    rows: list[dict] = []
    histories: list[pd.DataFrame] = []
    csi_batches = None
    if cfg.analyze_stages:
        fitted, _ = stratified_split(data.train.labels, data_options.val_fraction, train_cfg.seed)
        pick = balanced_subset(data.train.labels, 1000, train_cfg.seed, among=fitted)
        test_pick = balanced_subset(data.test.labels, 1000, train_cfg.seed)
        subsets = {"train": data.train.subset(pick), "test": data.test.subset(test_pick)}
        csi_batches = {
            split: list(Loader(subset, 256, mean=data.mean, std=data.std, device=device))
            for split, subset in subsets.items()
        }

    def after_stage(done: StageResult) -> None:
        folder = stage_dir / "stages" / f"{done.stage:02d}"
        folder.mkdir(parents=True)
        table = pd.DataFrame(done.fit.history, columns=list(HISTORY_COLUMNS))
        table.to_csv(folder / "history.csv", index=False)
        histories.append(table)
        row = {**stage_row(done), "test_acc": evaluate(done.model, test_loader, device)[1]}
        if csi_batches is not None:
            for split, batches in csi_batches.items():
                row[f"csi_{split}"] = block_csi(done.model, batches)[0][-1]
        rows.append(row)
        progress.log(f"stage {done.stage}: best val {row['best_val_acc']}, test {row['test_acc']:.4f}")

    results = train_layerwise(spec, cfg, train_cfg, stage_loaders, device=device, progress=progress,
                              after_stage=after_stage)  # fmt: skip
    table = pd.DataFrame(rows)
    table.to_csv(stage_dir / "stages.csv", index=False)
    plot_stages(histories, table, stage_dir / "stages.png", title=f"layer-wise {spec.name}")
    history, offset = [], 0
    for r in results:
        history += [{**h, "epoch": h["epoch"] + offset, "stage": r.stage} for h in r.fit.history]
        offset += len(r.fit.history)
    last = results[-1]
    best_epoch = offset - len(last.fit.history) + last.fit.best_epoch
    combined = FitResult(history, last.fit.best_state, best_epoch, last.fit.best_val_acc,
                         last.fit.stop_reason, sum(r.fit.seconds for r in results))  # fmt: skip
    last.model.load_state_dict(last.last_state)
    return last.model, combined


def checkpoint_dataset(ckpt: Checkpoint, data_dir: str | None, *, download: bool) -> ImageDataset:
    """Load the dataset `ckpt` was trained on (from `data_dir`, else the folder recorded at training
    time) and check that it fits the model's classes and channels."""
    dataset = ckpt.meta.get("dataset")
    if not isinstance(dataset, str):
        raise CompresskitError(f"--checkpoint {ckpt.path} does not record which dataset it was trained on.")
    data = load_dataset(dataset, data_dir or ckpt.meta.get("data_dir"), download=download)
    if data.num_classes != ckpt.spec.num_classes or data.channels != ckpt.spec.in_channels:
        raise CompresskitError(
            f"--checkpoint {ckpt.path} expects {ckpt.spec.num_classes} classes and "
            f"{ckpt.spec.in_channels} channels, but {dataset} has {data.num_classes} and {data.channels}."
        )
    return data


def evaluate_run(
    checkpoint: str | Path,
    *,
    data_dir: str | None = None,
    download: bool = True,
    batch_size: int = 256,
    device: str = "auto",
    tta: str = "none",
) -> dict:
    """Test accuracy, per-class precision/recall/F1 and a confusion matrix of a checkpoint.

    `tta` (none, flip, flip-translate) averages test-time views (`train.tta_logits`); every reported
    number then uses those predictions, and ``test_acc_no_tta`` keeps the plain accuracy.

    Top-5 accuracy is reported for more than 10 classes. Writes ``evaluation.json``,
    ``per_class.csv``, ``most_confused.csv``, ``confusion.csv`` and ``confusion.png`` into the
    checkpoint's directory (the run directory) and returns the summary dict.
    """
    if batch_size <= 0:
        raise CompresskitError(f"--batch-size {batch_size} must be a positive integer.")
    check_tta(tta)
    ckpt = load_checkpoint(checkpoint)
    run_dir = ckpt.path.parent
    torch_device = resolve_device(device)
    data = checkpoint_dataset(ckpt, data_dir, download=download)
    dataset = data.name
    model = ckpt.build(torch_device)
    loader = Loader(data.test, batch_size, mean=data.mean, std=data.std, device=torch_device)
    logits, labels = predict(model, loader, torch_device, tta=tta)
    plain_logits = predict(model, loader, torch_device)[0] if tta != "none" else logits
    report = classification_report(logits, labels, data.classes)
    per_class = report.per_class
    matrix = report.confusion
    summary = {
        "checkpoint": str(ckpt.path),
        "dataset": dataset,
        "test_samples": report.num_samples,
        "test_acc": report.accuracy,
        "test_top5_acc": report.top5,
        "tta": tta,
        "test_acc_no_tta": float((plain_logits.argmax(1) == labels).double().mean()),
        "test_loss": float(torch.nn.functional.cross_entropy(logits, labels)),
        "macro_precision": report.macro_precision,
        "macro_recall": report.macro_recall,
        "macro_f1": report.macro_f1,
    }
    report.most_confused(20).to_csv(run_dir / "most_confused.csv", index=False)
    per_class.to_csv(run_dir / "per_class.csv", index=False)
    pd.DataFrame(matrix, index=data.classes, columns=data.classes).to_csv(run_dir / "confusion.csv")
    plot_confusion_matrix(
        matrix, data.classes, run_dir / "confusion.png", title=f"{ckpt.spec.name} on {dataset}"
    )
    write_json(run_dir / "evaluation.json", summary)
    return {**summary, "per_class": per_class}


def analyze_run(
    checkpoint: str | Path,
    *,
    samples: int = 1000,
    layers: str = "blocks",
    metrics: str = "csi,si,probe",
    filters: bool = False,
    data_dir: str | None = None,
    download: bool = True,
    batch_size: int = 256,
    device: str = "auto",
    seed: int = 0,
    progress: Progress | None = None,
) -> dict:
    """Per-layer CSI, SI and linear-probe accuracy of a checkpoint, on class-balanced subsets of
    `samples` training images (from the part of train the model was fitted on) and `samples` test
    images.

    Writes ``analysis/layers.csv`` and ``analysis/separation.png`` (and ``analysis/filters.png``
    with `filters`) into the run directory; the folder is replaced as a whole, never half-written.
    Returns ``{"table": DataFrame, "files": [...], ...}``.
    """
    from compresskit.analysis import layer_table, parse_metrics, select_layers
    from compresskit.plots import plot_filters, plot_separation

    progress = progress or Progress(enabled=False)
    if batch_size <= 0:
        raise CompresskitError(f"--batch-size {batch_size} must be a positive integer.")
    if samples <= 0:
        raise CompresskitError(f"--samples {samples} must be a positive integer.")
    metric_names = parse_metrics(metrics)
    if not metric_names and not filters:
        raise CompresskitError("--metrics none leaves nothing to do; ask for a metric or --filters.")
    ckpt = load_checkpoint(checkpoint)
    torch_device = resolve_device(device)
    model = ckpt.build(torch_device)
    try:
        chosen = select_layers(model, layers)
    except ValueError as exc:
        raise CompresskitError(str(exc)) from None
    data = checkpoint_dataset(ckpt, data_dir, download=download)
    run_dir = ckpt.path.parent
    result: dict = {"checkpoint": str(ckpt.path), "dataset": data.name, "files": []}
    with staged_directory(run_dir / "analysis", overwrite=True) as stage:
        if (run_dir / "analysis").is_dir():  # keep what this call does not redo
            for old in (run_dir / "analysis").iterdir():
                if old.is_file():
                    shutil.copy2(old, stage / old.name)
        if metric_names:
            fitted = _fitted_train_indices(run_dir, data)
            train_pick = balanced_subset(data.train.labels, samples, seed, among=fitted)
            test_pick = balanced_subset(data.test.labels, samples, seed)
            mean = tuple(ckpt.meta.get("mean", data.mean))
            std = tuple(ckpt.meta.get("std", data.std))
            loaders = [
                Loader(split, batch_size, mean=mean, std=std, device=torch_device)
                for split in (data.train.subset(train_pick), data.test.subset(test_pick))
            ]
            progress.log(
                f"analyzing {len(chosen)} layers of {ckpt.spec.name} on {len(train_pick)} train and "
                f"{len(test_pick)} test images of {data.name} ({', '.join(metric_names)})"
            )
            table = layer_table(model, *loaders, chosen, metric_names, progress=progress)
            table.to_csv(stage / "layers.csv", index=False)
            plot_separation(table, stage / "separation.png", title=f"{ckpt.spec.name} on {data.name}")
            result.update(table=table, train_samples=len(train_pick), test_samples=len(test_pick))
        if filters:
            first_conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
            if first_conv is None:
                raise CompresskitError(f"--filters: {ckpt.path} has no convolution layer.")
            plot_filters(
                first_conv.weight.detach().cpu().numpy(),
                stage / "filters.png",
                title=f"first-layer filters of {ckpt.spec.name}",
            )
        result["files"] = [str(run_dir / "analysis" / p.name) for p in sorted(stage.iterdir())]
    return result


def training_config(run_dir: Path) -> dict:
    """The ``config.json`` of the training run behind `run_dir`: its own for a trained run, the
    ``original_run`` it records for a compressed one; {} when there is none to read."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict):
        return {}
    original = config.get("original_run")
    return original if isinstance(original, dict) else config


def _fitted_train_indices(run_dir: Path, data: ImageDataset) -> torch.Tensor:
    """Indices of the training images the run (or, for a compressed run, its training run) was
    fitted on: the validation split taken out again, or the whole train split when there is no
    config to tell."""
    everything = torch.arange(len(data.train))
    config = training_config(run_dir)
    try:
        fraction = float(config["data"]["val_fraction"])
        seed = int(config["train"]["seed"])
    except (ValueError, KeyError, TypeError):
        return everything
    if fraction <= 0:
        return everything
    keep, _ = stratified_split(data.train.labels, fraction, seed)
    return keep
