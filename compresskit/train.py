"""The one training loop: optimizer, LR schedule, label smoothing, mixed precision, early stop,
best-by-validation selection, per-epoch history and an exact resume from any finished epoch
(`TrainingState`). Fine-tuning and layer-wise training reuse it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compresskit import distributed
from compresskit.ema import EMA
from compresskit.errors import CompresskitError
from compresskit.progress import Progress

if TYPE_CHECKING:
    from compresskit.compress.distill import Distillation

OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("auto", "fp32", "bf16")
PATIENCE_METRICS = ("val_acc", "val_loss")
SCHEDULES = ("step", "cosine", "onecycle", "none")
HISTORY_COLUMNS = (
    "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "seconds",
)  # fmt: skip
"""A history row's columns; test_loss/test_acc are NaN unless `fit` was given a ``test_loader``."""


@dataclass
class TrainConfig:
    """Hyperparameters of one training run. Accuracies are fractions in [0, 1]."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    step_size: int = 0  # epochs per decay for "step"; 0 means epochs // 3
    gamma: float = 0.1  # decay factor for "step"
    label_smoothing: float = 0.0
    target_accuracy: float | None = None
    patience: int | None = None
    patience_metric: str = "val_acc"  # what --patience watches: val_acc (higher is better) or val_loss
    min_delta: float = 0.0  # the change in patience_metric that counts as an improvement
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    precision: str = "auto"  # auto | fp32 | bf16: see resolve_precision
    sync_bn: bool = False  # under torch.distributed: batch-norm statistics over the global batch
    track_test: bool = False  # the run evaluates the test split after every epoch, for the curves only
    ema: float | None = None  # decay of the weights' moving average (compresskit.ema); None: off

    def validate(self, *, has_validation: bool = True) -> None:
        """Raise `CompresskitError` naming the first flag whose value is not allowed.

        `has_validation`: whether a validation split exists; early stopping needs one.
        """
        if self.epochs <= 0:
            raise CompresskitError(f"--epochs {self.epochs} must be a positive integer.")
        if self.batch_size <= 0:
            raise CompresskitError(f"--batch-size {self.batch_size} must be a positive integer.")
        if not self.lr > 0:
            raise CompresskitError(f"--lr {self.lr} must be a positive number.")
        if self.optimizer not in OPTIMIZERS:
            raise CompresskitError(
                f"--optimizer '{self.optimizer}' is not known; choose one of: {', '.join(OPTIMIZERS)}."
            )
        if self.schedule not in SCHEDULES:
            raise CompresskitError(
                f"--schedule '{self.schedule}' is not known; choose one of: {', '.join(SCHEDULES)}."
            )
        if not 0 <= self.momentum < 1:
            raise CompresskitError(f"--momentum {self.momentum} is outside [0, 1).")
        if self.weight_decay < 0:
            raise CompresskitError(f"--weight-decay {self.weight_decay} must not be negative.")
        if self.step_size < 0:
            raise CompresskitError(f"--step-size {self.step_size} must not be negative.")
        if not 0 < self.gamma <= 1:
            raise CompresskitError(f"--gamma {self.gamma} is outside (0, 1].")
        if not 0 <= self.label_smoothing < 1:
            raise CompresskitError(f"--label-smoothing {self.label_smoothing} is outside [0, 1).")
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise CompresskitError(
                f"--target-accuracy {self.target_accuracy} must be a fraction in (0, 1], e.g. 0.9."
            )
        if self.patience is not None and self.patience <= 0:
            raise CompresskitError(f"--patience {self.patience} must be a positive integer.")
        if self.patience_metric not in PATIENCE_METRICS:
            raise CompresskitError(
                f"--patience-metric '{self.patience_metric}' is not known; choose one of: "
                f"{', '.join(PATIENCE_METRICS)}."
            )
        if not self.min_delta >= 0:
            raise CompresskitError(f"--min-delta {self.min_delta} must be 0 or more.")
        if not has_validation and (self.target_accuracy is not None or self.patience is not None):
            raise CompresskitError(
                "--target-accuracy and --patience need a validation split (--val-fraction > 0)."
            )
        if self.precision not in PRECISIONS:
            raise CompresskitError(
                f"--precision '{self.precision}' is not known; choose one of: {', '.join(PRECISIONS)}."
            )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise CompresskitError(f"--device '{self.device}' is not known; choose auto, cpu or cuda.")
        if self.ema is not None and not 0 < self.ema < 1:
            raise CompresskitError(f"--ema {self.ema} is outside (0, 1); give a decay such as 0.999.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitResult:
    """What `fit` returns: the per-epoch history and the best weights (on CPU)."""

    history: list[dict]
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_acc: float | None
    stop_reason: str  # "epochs", "target" or "patience"
    seconds: float = 0.0
    averaged: dict[str, torch.Tensor] | None = None  # with cfg.ema: the last epoch's average (CPU)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CompresskitError(f"--device {name} was asked for but no CUDA device is available.")
    return torch.device(name)


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (with Nesterov momentum unless momentum is 0) or AdamW. Weight decay is not applied to
    biases and normalisation parameters (1-D tensors)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    nesterov = cfg.nesterov and cfg.momentum > 0
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov)


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based).

    step: times `gamma` every `step_size` epochs. cosine: half-cosine from 1 to 0 over the run.
    onecycle: linear warm-up from 0.1 to 1 over the first 25% of steps, then linear decay to 0.
    """
    total = cfg.epochs * steps_per_epoch
    t = min(step / max(total, 1), 1.0)
    if cfg.schedule == "none":
        return 1.0
    if cfg.schedule == "step":
        size = cfg.step_size or max(cfg.epochs // 3, 1)
        return cfg.gamma ** ((step // steps_per_epoch) // size)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    warm = 0.25
    if t < warm:
        return 0.1 + 0.9 * t / warm
    return max(0.0, (1 - t) / (1 - warm))


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's own check: avx512_bf16 or AMX). Without
    it, bf16 on the CPU is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Precision:
    """How a model computes: ``bf16`` autocast or plain ``fp32``, and whether activations and
    weights are stored channels_last (NHWC)."""

    name: str
    channels_last: bool

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.name == "bf16")

    def describe(self) -> str:
        return f"{self.name}{' + channels_last' if self.channels_last else ''}"


def resolve_precision(name: str, device: torch.device) -> Precision:
    """What ``--precision`` `name` (auto, fp32, bf16) means on `device`. Always channels_last: it
    measured faster than NCHW for training on CPU too (1.29× vgg11_bn w0.25, 1.12× vgg16_bn w1.0
    on an AVX2 CPU; experiments/bench_precision.py). ``auto`` is bf16 autocast on CUDA and on a CPU
    that computes bf16 natively (`cpu_supports_bf16`), fp32 elsewhere: emulated bf16 measured
    8–20× slower than fp32. Asking for bf16 on such a CPU is refused."""
    if name not in PRECISIONS:
        raise CompresskitError(f"--precision '{name}' is not known; choose one of: {', '.join(PRECISIONS)}.")
    native = device.type == "cuda" or cpu_supports_bf16()
    if name == "bf16" and not native:
        raise CompresskitError(
            "--precision bf16: this CPU has no native bf16 (avx512_bf16 or AMX), so it would be emulated "
            "and far slower than fp32; use --precision auto or fp32."
        )
    return Precision("bf16" if name == "bf16" or (name == "auto" and native) else "fp32", channels_last=True)


def _default_precision(device: torch.device) -> Precision:
    return resolve_precision("auto", device)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | None = None,
    *,
    precision: Precision | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy (fraction) of `model` over `loader`.

    A sharded loader (``loader.world_size > 1``, one per process) gives each rank its share; the
    loss sums, correct counts and image counts are summed over the ranks, so every rank returns
    the numbers of the whole split (a collective: every rank must call this)."""
    logits, labels = predict(model, loader, device, precision=precision)
    if getattr(loader, "world_size", 1) > 1:
        device = device or next(model.parameters()).device
        totals = torch.tensor(
            [
                F.cross_entropy(logits, labels, reduction="sum").item() if len(labels) else 0.0,
                (logits.argmax(1) == labels).sum().item() if len(labels) else 0.0,
                float(len(labels)),
            ],
            dtype=torch.float64,
            device=device,
        )
        loss_sum, correct, count = distributed.all_reduce_sum(totals).tolist()
        return (loss_sum / count, correct / count) if count else (float("nan"), float("nan"))
    loss = F.cross_entropy(logits, labels).item() if len(labels) else float("nan")
    acc = (logits.argmax(1) == labels).double().mean().item() if len(labels) else float("nan")
    return loss, acc


TTA_MODES = ("none", "flip", "flip-translate")


def check_tta(mode: str) -> None:
    if mode not in TTA_MODES:
        raise CompresskitError(f"--tta '{mode}' is not known; choose one of: {', '.join(TTA_MODES)}.")


def tta_logits(model: nn.Module, x: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """Logits B×classes of `model` on images x B×C×H×W, averaged over test-time views.

    ``none``: x alone. ``flip``: the mean over x and its left-right mirror. ``flip-translate``:
    1/2 × flip(x) + 1/4 × flip(x moved one pixel up-left) + 1/4 × flip(x moved one pixel
    down-right), the moves filling the uncovered edge by reflection.
    """
    check_tta(mode)
    if mode == "none":
        return model(x)

    def mirrored(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(v) + model(v.flip(3)))

    if mode == "flip":
        return mirrored(x)
    h, w = x.shape[2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[:, :, 2:, 2:], padded[:, :, :h, :w]
    return 0.5 * mirrored(x) + 0.25 * mirrored(up_left) + 0.25 * mirrored(down_right)


def as_input(x: torch.Tensor, precision: Precision) -> torch.Tensor:
    """A batch in the memory format `precision` computes in."""
    return x.contiguous(memory_format=torch.channels_last) if precision.channels_last and x.ndim == 4 else x


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | None = None,
    *,
    tta: str = "none",
    precision: Precision | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits N×classes and labels N (both on CPU) for every batch of `loader`; `tta` picks
    the test-time views averaged (see `tta_logits`). `precision` defaults to what ``auto`` means
    on the model's device."""
    check_tta(tta)
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    precision = precision or _default_precision(device)
    all_logits, all_labels = [], []
    with precision.autocast(device):
        for x, y in loader:
            all_logits.append(tta_logits(model, as_input(x, precision), tta).float().cpu())
            all_labels.append(y.cpu())
    model.train(was_training)
    if not all_logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_labels)


@dataclass
class TrainingState:
    """Everything `fit` needs to continue after its last finished epoch, exactly as if it had not
    stopped: the epochs done and their history rows, optimizer and LR-schedule state, the best
    weights so far with their epoch and score, the early-stop counter, the seconds spent, and every
    random state (torch's global generator, numpy's, and the training loader's). All values are
    tensors or plain Python values, so `torch.load(weights_only=True)` reads them back."""

    epoch: int
    history: list[dict]
    optimizer: dict
    schedule: dict
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_score: float
    since_best: int
    seconds: float
    rng: dict
    monitor_best: float | None = None  # best patience_metric so far (None: none yet)
    ema: dict | None = None  # `EMA.to_dict()` when cfg.ema is set (None: no average, or saved before)

    def to_dict(self) -> dict:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict) -> TrainingState:
        """The state `to_dict` gave; a state saved before `monitor_best` existed watched val_acc,
        so its best score is that."""
        values = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        values.setdefault("monitor_best", data["best_score"] if data["best_score"] >= 0 else None)
        return cls(**values)


