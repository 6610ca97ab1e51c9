"""The training job: `train_run` makes a live run directory and trains into it; `resume_train_run`
continues a stopped one from its last finished epoch.

The run directory exists from the moment training starts (after every flag and the data are
checked). After every epoch it holds ``last.pt`` (model and `TrainingState`), ``history.csv`` and
``curves.png``; ``run.json`` says whether it is running, finished, interrupted or failed. When
training ends it gains ``checkpoint.pt`` (best validation accuracy, with its test accuracy) and
``summary.json``. With ``--ema`` the weights a user gets are the moving average (`compresskit.ema`):
``checkpoint.pt``, the finished ``last.pt`` and every evaluation; an unfinished ``last.pt`` holds
the raw weights it resumes from, the average in its training state. A layer-wise run also keeps
``stages/NN/`` (history and best model of each finished stage), ``stages.csv`` and ``stages.png``
(`compresskit.jobs.layerwise`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from compresskit import distributed
from compresskit.architecture import Architecture
from compresskit.checkpoint import Checkpoint, load_checkpoint
from compresskit.data import (
    Augmentation,
    ImageDataset,
    check_dataset,
    check_image_size,
    check_labels,
    check_val_fraction,
    default_augmentation,
    load_dataset,
)
from compresskit.errors import CompresskitError
from compresskit.jobs.anymodel import config_architecture, input_shape
from compresskit.jobs.common import (
    LAST_NAME,
    EpochRecorder,
    data_loaders,
    evaluate_last_and_best,
    main_first,
    recording_state,
    run_dataset,
    split_record,
    versions,
    write_final_checkpoints,
)
from compresskit.jobs.layerwise import check_layerwise, fit_layerwise
from compresskit.jobs.train_any import (
    build_torchvision,
    check_model_options,
    is_torchvision,
    torchvision_traits,
)
from compresskit.layerwise import LayerwiseConfig, stage_spec
from compresskit.live import TENSORBOARD_DIR, TensorBoardLog
from compresskit.models import ModelSpec, build_model, check_init, count_parameters, make_spec
from compresskit.progress import Progress
from compresskit.rundir import (
    DataRecord,
    ModelRecord,
    RunConfig,
    check_output,
    check_resumable,
    create_output,
    read_config,
    set_state,
    write_config,
    write_json,
)
from compresskit.train import (
    Precision,
    TrainConfig,
    TrainingState,
    fit,
    resolve_device,
    resolve_precision,
)
from compresskit.train.config import default_lr, default_optimizer


@dataclass
class ModelOptions:
    """How to build the model: a name from `MODEL_NAMES` and its variations, or
    ``torchvision:NAME`` with its keyword arguments and small-image stem (`jobs.train_any`)."""

    name: str = "vgg11_bn"
    width: float = 1.0
    head: str = "linear"
    dropout: float = 0.0
    global_pool: bool = False
    init: str = "kaiming"  # or "torch": PyTorch's default initialisation
    kwargs: dict | None = None  # torchvision:NAME only: --model-kwargs
    cifar_stem: bool = False  # torchvision:NAME only: --cifar-stem


@dataclass
class DataOptions:
    """Which data, and how it is split and augmented. `augment=None` picks the dataset default."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = True
    val_fraction: float = 0.1
    augment: str | None = None
    labels: str = "fine"  # CIFAR-100 only: "coarse" for the 20 superclasses
    image_size: int = 32  # the side every image is resized to (pixels)


def _model_spec(options: ModelOptions, *, num_classes: int, in_channels: int, input_size: int) -> ModelSpec:
    return make_spec(
        options.name,
        num_classes,
        in_channels=in_channels,
        width=options.width,
        head=options.head,
        dropout=options.dropout,
        global_pool=options.global_pool,
        input_size=input_size,
    )


