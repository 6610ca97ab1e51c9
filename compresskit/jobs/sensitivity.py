"""The sensitivity job: prune each conv layer alone at each ratio, no fine-tuning, and measure
test accuracy, into ``RUN/sensitivity/`` (replaced as a whole, only when it is sensitivity's own
earlier output)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from compresskit.compress.prune import PruneConfig, prune_copy
from compresskit.data import balanced_loader
from compresskit.errors import CompresskitError
from compresskit.jobs.anymodel import is_convnet, model_name
from compresskit.jobs.common import open_checkpoint
from compresskit.plots import plot_sensitivity
from compresskit.progress import Progress
from compresskit.rundir import check_derived_folder, staged_output
from compresskit.train import evaluate, resolve_device, resolve_precision

FOLDER = "sensitivity"


def sensitivity_run(
    checkpoint: str | Path,
    ratios: Sequence[float],
    *,
    importance: str = "l1",
    samples: int | None = None,
    data_dir: str | None = None,
    download: bool = True,
    batch_size: int = 256,
    device: str = "auto",
    progress: Progress | None = None,
) -> dict:
    """Prune each conv layer of `checkpoint` alone by each of `ratios` and measure test accuracy.

    Writes ``sensitivity.csv`` (layer, ratio, channels_kept, channels, test_acc, acc_drop) and
    ``sensitivity.png`` into ``RUN/sensitivity/``. `samples` limits the test images
    (class-balanced).
    """
    progress = progress or Progress(enabled=False)
    if not ratios or any(not 0 < r < 1 for r in ratios):
        raise CompresskitError(f"--ratios {list(ratios)}: every ratio must be strictly between 0 and 1.")
    PruneConfig(importance=importance).validate()
    if importance in ("taylor", "separation"):
        raise CompresskitError(
            f"--importance {importance} needs calibration data; sensitivity uses l1, l2, bn-scale or random."
        )
    if batch_size <= 0:
        raise CompresskitError(f"--batch-size {batch_size} must be a positive integer.")
    ckpt, config, data = open_checkpoint(checkpoint, data_dir, download=download)
    if not is_convnet(ckpt):
        raise CompresskitError(
            f"sensitivity prunes each conv block of a compresskit ConvNet alone, and {ckpt.path} holds "
            f"{model_name(ckpt)}; use compresskit prune on it instead."
        )
    folder = ckpt.path.parent / FOLDER
    check_derived_folder(folder, "sensitivity")
    torch_device = resolve_device(device)
    loader = balanced_loader(
        data.test,
        samples or None,  # 0 or None: every test image
        0,
        batch_size=batch_size,
        mean=tuple(config.data.mean),
        std=tuple(config.data.std),
        device=torch_device,
    )
    model = ckpt.build(torch_device)
    precision = resolve_precision(str(config.train.get("precision", "auto")), torch_device)
    _, base_acc = evaluate(model, loader, torch_device, precision=precision)
    convs = len(ckpt.spec.conv_widths)
    rows = []
    with progress.task("layers × ratios", total=convs * len(ratios)) as advance:
        for layer in range(convs):
            for ratio in ratios:
                layer_ratios = [ratio if i == layer else 0.0 for i in range(convs)]
                pruned, spec = prune_copy(
                    model,
                    ckpt.spec,
                    PruneConfig(importance=importance),
                    layer_ratios=layer_ratios,
                    prune_head=False,
                )
                _, acc = evaluate(pruned, loader, torch_device, precision=precision)
                rows.append(
                    {
                        "layer": f"block{layer + 1}",
                        "ratio": ratio,
                        "channels_kept": spec.conv_widths[layer],
                        "channels": ckpt.spec.conv_widths[layer],
                        "test_acc": acc,
                        "acc_drop": base_acc - acc,
                    }
                )
                advance()
    table = pd.DataFrame(rows)
    with staged_output(folder, "sensitivity") as stage:
        table.to_csv(stage / "sensitivity.csv", index=False)
        plot_sensitivity(
            table, base_acc, stage / "sensitivity.png", title=f"{ckpt.spec.name}: one layer pruned"
        )
    files = [str(folder / n) for n in ("sensitivity.csv", "sensitivity.png")]
    return {"table": table, "base_acc": base_acc, "files": files, "checkpoint": str(ckpt.path)}
