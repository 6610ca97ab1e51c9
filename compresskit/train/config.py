"""A training run's hyperparameters (`TrainConfig`, each field checked by `validate`) and the
optimizer and learning-rate schedule they define."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from compresskit.errors import ParameterError
from compresskit.train.precision import PRECISIONS

OPTIMIZERS = ("sgd", "adamw")
PATIENCE_METRICS = ("val_acc", "val_loss")
SCHEDULES = ("step", "cosine", "onecycle", "none")
# The train command's recipe when --optimizer and --lr are not given (`default_optimizer`,
# `default_lr`). With batch norm, SGD at 0.05. Without it, no SGD rate trains every plain model in
# 10 epochs of digits (~110 steps): 0.01 leaves vgg16 and cnn_se on the initial loss plateau, 0.05
# diverges them; AdamW trains them, at a lower rate for the deepest (vgg19 stalls near 40% at 1e-3).
SGD_LR = 0.05
ADAMW_LR = 1e-3
ADAMW_DEEP_LR = 3e-4
DEEP_CONV_LAYERS = 10  # a model with more conv layers than this gets ADAMW_DEEP_LR


@dataclass
class TrainConfig:
    """Hyperparameters of one training run. Accuracies are fractions in [0, 1]."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05  # the train command picks its default by optimizer and model: `default_lr`
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
        """Raise `ParameterError` naming the first field whose value is not allowed.

        `has_validation`: whether a validation split exists; early stopping needs one.
        """
        if self.epochs <= 0:
            raise ParameterError(f"{{0}} must be a positive integer; got {self.epochs}.", "epochs")
        if self.batch_size <= 0:
            raise ParameterError(f"{{0}} must be a positive integer; got {self.batch_size}.", "batch_size")
        if not self.lr > 0:
            raise ParameterError(f"{{0}} must be a positive number; got {self.lr}.", "lr")
        if self.optimizer not in OPTIMIZERS:
            raise ParameterError(
                f"{{0}} must be one of: {', '.join(OPTIMIZERS)}; got '{self.optimizer}'.", "optimizer"
            )
        if self.schedule not in SCHEDULES:
            raise ParameterError(
                f"{{0}} must be one of: {', '.join(SCHEDULES)}; got '{self.schedule}'.", "schedule"
            )
        if not 0 <= self.momentum < 1:
            raise ParameterError(f"{{0}} must be in [0, 1); got {self.momentum}.", "momentum")
        if self.weight_decay < 0:
            raise ParameterError(f"{{0}} must be 0 or more; got {self.weight_decay}.", "weight_decay")
        if self.step_size < 0:
            raise ParameterError(f"{{0}} must be 0 or more; got {self.step_size}.", "step_size")
        if not 0 < self.gamma <= 1:
            raise ParameterError(f"{{0}} must be in (0, 1]; got {self.gamma}.", "gamma")
        if not 0 <= self.label_smoothing < 1:
            raise ParameterError(f"{{0}} must be in [0, 1); got {self.label_smoothing}.", "label_smoothing")
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise ParameterError(
                f"{{0}} must be a fraction in (0, 1], e.g. 0.9; got {self.target_accuracy}.",
                "target_accuracy",
            )
        if self.patience is not None and self.patience <= 0:
            raise ParameterError(f"{{0}} must be a positive integer; got {self.patience}.", "patience")
        if self.patience_metric not in PATIENCE_METRICS:
            raise ParameterError(
                f"{{0}} must be one of: {', '.join(PATIENCE_METRICS)}; got '{self.patience_metric}'.",
                "patience_metric",
            )
        if not self.min_delta >= 0:
            raise ParameterError(f"{{0}} must be 0 or more; got {self.min_delta}.", "min_delta")
        if not has_validation and (self.target_accuracy is not None or self.patience is not None):
            raise ParameterError(
                "{0} and {1} need a validation split ({2} > 0, or an image folder's val/).",
                "target_accuracy", "patience", "val_fraction",
            )  # fmt: skip
        if self.precision not in PRECISIONS:
            raise ParameterError(
                f"{{0}} must be one of: {', '.join(PRECISIONS)}; got '{self.precision}'.", "precision"
            )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ParameterError(f"{{0}} must be auto, cpu, cuda or cuda:N; got '{self.device}'.", "device")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ParameterError(f"{{0}} must be in (0, 1), a decay such as 0.999; got {self.ema}.", "ema")

    def to_dict(self) -> dict:
        return asdict(self)


def has_batch_norm(model: nn.Module) -> bool:
    """Whether any module of `model` is a batch norm (BatchNorm1d/2d/3d, SyncBatchNorm)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def conv_layer_count(model: nn.Module) -> int:
    """The number of 2-D convolutions in `model` (a factorized conv counts its two)."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def default_optimizer(batch_norm: bool) -> str:
    """The train command's optimizer when neither --optimizer nor --lr is given: SGD for a model
    with batch norm, AdamW without (see `SGD_LR`'s comment)."""
    return "sgd" if batch_norm else "adamw"


def default_lr(optimizer: str, conv_layers: int) -> float:
    """The train command's peak learning rate when --lr is not given: `SGD_LR` for SGD; for AdamW
    `ADAMW_LR`, or `ADAMW_DEEP_LR` for a model of more than `DEEP_CONV_LAYERS` conv layers. In a
    notebook: ``default_lr(opt, conv_layer_count(model))`` with ``opt =
    default_optimizer(has_batch_norm(model))``."""
    if optimizer == "sgd":
        return SGD_LR
    return ADAMW_DEEP_LR if conv_layers > DEEP_CONV_LAYERS else ADAMW_LR


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
