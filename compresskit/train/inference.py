"""A model's outputs over a loader, without training it: `predict` (logits, optionally averaged
over test-time views) and `evaluate` (loss and accuracy, summed over ranks under torch.distributed)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from compresskit import distributed
from compresskit.errors import ParameterError
from compresskit.train.precision import Precision, as_input, resolve_precision

TTA_MODES = ("none", "flip", "flip-translate")


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


def check_tta(mode: str) -> None:
    if mode not in TTA_MODES:
        raise ParameterError(f"{{0}} must be one of: {', '.join(TTA_MODES)}; got '{mode}'.", "tta")


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
    precision = precision or resolve_precision("auto", device)
    all_logits, all_labels = [], []
    with precision.autocast(device):
        for x, y in loader:
            all_logits.append(tta_logits(model, as_input(x, precision), tta).float().cpu())
            all_labels.append(y.cpu())
    model.train(was_training)
    if not all_logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_labels)
