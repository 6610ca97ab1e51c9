"""What every job shares: loaders rebuilt from a run's recorded data, the per-epoch recorder that
keeps a live run directory current, the end of a training or fine-tuning run (last and best epoch
tested, their checkpoints written), and the guard that records how a run ended."""

from __future__ import annotations

import hashlib
import platform
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pandas as pd
import torch

from compresskit import __version__, distributed
from compresskit.architecture import Architecture
from compresskit.checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint
from compresskit.data import Augmentation, ImageDataset, ImageSplit, Loader, load_dataset
from compresskit.errors import CompresskitError
from compresskit.jobs.anymodel import input_shape, output_count, save_run_checkpoint
from compresskit.models import ModelSpec
from compresskit.plots import plot_training_curves
from compresskit.rundir import DataRecord, RunConfig, SplitRecord, read_config, set_state, write_text_atomic
from compresskit.train import HISTORY_COLUMNS, Precision, TrainingState, evaluate

LAST_NAME = "last.pt"
T = TypeVar("T")


class RunInterrupted(CompresskitError):
    """A run stopped by SIGINT or SIGTERM after its last finished epoch was saved."""

    exit_code = 130


def versions() -> dict:
    import torchvision

    return {
        "compresskit": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def data_loaders(
    data: ImageDataset,
    record: DataRecord,
    *,
    batch_size: int,
    seed: int,
    device: torch.device,
    augment: Augmentation | None = None,
    where: str = "the run",
) -> tuple[Loader, Loader | None, Loader]:
    """Train (shuffled from `seed`, augmented by `augment` or the recorded recipe), validation
    (the recorded split, checked; `validation_split`) and test loaders on `device`, normalised
    with the recorded statistics. Under torchrun each loader yields this rank's share of every
    global batch."""
    train_idx, _ = record.split.indices(data.train.labels, where)
    held_out = validation_split(data, record, where)
    stats = {
        "mean": tuple(record.mean),
        "std": tuple(record.std),
        "device": device,
        "channels_last": device.type == "cuda",
        "rank": distributed.rank(),
        "world_size": distributed.world_size(),
    }
    augment = augment if augment is not None else Augmentation.parse(record.augment)
    eval_batch = max(batch_size, 256)
    train = Loader(
        data.train.subset(train_idx), batch_size, augment=augment, shuffle=True, seed=seed, **stats
    )
    val = Loader(held_out, eval_batch, **stats) if len(held_out) else None
    return train, val, Loader(data.test, eval_batch, **stats)


def split_record(data: ImageDataset, val_fraction: float, seed: int) -> tuple[SplitRecord, dict | None]:
    """What a new run records of its validation split (`DataRecord.split` and `.val_folder`): a
    dataset with its own validation split (`ImageDataset.val`, an image folder's ``val/``) holds
    nothing out of train and records that split; any other holds `val_fraction` of train out."""
    if data.val is None:
        return SplitRecord.make(data.train.labels, val_fraction, seed), None
    folder = {"count": len(data.val), "labels_sha256": _labels_hash(data.val.labels)}
    return SplitRecord.make(data.train.labels, 0.0, seed), folder


def validation_split(data: ImageDataset, record: DataRecord, where: str = "the run") -> ImageSplit:
    """The run's validation images (possibly none): the dataset's own validation split when the
    run recorded one (`record.val_folder`, checked against the count and labels' hash), else the
    part of train its `record.split` held out (checked by `SplitRecord.indices`)."""
    if record.val_folder is None:
        return data.train.subset(record.split.indices(data.train.labels, where)[1])
    expected = record.val_folder
    if data.val is None or (len(data.val), _labels_hash(data.val.labels)) != (
        expected.get("count"),
        expected.get("labels_sha256"),
    ):
        found = "no val/ split" if data.val is None else f"a val/ split of {len(data.val)} other images"
        raise CompresskitError(
            f"{where} validated on the {expected.get('count')} images of {record.dataset}/val/, but the "
            f"dataset found now has {found}; point --data-dir at the folder the run was trained on."
        )
    return data.val


def _labels_hash(labels: torch.Tensor) -> str:
    return hashlib.sha256(labels.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()


def main_first(load: Callable[[], T]) -> T:
    """`load()` on rank 0 first, then on the other ranks (a dataset rank 0 may download once)."""
    if distributed.is_main():
        value = load()
        distributed.barrier()
        return value
    distributed.barrier()
    return load()


def run_dataset(config: RunConfig, data_dir: str | None, *, download: bool, where: str) -> ImageDataset:
    """The dataset a run was made with (from `data_dir`, else the recorded folder), checked
    against the run's classes and channels."""
    record = config.data
    folder = data_dir or record.data_dir
    data = main_first(
        lambda: load_dataset(
            record.dataset, folder, download=download, labels=record.labels, image_size=record.image_size
        )
    )
    channels = len(record.mean)  # the model's input channels, whatever the model is
    if data.num_classes != len(record.classes) or data.channels != channels:
        raise CompresskitError(
            f"{where} was made on {len(record.classes)} classes and {channels} channels, but "
            f"{record.dataset} found now has {data.num_classes} and {data.channels}."
        )
    if config.model.architecture is not None:
        return data
    spec = ModelSpec.from_dict(config.model.spec)
    if data.image_size != spec.input_size:
        raise CompresskitError(
            f"{where} has a model for {spec.input_size}×{spec.input_size} images, but its config.json "
            f"records --image-size {record.image_size}; the run directory is inconsistent."
        )
    return data


def open_checkpoint(
    checkpoint: str | Path, data_dir: str | None, *, download: bool
) -> tuple[Checkpoint, RunConfig, ImageDataset]:
    """A checkpoint (a run directory means its ``checkpoint.pt``), the `RunConfig` of the run
    directory it sits in, and that run's dataset; clear errors when any is missing or does not
    fit the model."""
    ckpt = load_checkpoint(checkpoint)
    config = read_config(ckpt.path.parent)
    where = f"--checkpoint {ckpt.path}"
    data = run_dataset(config, data_dir, download=download, where=where)
    if ckpt.spec is not None and not ckpt.edits:
        outputs = ckpt.spec.num_classes
    else:  # any other model says how many outputs it has by running
        outputs = output_count(ckpt.build(), input_shape(config), torch.device("cpu"), where)
    if data.num_classes != outputs:
        raise CompresskitError(
            f"{where} has {outputs} outputs, but {data.name} has {data.num_classes} classes."
        )
    return ckpt, config, data


def write_history(path: Path, rows: list[dict]) -> None:
    """``history.csv`` from history rows (the standard columns first), written atomically."""
    extra = [c for c in (rows[0] if rows else {}) if c not in HISTORY_COLUMNS]
    table = pd.DataFrame(rows, columns=[*HISTORY_COLUMNS, *extra])
    write_text_atomic(path, table.to_csv(index=False))


class EpochRecorder:
    """`fit`'s ``on_epoch``: after every epoch, ``last.pt`` (model + `TrainingState`, atomic), then
    ``history.csv`` (rows before this fit, `before`, plus the fit's own, with `extra` columns), then
    ``curves.png``. `meta` goes into ``last.pt``; `model` is the model being trained; `spec` is a
    ConvNet's spec (format 1) or any model's architecture (format 2 with its edits)."""

    def __init__(
        self,
        folder: Path,
        spec: ModelSpec | Architecture,
        model: torch.nn.Module,
        meta: dict,
        title: str,
        *,
        before: list[dict] | None = None,
        extra: dict | None = None,
    ) -> None:
        self.folder, self.spec, self.model, self.meta, self.title = Path(folder), spec, model, meta, title
        self.before, self.extra = list(before or []), dict(extra or {})

    def combined(self, history: list[dict]) -> list[dict]:
        """The run's whole history: earlier rows, then `history` renumbered after them."""
        offset = int(self.before[-1]["epoch"]) if self.before else 0
        return [*self.before, *({**row, "epoch": row["epoch"] + offset, **self.extra} for row in history)]

    def __call__(self, state: TrainingState) -> None:
        save_run_checkpoint(
            self.folder / LAST_NAME,
            self.spec,
            self.model,
            {**self.meta, "epoch": state.epoch, "history_before": self.before},
            training=state.to_dict(),
        )
        rows = self.combined(state.history)
        write_history(self.folder / "history.csv", rows)
        plot_training_curves(pd.DataFrame(rows), self.folder / "curves.png", title=self.title)


@dataclass
class LastAndBest:
    """A finished fit's last and best epochs on the test set: the last epoch's accuracy (fraction)
    and a copy of its weights, the best epoch's mean loss (nats) and accuracy (fraction)."""

    last_acc: float
    last_state: dict[str, torch.Tensor]
    best_loss: float
    best_acc: float


def evaluate_last_and_best(
    model: torch.nn.Module,
    loader: Loader,
    device: torch.device,
    precision: Precision,
    best_state: dict[str, torch.Tensor] | None,
) -> LastAndBest:
    """Test `model` (the last epoch's weights) on `loader` in `precision`, keep a copy of its state,
    load `best_state` (None: no epoch ran, the same weights are tested again) and test again:
    `model` is left holding the best weights. On every rank (collectives under torchrun)."""
    _, last_acc = evaluate(model, loader, device, precision=precision)
    last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # not a view of `model`
    if best_state is not None:
        model.load_state_dict(best_state)
    best_loss, best_acc = evaluate(model, loader, device, precision=precision)
    return LastAndBest(last_acc, last_state, best_loss, best_acc)


def write_final_checkpoints(
    out: Path,
    saved: ModelSpec | Architecture,
    model: torch.nn.Module,
    last_state: dict[str, torch.Tensor],
    history: list[dict],
    *,
    best_meta: dict,
    last_meta: dict,
    title: str,
) -> None:
    """Rank 0's end of a finished run in `out`: ``history.csv``, ``checkpoint.pt`` (`model`, holding
    the best weights, with `best_meta`), ``last.pt`` rewritten with `last_state` and `last_meta`
    (keeping the training state of the ``last.pt`` it replaces), and ``curves.png`` when there is a
    history. `saved` is what the checkpoints are written from (a spec: format 1; an architecture:
    format 2 with `model`'s edits)."""
    write_history(out / "history.csv", history)
    # checkpoint.pt first: a stop before last.pt is rewritten leaves the epoch's last.pt (raw
    # weights, training state) that --resume continues from
    save_run_checkpoint(out / CHECKPOINT_NAME, saved, model, best_meta)
    last = load_checkpoint(out / LAST_NAME) if (out / LAST_NAME).is_file() else None
    save_run_checkpoint(
        out / LAST_NAME,
        saved,
        last_state,
        last_meta,
        training=None if last is None else last.training,
        edits_of=model,
    )
    if history:
        plot_training_curves(pd.DataFrame(history), out / "curves.png", title=title)


@contextmanager
def recording_state(folder: Path) -> Iterator[None]:
    """Run the body as the live run in `folder`: SIGTERM acts like Ctrl-C; an interrupt marks the
    run ``interrupted`` and raises `RunInterrupted`; any other error marks it ``failed``; success
    marks it ``finished``. Under torchrun only rank 0 records; every rank raises alike."""
    previous = _catch_sigterm()
    record = set_state if distributed.is_main() else _record_nothing
    try:
        yield
    except KeyboardInterrupt:
        record(folder, "interrupted", "stopped by a signal; the last finished epoch is in last.pt")
        raise RunInterrupted(
            f"interrupted; {folder} keeps every finished epoch — continue with --resume {folder}."
        ) from None
    except BaseException as exc:
        record(folder, "failed", f"{type(exc).__name__}: {exc}"[:500])
        raise
    else:
        record(folder, "finished")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _record_nothing(folder: Path, state: str, message: str = "") -> None:
    """A rank other than 0: the run directory is rank 0's to write."""


def _catch_sigterm() -> Callable | int | None:
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)