def default_recipe(options: ModelOptions, optimizer: str | None, lr: float | None) -> tuple[str, float]:
    """The optimizer and peak learning rate of a new run, None where not given: SGD when only the
    rate is given (as before this default existed); otherwise `default_optimizer` and `default_lr`
    of `options`' model (batch norm or not, conv layers)."""
    if lr is not None:
        return optimizer or "sgd", lr
    if is_torchvision(options):
        batch_norm, conv_layers = torchvision_traits(options)
    else:
        spec = make_spec(options.name)
        batch_norm, conv_layers = spec.batch_norm, len(spec.conv_widths)
    optimizer = optimizer or default_optimizer(batch_norm)
    return optimizer, default_lr(optimizer, conv_layers)


def train_run(
    out: str | Path,
    model_options: ModelOptions,
    data_options: DataOptions,
    cfg: TrainConfig,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    layerwise: LayerwiseConfig | None = None,
    tensorboard: bool = False,
) -> dict:
    """Train a model from scratch into the new run directory `out`; returns the summary dict.
    `tensorboard` also writes TensorBoard event files into ``out/tensorboard/``.

    With `layerwise`, train greedily block by block (`compresskit.layerwise`); the final model is
    the whole network with the last stage's mlp head.
    """
    progress = progress or Progress(enabled=False)
    out = Path(out)
    # Validate every flag before touching data or disk.
    check_val_fraction(data_options.val_fraction)
    check_dataset(data_options.dataset)
    check_labels(data_options.dataset, data_options.labels)
    check_image_size(data_options.image_size)
    if data_options.dataset.startswith("folder:") and data_options.data_dir is not None:
        raise CompresskitError("--data-dir is for named datasets; --dataset folder:PATH names its folder.")
    # a folder's own val/ split is known only once it is read: checked again below
    cfg.validate(has_validation=data_options.val_fraction > 0 or data_options.dataset.startswith("folder:"))
    check_model_options(model_options, layerwise=layerwise is not None)
    if not is_torchvision(model_options):  # checks the flags (and that the pools fit --image-size)
        plan = _model_spec(model_options, num_classes=2, in_channels=1, input_size=data_options.image_size)
    augment = (
        Augmentation.parse(data_options.augment)
        if data_options.augment is not None
        else default_augmentation(data_options.dataset)
    )
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    check_init(model_options.init)
    _check_distributed(cfg, device, layerwise=layerwise is not None)
    if layerwise is not None:
        check_layerwise(layerwise, plan, cfg, init=model_options.init)
    with distributed.session(device):
        check_output(out, "train", overwrite=overwrite)
        distributed.barrier()  # every rank has looked at --out before rank 0 creates it
        data = main_first(
            lambda: load_dataset(
                data_options.dataset,
                data_options.data_dir,
                download=data_options.download,
                labels=data_options.labels,
                image_size=data_options.image_size,
            )
        )
        cfg.validate(has_validation=data_options.val_fraction > 0 or data.val is not None)
        return _start_training(out, model_options, data_options, cfg, data, augment, device, precision,
                               overwrite=overwrite, progress=progress, layerwise=layerwise,
                               tensorboard=tensorboard)  # fmt: skip


def _check_distributed(cfg: TrainConfig, device: torch.device, *, layerwise: bool, where: str = "") -> None:
    """Refuse what torchrun's processes cannot do (`where` names a resumed run's recorded flags)."""
    distributed.check_batch_size(cfg.batch_size, f"{where}--batch-size")
    if not where or distributed.world_size() > 1:  # a resumed --sync-bn run may go on in one process
        distributed.check_sync_bn(cfg.sync_bn, device)
    if layerwise and distributed.world_size() > 1:
        raise CompresskitError(f"{where}--layerwise trains in one process; run it without torchrun.")


