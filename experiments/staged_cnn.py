"""The staged CIFAR-10 CNN study in one command: baseline → attention → advanced, then pruning.

Three runs of `compresskit train`, each a stage of the study, then the advanced model pruned at
ratio 0.5 (its squeeze-and-excitation blocks pruned with the convolutions, the result reloaded
from its spec) and compared with the unpruned model by `compresskit report` (``report/``), and one
comparison under `--out`:

* baseline: ``cnn`` (conv-ReLU-pool sandwiches, 32-64-128 channels), SGD lr 0.01, batch 32,
  crop + flip;
* intermediate: ``cnn_se`` (deeper: two convs before each pool, 32-32-64-64-128-128, each conv
  block closed by a squeeze-and-excitation gate), stronger augmentation (crop, flip, rotation 15°,
  colour jitter 0.2), SGD lr 0.01, batch 64;
* advanced: ``cnn_se_bn`` (batch norm) with dropout 0.3 before the classifier, AdamW lr 1e-3,
  cosine schedule, batch 64, the intermediate augmentation.

Every run is a live run directory: calling the script again skips finished runs and resumes
stopped ones. Writes ``comparison.csv`` / ``comparison.md`` (test accuracy, best validation
accuracy, epochs, time, parameters; the pruned model's row too) and ``comparison.png``
(validation accuracy per epoch of each stage). Usage (CIFAR-10 from make_cifar10.py):

    python experiments/staged_cnn.py --data-dir data --epochs 12 --out results/staged-cnn
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from plan import compresskit, start_or_resume

from compresskit.plots import plt, save_figure
from compresskit.report import markdown_table

STAGES = {  # name: (folder, flags)
    "baseline": (
        "baseline",
        [
            "--model",
            "cnn",
            "--optimizer",
            "sgd",
            "--lr",
            "0.01",
            "--batch-size",
            "32",
            "--schedule",
            "cosine",
            "--augment",
            "crop=4,flip",
        ],
    ),
    "intermediate": (
        "intermediate",
        [
            "--model",
            "cnn_se",
            "--optimizer",
            "sgd",
            "--lr",
            "0.01",
            "--batch-size",
            "64",
            "--schedule",
            "cosine",
            "--augment",
            "crop=4,flip,rotate=15,jitter=0.2",
        ],
    ),
    "advanced": (
        "advanced",
        [
            "--model",
            "cnn_se_bn",
            "--dropout",
            "0.3",
            "--optimizer",
            "adamw",
            "--lr",
            "0.001",
            "--batch-size",
            "64",
            "--schedule",
            "cosine",
            "--weight-decay",
            "5e-4",
            "--augment",
            "crop=4,flip,rotate=15,jitter=0.2",
        ],
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--epochs", default="15", help="epochs of each stage")
    parser.add_argument("--finetune-epochs", default="5", help="fine-tuning epochs after pruning")
    parser.add_argument("--out", default="results/staged-cnn")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = ["--data-dir", args.data_dir, "--no-download"]
    rows, histories = [], {}
    for name, (folder, flags) in STAGES.items():
        run = out / folder
        flags = ["--dataset", args.dataset, *data, "--epochs", args.epochs, "--seed", "0", *flags]
        start_or_resume(run, "train", flags, data)
        summary = json.loads((run / "summary.json").read_text())
        histories[name] = pd.read_csv(run / "history.csv")
        rows.append(
            {
                "stage": name,
                "model": summary["model"],
                "test_acc": summary["test_acc"],
                "best_val_acc": summary["best_val_acc"],
                "epochs": summary["epochs_run"],
                "train_seconds": summary["train_seconds"],
                "parameters": summary["parameters"],
            }
        )
    pruned = out / "advanced-pruned-r0.5"
    prune_flags = [
        "--checkpoint",
        str(out / "advanced"),
        "--ratio",
        "0.5",
        "--importance",
        "l1",
        "--finetune-epochs",
        args.finetune_epochs,
        "--optimizer",
        "adamw",
        "--lr",
        "0.0005",
        *data,
    ]
    start_or_resume(pruned, "prune", prune_flags, data)
    summary = json.loads((pruned / "summary.json").read_text())
    report = out / "report"
    if not (report / "report.csv").is_file():
        compresskit("report", str(out / "advanced"), str(pruned), "--out", str(report), "--threads", "2",
                    "--bench-seconds", "2", "--quiet")  # fmt: skip
    rows.append(
        {
            "stage": "advanced, pruned 0.5 + fine-tuned",
            "model": "cnn_se_bn (pruned)",
            "test_acc": summary["test_acc"],
            "best_val_acc": None,
            "epochs": int(args.finetune_epochs),
            "train_seconds": None,
            "parameters": summary["parameters"],
        }
    )
    table = pd.DataFrame(rows)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text("# staged CNN on CIFAR-10\n\n" + markdown_table(table) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, history) in enumerate(histories.items()):
        ax.plot(history["epoch"], history["val_acc"], marker=".", color=f"C{i}", label=f"{name}: validation")
        ax.plot(history["epoch"], history["train_acc"], ls=":", color=f"C{i}", label=f"{name}: train")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, out / "comparison.png")
    print(markdown_table(table))


if __name__ == "__main__":
    main()
