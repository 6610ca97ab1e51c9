"""Learning rate × batch norm: does batch norm widen the range of learning rates that train?

Trains vgg11 (no batch norm) and vgg11_bn with `compresskit train` at every learning rate of
`--lrs` (two decades by default), same seed, same short budget (`--epochs` at constant learning
rate, SGD with Nesterov momentum 0.9, weight decay 5e-4), then plain vgg11 once more at `--init-lr`
with PyTorch's default initialisation instead of Kaiming. Every run is a live run directory under
`--out`: calling the script again skips finished runs and resumes stopped ones. Writes
``lr_bn.csv`` / ``lr_bn.md`` (test accuracy, best validation accuracy and last training loss of
every run), ``accuracy_vs_lr.png`` (final test accuracy against learning rate, one line per
variant) and ``loss_curves.png`` (training loss per epoch of every run). Usage:

    python experiments/lr_bn_study.py --data-dir data --width 0.25 --epochs 3 --out results/lr-bn
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
from plan import start_or_resume

from compresskit.plots import plt, save_figure
from compresskit.report import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--width", default="0.25")
    parser.add_argument("--epochs", default="3")
    parser.add_argument("--lrs", default="0.003,0.01,0.03,0.1,0.3")
    parser.add_argument("--init-lr", default="0.03", help="learning rate of the PyTorch-default-init run")
    parser.add_argument("--out", default="results/lr-bn")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = ["--data-dir", args.data_dir, "--no-download"]
    common = ["--dataset", args.dataset, *data, "--width", args.width, "--epochs", args.epochs,
              "--schedule", "none", "--optimizer", "sgd", "--momentum", "0.9", "--weight-decay", "5e-4",
              "--seed", "0"]  # fmt: skip
    runs = [(model, lr, "kaiming") for model in ("vgg11", "vgg11_bn") for lr in args.lrs.split(",")]
    runs.append(("vgg11", args.init_lr, "torch"))
    rows, curves = [], {}
    for model, lr, init in runs:
        name = f"{model}-lr{lr}" + ("-torch-init" if init == "torch" else "")
        run = out / name
        start_or_resume(run, "train", [*common, "--model", model, "--lr", lr, "--init", init], data)
        summary = json.loads((run / "summary.json").read_text())
        history = pd.read_csv(run / "history.csv")
        curves[name] = history
        last_loss = float(history["train_loss"].iloc[-1])
        rows.append({"model": model, "batch_norm": model.endswith("_bn"), "init": init, "lr": float(lr),
                     "test_acc": summary["test_acc"], "best_val_acc": summary["best_val_acc"],
                     "last_train_loss": last_loss, "diverged": not math.isfinite(last_loss),
                     "train_seconds": summary["train_seconds"]})  # fmt: skip
    table = pd.DataFrame(rows)
    table.to_csv(out / "lr_bn.csv", index=False)
    (out / "lr_bn.md").write_text("# learning rate × batch norm\n\n" + markdown_table(table) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for (model, init), group in table.groupby(["model", "init"]):
        if init == "kaiming":
            ax.plot(group["lr"], group["test_acc"], marker="o", label=model)
    torch_init = table[table["init"] == "torch"]
    label = "vgg11, PyTorch init"
    ax.scatter(torch_init["lr"], torch_init["test_acc"], marker="x", color="black", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (constant)")
    ax.set_ylabel(f"test accuracy after {args.epochs} epochs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out / "accuracy_vs_lr.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, history in curves.items():
        ax.plot(history["epoch"], history["train_loss"], marker=".", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    save_figure(fig, out / "loss_curves.png")
    print(markdown_table(table))


if __name__ == "__main__":
    main()