def capture_rng(loader) -> dict:
    """The random states a resumed run must continue from: torch's global generator (dropout),
    numpy's global generator, and `loader.generator` (order and augmentation) when it has one."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }  # fmt: skip
    if getattr(loader, "generator", None) is not None:
        state["loader"] = loader.generator.get_state()
    return state


def restore_rng(state: dict, loader) -> None:
    """Undo `capture_rng`: put every generator back where it was."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached"]))  # fmt: skip
    if "loader" in state and getattr(loader, "generator", None) is not None:
        loader.generator.set_state(state["loader"])


def fit(
    model: nn.Module,
    train_loader,
    val_loader,
    cfg: TrainConfig,
    *,
    progress: Progress | None = None,
    parameters: Iterable[nn.Parameter] | None = None,
    resume: TrainingState | None = None,
    on_epoch: Callable[[TrainingState], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    test_loader=None,
    distill: Distillation | None = None,
) -> FitResult:
    """Train `model` (already on its device) for up to `cfg.epochs` epochs.

    `val_loader` may be None: then nothing is validated and the last epoch counts as best.
    `test_loader`, when given, is evaluated after every epoch into the history's ``test_loss`` /
    ``test_acc`` (for learning curves only: selection and early stopping never look at it; its
    time is not in the epoch's ``seconds``).
    `parameters` restricts what the optimizer updates (default: all that require grad).
    `on_epoch` sees the `TrainingState` after every finished epoch (a run directory saves it);
    `resume` continues from such a state, with `model` already holding its weights, and gives the
    same epochs, bit for bit on CPU, as a run that never stopped. An interrupt (Ctrl-C) propagates:
    the last state handed to `on_epoch` is the one to resume from. `on_step(step, loss)` sees the
    training loss (nats) after every optimizer step, numbered from 1 across epochs.

    `cfg.ema`: an exponential moving average of the weights (`compresskit.ema.EMA`), updated after
    every optimizer step; validation, test evaluation, best-epoch selection and the best weights
    use the average, training goes on with the raw weights (`FitResult.averaged`: the last
    epoch's average). `distill`: the training loss is `Distillation.loss` against its teacher
    instead of plain cross-entropy (label smoothing still applies to the hard term).

    Under `torch.distributed` (`distributed.world_size()` > 1; every rank calls `fit` with its own
    sharded loaders, see `data.Loader`) the model trains wrapped in DistributedDataParallel
    (`cfg.sync_bn`: with SyncBatchNorm, turned back into plain batch norm on return), each rank's
    loss weighted by its share of the global batch so the averaged gradient is the global batch's;
    the epoch's training loss and accuracy are summed over ranks, rank 0's batch-norm statistics
    are copied to every rank before each validation, and `on_epoch` sees the same state on every
    rank (with every rank's torch random state, so a resumed run continues each rank's dropout).
    """
    cfg.validate(has_validation=val_loader is not None)
    progress = progress or Progress(enabled=False)
    device = next(model.parameters()).device
    precision = resolve_precision(cfg.precision, device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    if distill is not None:
        distill.prepare(channels_last=precision.channels_last)
    world, rank = distributed.world_size(), distributed.rank()
    torch.manual_seed(cfg.seed + rank)  # dropout masks, independent per rank
    optimizer = make_optimizer(parameters if parameters is not None else model.parameters(), cfg)
    steps_per_epoch = max(len(train_loader), 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch)
    )
    train_module: nn.Module = model
    global_sizes: list[int] | None = None
    if world > 1:
        if cfg.sync_bn:
            distributed.to_sync_batchnorm(model)
        train_module = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        global_sizes = train_loader.global_batch_sizes()
    step_fn = torch.compile(train_module) if cfg.compile else train_module
    try:
        return _fit_epochs(
            model, step_fn, optimizer, schedule, train_loader, val_loader, test_loader, cfg, device,
            precision, progress, resume, on_epoch, on_step, global_sizes, distill,
        )  # fmt: skip
    finally:
        if world > 1 and cfg.sync_bn:
            distributed.from_sync_batchnorm(model)


def _fit_epochs(
    model: nn.Module,
    step_fn: Callable,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR,
    train_loader,
    val_loader,
    test_loader,
    cfg: TrainConfig,
    device: torch.device,
    precision: Precision,
    progress: Progress,
    resume: TrainingState | None,
    on_epoch: Callable[[TrainingState], None] | None,
    on_step: Callable[[int, float], None] | None,
    global_sizes: list[int] | None,
    distill: Distillation | None,
) -> FitResult:
    """`fit`'s epochs. `global_sizes`: under torch.distributed, the global batch size of every
    step of an epoch (None in one process)."""
    world = distributed.world_size()
    history: list[dict] = []
    best_state = _cpu_copy(model)
    best_epoch, best_acc, since_best = 0, -1.0, 0
    monitor_best: float | None = None
    first_epoch, spent = 1, 0.0
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
        schedule.load_state_dict(resume.schedule)
        history = [dict(row) for row in resume.history]
        best_state = resume.best_state
        best_epoch, best_acc, since_best = resume.best_epoch, resume.best_score, resume.since_best
        monitor_best = resume.monitor_best
        first_epoch, spent = resume.epoch + 1, resume.seconds
        restore_rng(resume.rng, train_loader)
        ranks = resume.rng.get("ranks")
        if ranks is not None and len(ranks) == world:
            torch.set_rng_state(ranks[distributed.rank()])
    ema = _start_ema(model, cfg, resume, device)
    stop_reason = _should_stop(cfg, history[-1], since_best) if history else ""
    if stop_reason:  # the resumed run had already stopped early
        first_epoch = cfg.epochs + 1
    stop_reason = stop_reason or "epochs"
    start = time.perf_counter()
    for epoch in range(first_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        with progress.task(f"epoch {epoch}/{cfg.epochs}", total=len(train_loader)) as advance:
            for i, (x, y) in enumerate(train_loader):
                with precision.autocast(device):
                    x = as_input(x, precision)
                    out = step_fn(x)
                    if distill is None:
                        loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
                    else:
                        loss = distill.loss(out, x, y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                if global_sizes is None:
                    loss.backward()
                else:  # DDP averages over ranks; the global batch's mean weights ranks by their share
                    (loss * (len(y) * world / global_sizes[i])).backward()
                optimizer.step()
                schedule.step()
                if ema is not None:
                    ema.update(model)
                if on_step is not None:
                    on_step(schedule.last_epoch, loss.item())  # LambdaLR counts optimizer steps
                loss_sum += loss.detach() * len(y)
                correct += (out.detach().argmax(1) == y).sum()
                seen += len(y)
                advance()
        if world > 1:
            seen_here = torch.tensor(float(seen), dtype=torch.float64, device=device)
            totals = torch.stack([loss_sum.double(), correct.double(), seen_here])
            loss_sum, correct, seen_sum = distributed.all_reduce_sum(totals)
            seen = int(seen_sum.item())
            distributed.broadcast_buffers(model)
            if ema is not None:  # rank 0's averaged statistics too, the ones it evaluates and saves
                ema.load_buffer_averages(distributed.broadcast_object(ema.buffer_averages(model)))
        row = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": (loss_sum / max(seen, 1)).item(),
            "train_acc": (correct / max(seen, 1)).item(),
            "val_loss": float("nan"),
            "val_acc": float("nan"),
            "test_loss": float("nan"),
            "test_acc": float("nan"),
        }
        with ema.swapped_in(model) if ema is not None else nullcontext(model):
            if val_loader is not None:
                row["val_loss"], row["val_acc"] = evaluate(model, val_loader, device, precision=precision)
            row["seconds"] = time.perf_counter() - t0
            if test_loader is not None:
                row["test_loss"], row["test_acc"] = evaluate(model, test_loader, device, precision=precision)
            score = row["val_acc"] if val_loader is not None else float(epoch)
            if score > best_acc:
                best_acc, best_epoch = score, epoch
                best_state = _cpu_copy(model)
        history.append(row)
        progress.log(format_epoch(row, cfg.epochs))
        if val_loader is not None and not _improved(cfg, row, monitor_best):
            since_best += 1
        else:
            since_best, monitor_best = 0, row[cfg.patience_metric] if val_loader is not None else None
        rng = _capture_all_rng(train_loader)  # a collective under torch.distributed: on every rank
        if on_epoch is not None:
            on_epoch(TrainingState(
                epoch=epoch, history=list(history), optimizer=optimizer.state_dict(),
                schedule=schedule.state_dict(), best_state=best_state, best_epoch=best_epoch,
                best_score=best_acc, since_best=since_best, monitor_best=monitor_best,
                seconds=spent + time.perf_counter() - start, rng=rng,
                ema=None if ema is None else ema.to_dict(),
            ))  # fmt: skip
        reason = _should_stop(cfg, row, since_best)
        if reason:
            stop_reason = reason
            break
    return FitResult(
        history=history,
        best_state=best_state,
        best_epoch=best_epoch,
        best_val_acc=best_acc if val_loader is not None and best_acc >= 0 else None,
        stop_reason=stop_reason,
        seconds=spent + time.perf_counter() - start,
        averaged=None if ema is None else ema.weights(model),
    )


def _start_ema(
    model: nn.Module, cfg: TrainConfig, resume: TrainingState | None, device: torch.device
) -> EMA | None:
    """The average `cfg.ema` asks for: the resumed one, or one starting at `model`'s weights (also
    when the state resumed from kept none)."""
    if cfg.ema is None:
        return None
    if resume is not None and resume.ema is not None:
        return EMA.from_dict(resume.ema, cfg.ema, device)
    return EMA.start(model, cfg.ema)


def _capture_all_rng(loader) -> dict:
    """`capture_rng`, plus under torch.distributed every rank's torch generator (``ranks``, in rank
    order): the loader's generator is the same on every rank, the dropout generators are not."""
    state = capture_rng(loader)
    if distributed.world_size() > 1:
        state["ranks"] = distributed.gather_objects(state["torch"])
    return state


def _improved(cfg: TrainConfig, row: dict, best: float | None) -> bool:
    """Whether this epoch's `cfg.patience_metric` beats `best` by more than `cfg.min_delta`."""
    value = row[cfg.patience_metric]
    if best is None:
        return True
    if cfg.patience_metric == "val_loss":
        return value < best - cfg.min_delta
    return value > best + cfg.min_delta


def _should_stop(cfg: TrainConfig, row: dict, since_best: int) -> str:
    """Why training stops after the epoch of `row` ("target", "patience"), or "" to go on."""
    if cfg.target_accuracy is not None and row["val_acc"] >= cfg.target_accuracy:
        return "target"
    if cfg.patience is not None and since_best >= cfg.patience:
        return "patience"
    return ""


def _cpu_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def format_epoch(row: dict, epochs: int) -> str:
    line = (
        f"epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.4f}  "
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
    )
    if not math.isnan(row["val_acc"]):
        line += f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
    if not math.isnan(row.get("test_acc", float("nan"))):
        line += f"  test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}"
    return line + f"  {row['seconds']:.1f}s"
