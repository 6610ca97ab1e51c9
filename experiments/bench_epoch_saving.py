"""Time overhead of the per-epoch saving of a live run directory, relative to the epoch itself.

`compresskit train` hands `fit` an `EpochRecorder` as ``on_epoch``: after every epoch it writes
``last.pt`` (model + optimizer + LR schedule + best weights + random states, atomically), then
``history.csv``, then redraws ``curves.png``. This bench trains vgg16_bn (CIFAR-10's training split
minus a stratified 10% validation split: 45,000 images, batch 128, SGD lr 0.05 onecycle, the
`TrainConfig` defaults) with ``on_epoch`` = the recorder wrapped in a timer, and prints

    overhead = save seconds / epoch seconds

where the epoch seconds are the history row's ``seconds`` (training + validation; `fit` takes
that clock before it calls ``on_epoch``, so the save is not in it). After the run, the three parts
are timed apart by calling the functions the recorder calls (`save_checkpoint` with the last
`TrainingState`, `write_history`, `plot_training_curves`) once more (`--repeats` times, median) in
a fresh folder. Everything is written under a `tempfile.TemporaryDirectory`, removed at the end.
The budget is 2%. Usage (the full measurement; 10+ minutes of CPU):

    python experiments/bench_epoch_saving.py --data-dir data

Quick checks: `--images 512` caps the training images (and the validation images at the same 9:1
ratio; the output says the epoch was capped), `--dataset digits --width 0.25 --epochs 2` needs no
CIFAR files. With more than one epoch the first one also pays one-time costs (first figure, first
large file); each epoch's ratio is printed, and the total is the sum of saves over the sum of epochs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from compresskit.checkpoint import save_checkpoint
from compresskit.data import Loader, default_augmentation, load_dataset, stratified_split
from compresskit.jobs.common import LAST_NAME, EpochRecorder, write_history
from compresskit.models import build_model, count_parameters, make_spec
from compresskit.plots import plot_training_curves
from compresskit.train import TrainConfig, TrainingState, fit, resolve_device

BUDGET = 0.02
MODEL = "vgg16_bn"
VAL_FRACTION = 0.1


class TimedRecorder:
    """`on_epoch` that calls an `EpochRecorder` and keeps its wall time per epoch and the last
    `TrainingState` it saw."""

    def __init__(self, recorder: EpochRecorder, device: torch.device) -> None:
        self.recorder, self.device = recorder, device
        self.seconds: list[float] = []
        self.last: TrainingState | None = None

    def __call__(self, state: TrainingState) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        self.recorder(state)
        self.seconds.append(time.perf_counter() - start)
        self.last = state


def timed(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn()`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_parts(folder: Path, spec, model, meta: dict, title: str, timer: TimedRecorder,
               repeats: int) -> dict[str, float]:  # fmt: skip
    """Seconds of each of the recorder's three writes, called again as it calls them (with the last
    state and rows it saw) in the fresh `folder`."""
    folder.mkdir()
    state, rows = timer.last, timer.recorder.rows
    last_meta = {**meta, "epoch": state.epoch, "history_before": timer.recorder.before}
    return {
        LAST_NAME: timed(
            lambda: save_checkpoint(folder / LAST_NAME, spec, model, last_meta, training=state.to_dict()),
            repeats,
        ),
        "history.csv": timed(lambda: write_history(folder / "history.csv", rows), repeats),
        "curves.png": timed(
            lambda: plot_training_curves(pd.DataFrame(rows), folder / "curves.png", title=title), repeats
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10", help="cifar10; digits or synthetic for a check")
    parser.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--images", type=int, default=None, help="cap the training images (quick check)")
    parser.add_argument("--repeats", type=int, default=1, help="calls per part when timed apart (median)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    data_dir = args.data_dir if args.dataset not in ("digits", "synthetic") else None
    data = load_dataset(args.dataset, data_dir, download=False)
    cfg = TrainConfig(epochs=args.epochs, device=args.device)  # batch 128, SGD lr 0.05, onecycle
    device = resolve_device(cfg.device)
    train_idx, val_idx = stratified_split(data.train.labels, VAL_FRACTION, seed=cfg.seed)
    full_train = len(train_idx)
    capped = args.images is not None and args.images < full_train
    if capped:  # a seeded random sample of each part, keeping the 9:1 ratio
        g = torch.Generator().manual_seed(cfg.seed)
        train_idx = train_idx[torch.randperm(len(train_idx), generator=g)[: args.images]].sort().values
        n_val = max(1, round(args.images * VAL_FRACTION / (1 - VAL_FRACTION)))
        val_idx = val_idx[torch.randperm(len(val_idx), generator=g)[:n_val]].sort().values

    # the loaders and model exactly as `jobs.common.data_loaders` and `jobs.train` make them
    stats = {"mean": data.mean, "std": data.std, "device": device, "channels_last": device.type == "cuda"}
    augment = default_augmentation(args.dataset)
    train_loader = Loader(data.train.subset(train_idx), cfg.batch_size, augment=augment, shuffle=True,
                          seed=cfg.seed, **stats)  # fmt: skip
    val_loader = Loader(data.train.subset(val_idx), max(cfg.batch_size, 256), **stats)
    spec = make_spec(MODEL, data.num_classes, in_channels=data.channels, width=args.width)
    model = build_model(spec, seed=cfg.seed).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    meta = {"dataset": data.name, "data_dir": data_dir, "classes": data.classes, "mean": list(data.mean),
            "std": list(data.std), "lineage": [f"bench_epoch_saving {MODEL} w{args.width:g}"]}  # fmt: skip
    title = f"{MODEL} on {data.name}"

    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"{MODEL} width {args.width:g} ({count_parameters(model):,} parameters) on {data.name}: "
        f"{len(train_idx)} train / {len(val_idx)} val images, batch {cfg.batch_size}, "
        f"{cfg.optimizer} lr {cfg.lr} {cfg.schedule}, {cfg.epochs} epoch(s)"
    )
    if capped:
        print(f"NOTE: epoch capped by --images to {len(train_idx)} of {full_train} training images "
              f"(validation to {len(val_idx)}); the ratio below is not the full-epoch one.")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="bench_epoch_saving-") as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        timer = TimedRecorder(EpochRecorder(run, spec, model, meta, title), device)
        result = fit(model, train_loader, val_loader, cfg, on_epoch=timer)
        last_mb = (run / LAST_NAME).stat().st_size / 1e6

        parts = time_parts(Path(tmp) / "parts", spec, model, meta, title, timer, args.repeats)

    epochs = [row["seconds"] for row in result.history]
    print(f"\n{'epoch':>5} {'epoch s':>9} {'save s':>8} {'save/epoch':>11}")
    for row, save in zip(result.history, timer.seconds, strict=True):
        print(f"{row['epoch']:>5} {row['seconds']:>9.2f} {save:>8.3f} {save / row['seconds']:>10.2%}")
    epoch_s, save_s = sum(epochs), sum(timer.seconds)
    rest = result.seconds - epoch_s - save_s
    print(f"fit total {result.seconds:.2f} s = epochs {epoch_s:.2f} + saves {save_s:.2f} + other {rest:.2f} "
          "(best-weights copy, state capture)")  # fmt: skip
    print(f"\nparts, timed apart after the run (median of {args.repeats}):")
    for name, seconds in parts.items():
        print(f"  {name:<12} {seconds:>8.3f} s")
    per_epoch = save_s / len(epochs)
    print(f"  {'sum':<12} {sum(parts.values()):>8.3f} s  (in the run: {per_epoch:.3f} s per epoch)")
    print(f"last.pt size {last_mb:.1f} MB")

    overhead = save_s / epoch_s
    print(f"\noverhead = save/epoch = {overhead:.2%}" + ("  (capped epoch)" if capped else ""))
    verdict = "within" if overhead <= BUDGET else "OVER"
    caveat = " (capped epoch: not the real verdict)" if capped else ""
    print(f"verdict: {verdict} the {BUDGET:.0%} budget{caveat}")


if __name__ == "__main__":
    main()