def _start_training(
    out: Path,
    model_options: ModelOptions,
    data_options: DataOptions,
    cfg: TrainConfig,
    data: ImageDataset,
    augment: Augmentation,
    device: torch.device,
    precision: Precision,
    *,
    overwrite: bool,
    progress: Progress,
    layerwise: LayerwiseConfig | None,
    tensorboard: bool,
) -> dict:
    """`train_run` after the checks, on every rank: build the model and config, rank 0 makes the
    run directory, every rank trains."""
    model: torch.nn.Module
    if is_torchvision(model_options):
        _, model, model_record = build_torchvision(
            model_options, num_classes=data.num_classes, in_channels=data.channels,
            image_size=data.image_size, seed=cfg.seed,
        )  # fmt: skip
        name = model_options.name
    else:
        spec = _model_spec(
            model_options, num_classes=data.num_classes, in_channels=data.channels, input_size=data.image_size
        )
        if layerwise is not None:
            spec = stage_spec(spec, len(spec.conv_widths))
        model = build_model(spec, seed=cfg.seed, init=model_options.init)
        options = {k: v for k, v in asdict(model_options).items() if k not in ("kwargs", "cifar_stem")}
        model_record = ModelRecord(**options, spec=spec.to_dict(), parameters=count_parameters(model))
        name = spec.name
    split, val_folder = split_record(data, data_options.val_fraction, cfg.seed)
    config = RunConfig(
        command="train",
        model=model_record,
        data=DataRecord(
            dataset=data.name,
            data_dir=data_options.data_dir,
            augment=augment.describe(),
            split=split,
            classes=list(data.classes),
            mean=list(data.mean),
            std=list(data.std),
            test_count=len(data.test),
            labels=data_options.labels,
            image_size=data.image_size,
            val_folder=val_folder,
        ),
        train=cfg.to_dict(),
        layerwise=None if layerwise is None else asdict(layerwise),
        lineage=[f"train {name} ({out.name})"],
        device=str(device),
        precision=precision.describe(),
        threads=torch.get_num_threads(),
        versions=versions(),
        world_size=distributed.world_size(),
    )
    if tensorboard:
        TensorBoardLog.check_available()
    config.tensorboard = tensorboard
    if distributed.is_main():
        create_output(out, "train", overwrite=overwrite)
        write_config(out, config)
    with recording_state(out):
        return _train(out, config, data, model, device, progress, resume=None)


def resume_train_run(
    run: str | Path, *, data_dir: str | None = None, download: bool = True, progress: Progress | None = None
) -> dict:
    """Continue the stopped training run `run` from the last epoch its ``last.pt`` holds, with the
    run's own configuration; the result is what the run would have given had it not stopped."""
    progress = progress or Progress(enabled=False)
    run = Path(run)
    check_resumable(run, "train")
    config = read_config(run)
    cfg = TrainConfig(**config.train)
    device = resolve_device(cfg.device)
    _check_distributed(cfg, device, layerwise=config.layerwise is not None, where=f"--resume {run}: its ")
    with distributed.session(device):
        # every rank reads rank 0's last.pt (a filesystem all ranks see)
        if not (run / LAST_NAME).is_file():
            raise CompresskitError(
                f"--resume {run} has no {LAST_NAME}: it stopped before its first epoch "
                "finished; start it again instead."
            )
        last = load_checkpoint(run / LAST_NAME)
        if last.training is None:
            raise CompresskitError(f"--resume {run}/{LAST_NAME} holds no training state to continue from.")
        data = run_dataset(config, data_dir, download=download, where=f"--resume {run}")
        model = config_architecture(config).build()  # ConvNet(spec), or the recorded factory
        distributed.barrier()  # every rank has checked run.json before rank 0 marks it running
        if distributed.is_main():
            set_state(run, "running")
        progress.log(f"resuming {run} after epoch {last.meta.get('epoch')}")
        with recording_state(run):
            return _train(run, config, data, model, device, progress, resume=last)


