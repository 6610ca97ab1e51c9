"""A training run's hyperparameters (`TrainConfig`, each flag checked by `validate`) and the
optimizer and learning-rate schedule they define."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from compresskit.errors import CompresskitError
from compresskit.train.precision import PRECISIONS

OPTIMIZERS = ("sgd", "adamw")
PATIENCE_METRICS = ("val_acc", "val_loss")
SCHEDULES = ("step", "cosine", "onecycle", "none")


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
                "--target-accuracy and --patience need a validation split (--val-fraction > 0, or an image "
                "folder's val/)."
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
