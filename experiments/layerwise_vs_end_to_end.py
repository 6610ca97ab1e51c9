"""End-to-end vs greedy layer-wise training, the VGG11 study's five variants in one command.

Trains with `compresskit train`: end to end; B (`--layerwise`, earlier blocks frozen); C
(`--layerwise --no-freeze`); D and E (B and C that start with `--early-augment` and switch to the
full `--augment` from stage `--switch-stage` on, mid-way through the eight blocks: our reading of
the study's "switch augmentation part-way"). The study's schedule is the default: SGD lr 0.01,
plain (heavy-ball) momentum 0.9 (``--nesterov`` switches to Nesterov, compresskit's own default),
wd 5e-4, batch 128, 7 epochs per stage with a step decay every 3; augmentation flip, rotation 15°,
colour jitter 0.2. Runs `compresskit analyze --metrics csi` on each final
model and writes under `--out`: ``comparison.csv`` / ``comparison.md`` (final test accuracy,
training time, parameters, and the test CSI of every block) and ``comparison.png`` (test CSI per
block; test accuracy after each layer-wise stage). Every run is a live run directory: calling the
script again skips finished runs and resumes stopped ones. Usage (CIFAR-10 from
../shared/data/cifar10/make_cifar10.py):

    python experiments/layerwise_vs_end_to_end.py --dataset cifar10 --data-dir data --width 0.25 \
        --out results/layerwise
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from plan import compresskit, start_or_resume

from compresskit.plots import plt, save_figure
from compresskit.report import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--model", default="vgg11_bn")
    parser.add_argument("--width", default="0.25")
    parser.add_argument("--stage-epochs", default="7")
    parser.add_argument("--epochs", default="56", help="end-to-end epochs (default: the layer-wise total)")
    parser.add_argument("--lr", default="0.01")
    parser.add_argument("--step-size", default="3", help="StepLR step (epochs) within a stage")
    parser.add_argument("--e2e-step-size", default="24", help="StepLR step (epochs) end to end")
    parser.add_argument("--augment", default="flip,rotate=15,jitter=0.2", help="the study's augmentation")
    parser.add_argument("--early-augment", default="flip", help="D and E: augmentation before the switch")
    parser.add_argument("--switch-stage", default="5", help="D and E: first stage with --augment")
    parser.add_argument(
        "--nesterov",
        action="store_true",
        help="Nesterov momentum (compresskit's default); the study's SGD is plain momentum",
    )
    parser.add_argument("--out", default="results/layerwise")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--model", args.model, "--width", args.width, "--dataset", args.dataset, "--data-dir",
              args.data_dir, "--no-download", "--lr", args.lr, "--optimizer", "sgd", "--momentum", "0.9",
              "--weight-decay", "5e-4", "--schedule", "step", "--gamma", "0.1", "--seed", "0", "--quiet",
              "--batch-size", "128", "--nesterov" if args.nesterov else "--no-nesterov"]  # fmt: skip
    data = ["--data-dir", args.data_dir, "--no-download"]
    switch = ["--augment", args.early_augment, "--aug-switch", f"{args.switch_stage}:{args.augment}"]
    stagewise = ["--layerwise", "--stage-epochs", args.stage_epochs, "--step-size", args.step_size,
                 "--analyze-stages"]  # fmt: skip
    full = ["--augment", args.augment]
    runs = {  # name: (folder, flags)
        "end-to-end": ("end-to-end", ["--epochs", args.epochs, "--step-size", args.e2e_step_size, *full]),
        "layer-wise B (frozen)": ("layerwise-B", [*stagewise, *full]),
        "layer-wise C (not frozen)": ("layerwise-C", [*stagewise, "--no-freeze", *full]),
        "layer-wise D (frozen, switch)": ("layerwise-D", [*stagewise, *switch]),
        "layer-wise E (not frozen, switch)": ("layerwise-E", [*stagewise, "--no-freeze", *switch]),
    }
    rows, csi = [], {}
    for name, (folder, extra) in runs.items():
        run = out / folder
        start_or_resume(run, "train", [*common, *extra], data)
        if not (run / "analysis" / "layers.csv").is_file():
            compresskit("analyze", "--checkpoint", str(run), "--metrics", "csi", "--samples", "1000", *data,
                        "--quiet")  # fmt: skip
        summary = json.loads((run / "summary.json").read_text())
        layers = pd.read_csv(run / "analysis" / "layers.csv")
        csi[name] = layers
        rows.append({
            "run": name, "folder": str(run), "test_acc": summary["test_acc"],
            "best_val_acc": summary["best_val_acc"], "epochs": summary["epochs_run"],
            "train_seconds": summary["train_seconds"], "parameters": summary["parameters"],
            **{f"csi_test_{r.layer}": r.csi_test for r in layers.itertuples()},
        })  # fmt: skip
    table = pd.DataFrame(rows)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(
        "# end-to-end vs layer-wise\n\n" + markdown_table(table.drop(columns=["folder"])) + "\n"
    )
    fig, (ax_csi, ax_stage) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, (name, layers) in enumerate(csi.items()):
        ax_csi.plot(layers["layer"], layers["csi_test"], marker="o", color=f"C{i}", label=name)
    ax_csi.set_ylabel("test CSI of the final model")
    ax_csi.tick_params(axis="x", rotation=45)
    for i, name in enumerate(runs):  # one colour per run in both panels
        if name == "end-to-end":
            continue
        stages = pd.read_csv(out / runs[name][0] / "stages.csv")
        ax_stage.plot(
            stages["blocks"], stages["test_acc"], marker="o", color=f"C{i}", label=f"{name}: test accuracy"
        )
        newest = f"{name}: CSI of newest block"
        ax_stage.plot(stages["blocks"], stages["csi_test"], ls="--", marker=".", color=f"C{i}", label=newest)
    e2e = table[table["run"] == "end-to-end"]["test_acc"].iloc[0]
    ax_stage.axhline(e2e, color="gray", ls=":", label="end-to-end test accuracy")
    ax_stage.set_xlabel("conv blocks trained so far")
    for ax in (ax_csi, ax_stage):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, out / "comparison.png")
    print(markdown_table(table[["run", "test_acc", "best_val_acc", "epochs", "train_seconds", "parameters"]]))


if __name__ == "__main__":
    main()