def _train(
    out: Path,
    config: RunConfig,
    data: ImageDataset,
    model: torch.nn.Module,
    device: torch.device,
    progress: Progress,
    resume: Checkpoint | None,
) -> dict:
    cfg = TrainConfig(**config.train)
    arch = config_architecture(config)
    # what the checkpoints are written from: a ConvNet's spec (format 1), else the factory (format 2)
    saved: ModelSpec | Architecture = arch.spec if arch.spec is not None else arch
    name = arch.spec.name if arch.spec is not None else config.model.name
    train_loader, val_loader, test_loader = data_loaders(
        data, config.data, batch_size=cfg.batch_size, seed=cfg.seed, device=device, where=str(out)
    )
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    meta = {
        "dataset": data.name,
        "data_dir": config.data.data_dir,
        "classes": config.data.classes,
        "mean": config.data.mean,
        "std": config.data.std,
        "lineage": config.lineage,
        **({} if arch.spec is not None else {"input_shape": list(input_shape(config))}),
    }
    val_count = val_loader.num_samples if val_loader is not None else 0
    progress.log(
        f"{name} (width {config.model.width:g}, {count_parameters(model):,} parameters) on "
        f"{data.name}: {train_loader.num_samples} train / {val_count} val / "
        f"{test_loader.num_samples} test images, device {device}, {config.precision}"
    )
    title = f"{name} on {data.name}"
    if config.layerwise is None:
        state = None
        if resume is not None:
            model.load_state_dict(resume.state_dict)
            state = TrainingState.from_dict(resume.training)
        main = distributed.is_main()
        recorder = EpochRecorder(out, saved, model, meta, title) if main else None
        board = TensorBoardLog(out / TENSORBOARD_DIR) if config.tensorboard and main else None

        def on_epoch(state: TrainingState) -> None:
            if recorder is not None:
                recorder(state)
            if board is not None:
                board.epoch(state)

        result = fit(model, train_loader, val_loader, cfg, progress=progress, resume=state, on_epoch=on_epoch,
                     on_step=board.step if board is not None else None,
                     test_loader=test_loader if cfg.track_test else None)  # fmt: skip
    else:
        assert arch.spec is not None  # layer-wise runs are ConvNets
        model, result = fit_layerwise(out, arch.spec, config, cfg, data, device, meta, title,
                                      (train_loader, val_loader, test_loader), progress, resume)  # fmt: skip
    history = result.history
    last_epoch = int(history[-1]["epoch"]) if history else 0
    # quoted test accuracies are fp32 whatever training used, so they reproduce on any machine
    test_precision = resolve_precision("fp32", device)
    tested = {"test_precision": test_precision.describe()}
    if result.averaged is not None:  # with --ema the model a user gets is the average
        model.load_state_dict(result.averaged)
    # every rank: a collective
    tests = evaluate_last_and_best(model, test_loader, device, test_precision, result.best_state)
    test_acc, last_test_acc = tests.best_acc, tests.last_acc
    if distributed.is_main():
        best = {**meta, "epoch": result.best_epoch, "val_acc": result.best_val_acc, "test_acc": test_acc}
        write_final_checkpoints(
            out, saved, model, tests.last_state, history, best_meta={**best, **tested},
            last_meta={**meta, "epoch": last_epoch, "test_acc": last_test_acc, **tested}, title=title,
        )  # fmt: skip
    summary = {
        "run": str(out),
        "model": name,
        "width": config.model.width,
        "parameters": count_parameters(model),
        "dataset": data.name,
        "epochs_run": len(history),
        "stop_reason": result.stop_reason,
        "best_epoch": result.best_epoch,
        "best_val_acc": result.best_val_acc,
        "test_acc": test_acc,
        "test_loss": tests.best_loss,
        "last_test_acc": last_test_acc,
        **tested,
        "train_seconds": result.seconds,
        "ema": cfg.ema,
        "device": str(device),
        "world_size": distributed.world_size(),
    }
    if distributed.is_main():
        write_json(out / "summary.json", summary)
    return summary
