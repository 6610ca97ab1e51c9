"""The evaluate job: test accuracy, per-class precision/recall/F1, confusion matrix, the most
confused class pairs (table and figure) and a per-class recall figure of a checkpoint, into
``RUN/evaluation/`` (a folder replaced as a whole, never half-written, and only when it is
evaluate's own earlier output).

Accuracy is computed in fp32 unless asked otherwise (``--precision``), whatever precision the run
trained in: bf16 autocast, used for training where a CPU computes it natively, moved the same
checkpoint's accuracy by a few hundredths of a percent from one machine to another.
``evaluation.json`` records the precision and the device it ran on."""

from __future__ import annotations

import platform
from pathlib import Path

import pandas as pd
import torch

from compresskit.data import Loader
from compresskit.errors import CompresskitError
from compresskit.evaluation import classification_report
from compresskit.jobs.anymodel import model_name
from compresskit.jobs.common import open_checkpoint
from compresskit.plots import plot_confusion_matrix, plot_most_confused, plot_per_class_recall
from compresskit.rundir import check_derived_folder, staged_output, write_json
from compresskit.train import check_tta, predict, resolve_device, resolve_precision

FOLDER = "evaluation"
FILES = (
    "evaluation.json",
    "per_class.csv",
    "most_confused.csv",
    "confusion.csv",
    "confusion.png",
    "most_confused.png",
    "recall.png",
)


def evaluate_run(
    checkpoint: str | Path,
    *,
    data_dir: str | None = None,
    download: bool = True,
    batch_size: int = 256,
    device: str = "auto",
    tta: str = "none",
    precision: str = "fp32",
) -> dict:
    """Evaluate `checkpoint` (a run directory means its ``checkpoint.pt``) on the run's test split.

    `tta` (none, flip, flip-translate) averages test-time views (`train.tta_logits`); every reported
    number then uses those predictions, and ``test_acc_no_tta`` keeps the plain accuracy. Top-5
    accuracy is reported for more than 10 classes. `precision` (fp32, bf16, auto) is what
    `train.resolve_precision` makes of it on the device: fp32 by default, so the accuracy
    reproduces on any machine; bf16 autocast is refused on a CPU that would only emulate it; auto
    is bf16 where native, else fp32 (as for training). Writes `FILES` into ``RUN/evaluation/`` and
    returns the summary dict with ``per_class`` (a DataFrame) and ``folder``.
    """
    if batch_size <= 0:
        raise CompresskitError(f"--batch-size {batch_size} must be a positive integer.")
    check_tta(tta)
    torch_device = resolve_device(device)
    computed = resolve_precision(precision, torch_device)
    ckpt, config, data = open_checkpoint(checkpoint, data_dir, download=download)
    folder = ckpt.path.parent / FOLDER
    check_derived_folder(folder, "evaluate")
    model = ckpt.build(torch_device)
    loader = Loader(
        data.test, batch_size, mean=tuple(config.data.mean), std=tuple(config.data.std), device=torch_device
    )
    logits, labels = predict(model, loader, torch_device, tta=tta, precision=computed)
    plain_logits = predict(model, loader, torch_device, precision=computed)[0] if tta != "none" else logits
    report = classification_report(logits, labels, data.classes)
    summary = {
        "checkpoint": str(ckpt.path),
        "dataset": data.name,
        "test_samples": report.num_samples,
        "test_acc": report.accuracy,
        "test_top5_acc": report.top5,
        "tta": tta,
        "test_acc_no_tta": float((plain_logits.argmax(1) == labels).double().mean()),
        "test_loss": float(torch.nn.functional.cross_entropy(logits, labels)),
        "macro_precision": report.macro_precision,
        "macro_recall": report.macro_recall,
        "macro_f1": report.macro_f1,
        "precision": computed.describe(),
        "device": str(torch_device),
        "device_name": device_name(torch_device),
        "torch": torch.__version__,
    }
    with staged_output(folder, "evaluate") as stage:
        confused = report.most_confused(20)
        confused.to_csv(stage / "most_confused.csv", index=False)
        report.per_class.to_csv(stage / "per_class.csv", index=False)
        pd.DataFrame(report.confusion, index=data.classes, columns=data.classes).to_csv(
            stage / "confusion.csv"
        )
        title = f"{model_name(ckpt)} on {data.name}"
        plot_confusion_matrix(report.confusion, data.classes, stage / "confusion.png", title=title)
        plot_most_confused(confused, stage / "most_confused.png", title=f"{title}: most confused pairs")
        plot_per_class_recall(report.per_class, stage / "recall.png", title=f"{title}: recall per class")
        write_json(stage / "evaluation.json", summary)
    return {**summary, "per_class": report.per_class, "folder": str(folder)}


def device_name(device: torch.device) -> str:
    """What computed on `device`: the GPU's name, or the CPU's model name (``/proc/cpuinfo``, else
    `platform.processor`, else the machine type), e.g. "Intel(R) Xeon(R) Processor"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
