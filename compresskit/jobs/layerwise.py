"""The layer-wise side of the training job (``train --layerwise``): its flags checked, its stages
run into the run directory (`compresskit.layerwise` trains them), and a stopped run continued
inside the stage it stopped in.

After each finished stage N the run keeps ``stages/NN/`` (`stage_path`: ``stage.pt``, the stage's
model with its history, best weights and the shared loader's random state, and ``history.csv``)
and rewrites ``stages.csv``; ``stages.png`` comes at the end. Every epoch's ``last.pt`` records
the stage it belongs to, so a resumed run goes on inside that stage or starts the next one where
the stopped run would have.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from compresskit.analysis.layers import block_csi
from compresskit.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from compresskit.data import Augmentation, ImageDataset, Loader, balanced_loader
from compresskit.errors import CompresskitError
from compresskit.jobs.common import EpochRecorder, data_loaders
from compresskit.layerwise import LayerwiseConfig, LayerwiseResume, StageResult, stage_row, train_layerwise
from compresskit.live import TENSORBOARD_DIR, TensorBoardLog
from compresskit.models import ConvNet, ModelSpec
from compresskit.plots import plot_stages
from compresskit.progress import Progress
from compresskit.rundir import RunConfig
from compresskit.train import (
    HISTORY_COLUMNS,
    FitResult,
    TrainConfig,
    TrainingState,
    capture_rng,
    evaluate,
    resolve_precision,
    restore_rng,
)

STAGES_DIR = "stages"
STAGE_FILE = "stage.pt"


def stage_path(out: Path, stage: int, name: str = STAGE_FILE) -> Path:
    """A file in the folder of stage `stage` (1-based) of run `out`, ``out/stages/NN/``: the stage's
    checkpoint (`STAGE_FILE`), or `name` (``history.csv``)."""
    return out / STAGES_DIR / f"{stage:02d}" / name


def check_layerwise(layerwise: LayerwiseConfig, spec: ModelSpec, cfg: TrainConfig, *, init: str) -> None:
    """Refuse the flags a layer-wise run of the model `spec` cannot take (`init`: ``--init``)."""
    layerwise.epochs_for(len(spec.conv_widths))
    if layerwise.aug_switch is not None:
        Augmentation.parse(layerwise.aug_switch[1])
    if init != "kaiming":
        raise CompresskitError("--init torch is for end-to-end training; --layerwise stages use Kaiming.")
    if cfg.track_test:
        raise CompresskitError(
            "--track-test is for end-to-end training; --layerwise reports test accuracy after each stage "
            "in stages.csv."
        )
    if cfg.ema is not None:
        raise CompresskitError(
            "--ema averages an end-to-end run's weights; --layerwise stages do not support it."
        )


def layerwise_config(record: dict) -> LayerwiseConfig:
    """The `LayerwiseConfig` a run recorded (``config.json``'s ``layerwise``; JSON made its
    ``aug_switch`` a list)."""
    switch = record.get("aug_switch")
    aug_switch = None if switch is None else (int(switch[0]), str(switch[1]))
    return LayerwiseConfig(**{**record, "aug_switch": aug_switch})


def fit_layerwise(
    out: Path,
    spec: ModelSpec,
    config: RunConfig,
    train_cfg: TrainConfig,
    data: ImageDataset,
    device: torch.device,
    meta: dict,
    title: str,
    loaders: tuple[Loader, Loader | None, Loader],
    progress: Progress,
    resume: Checkpoint | None,
) -> tuple[ConvNet, FitResult]:
    """Run the layer-wise stages of `config` into `out` (resuming inside the stage ``last.pt`` was
    saved in); return the final model (last-epoch weights) and a `FitResult` spanning all stages.
    `loaders`: the run's (train, validation, test) loaders; `meta` goes into every checkpoint."""
    cfg = layerwise_config(config.layerwise or {})
    train_loader, val_loader, test_loader = loaders
    rows, histories = _finished_stages(out)
    csi_batches = None
    if cfg.analyze_stages:
        fitted, _ = config.data.split.indices(data.train.labels, str(out))
        stats = {"mean": tuple(config.data.mean), "std": tuple(config.data.std), "device": device}
        csi_train = balanced_loader(data.train, 1000, train_cfg.seed, batch_size=256, among=fitted, **stats)
        csi_test = balanced_loader(data.test, 1000, train_cfg.seed, batch_size=256, **stats)
        csi_batches = {"train": list(csi_train), "test": list(csi_test)}

    def stage_loaders(stage_number: int) -> tuple:
        switch = cfg.aug_switch
        if switch is None or stage_number < switch[0]:
            return train_loader, val_loader
        switched = data_loaders(
            data,
            config.data,
            batch_size=train_cfg.batch_size,
            seed=train_cfg.seed + stage_number,
            device=device,
            augment=Augmentation.parse(switch[1]),
            where=str(out),
        )
        return switched[0], switched[1]

    def earlier_rows() -> list[dict]:
        return [row for table in histories for row in table.to_dict("records")]

    def on_epoch(stage: int, model: ConvNet, state: TrainingState) -> None:
        before = earlier_rows()
        recorder = EpochRecorder(
            out, model.spec, model, {**meta, "stage": stage}, title, before=before, extra={"stage": stage}
        )
        recorder(state)
        if board is not None:
            board.epoch(state, offset=len(before))

    board = TensorBoardLog(out / TENSORBOARD_DIR) if config.tensorboard else None

    def after_stage(done: StageResult) -> None:
        path = stage_path(out, done.stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame(done.fit.history, columns=list(HISTORY_COLUMNS))
        table.to_csv(stage_path(out, done.stage, "history.csv"), index=False)
        histories.append(table.assign(stage=done.stage))
        fp32 = resolve_precision("fp32", device)  # a quoted test accuracy: fp32, as the run's own
        row = {
            **stage_row(done),
            "test_acc": evaluate(done.model, test_loader, device, precision=fp32)[1],
        }
        if csi_batches is not None:
            for split, batches in csi_batches.items():
                row[f"csi_{split}"] = block_csi(done.model, batches)[0][-1]
        rows.append(row)
        save_checkpoint(
            path,
            done.spec,
            done.model,
            {**meta, "row": row},
            training={
                "last_state": done.last_state,
                "best_state": done.fit.best_state,
                "best_epoch": done.fit.best_epoch,
                "best_val_acc": done.fit.best_val_acc,
                "stop_reason": done.fit.stop_reason,
                "seconds": done.fit.seconds,
                "history": done.fit.history,
                # where the shared training loader's shuffling stands, for a stop between stages
                "rng": capture_rng(train_loader),
            },
        )
        pd.DataFrame(rows).to_csv(out / "stages.csv", index=False)
        progress.log(f"stage {done.stage}: best val {row['best_val_acc']}, test {row['test_acc']:.4f}")

    start = _layerwise_resume(out, resume, device, len(rows))
    switch = cfg.aug_switch
    if start is not None and start.fit is None and rows and (switch is None or start.stage < switch[0]):
        # a fresh stage after a stop between stages: the shared loader goes on where it was
        finished = load_checkpoint(stage_path(out, len(rows)))
        restore_rng(finished.training["rng"], train_loader)
    results = train_layerwise(
        spec,
        cfg,
        train_cfg,
        stage_loaders,
        device=device,
        progress=progress,
        after_stage=after_stage,
        on_epoch=on_epoch,
        resume=start,
    )
    table = pd.DataFrame(rows)
    table.to_csv(out / "stages.csv", index=False)
    plot_stages(
        [h.drop(columns="stage") for h in histories],
        table,
        out / "stages.png",
        title=f"layer-wise {spec.name}",
    )
    history = earlier_rows_combined(histories)
    if results:
        last_model, last_fit, last_state = results[-1].model, results[-1].fit, results[-1].last_state
    else:  # every stage had finished before the stop
        last_ckpt = load_checkpoint(stage_path(out, len(rows)))
        last_model, last_state = last_ckpt.build(device), last_ckpt.training["last_state"]
        last_fit = _stage_fit(last_ckpt)
    last_len = len(last_fit.history)
    combined = FitResult(
        history,
        last_fit.best_state,
        len(history) - last_len + last_fit.best_epoch,
        last_fit.best_val_acc,
        last_fit.stop_reason,
        sum(float(r["seconds"]) for r in rows),
    )
    last_model.load_state_dict(last_state)
    return last_model, combined


def earlier_rows_combined(histories: list[pd.DataFrame]) -> list[dict]:
    """Stage histories as one history, epochs numbered across stages."""
    history, offset = [], 0
    for table in histories:
        history += [{**row, "epoch": int(row["epoch"]) + offset} for row in table.to_dict("records")]
        offset += len(table)
    return history


def _finished_stages(out: Path) -> tuple[list[dict], list[pd.DataFrame]]:
    """The stages.csv rows and stage histories of the stages a stopped run had finished."""
    rows, histories = [], []
    stage = 1
    while stage_path(out, stage).is_file():
        ckpt = load_checkpoint(stage_path(out, stage))
        rows.append(ckpt.meta["row"])
        histories.append(
            pd.DataFrame(ckpt.training["history"], columns=list(HISTORY_COLUMNS)).assign(stage=stage)
        )
        stage += 1
    return rows, histories


def _stage_fit(ckpt: Checkpoint) -> FitResult:
    t = ckpt.training
    return FitResult(
        t["history"], t["best_state"], t["best_epoch"], t["best_val_acc"], t["stop_reason"], t["seconds"]
    )


def _layerwise_resume(
    out: Path, resume: Checkpoint | None, device: torch.device, finished: int
) -> LayerwiseResume | None:
    """Where to continue: after the `finished` stages, inside the stage ``last.pt`` holds if it is
    the next one."""
    if resume is None:
        return None
    previous = None
    if finished:
        previous = load_checkpoint(stage_path(out, finished)).build(device)
    stage = finished + 1
    if int(resume.meta.get("stage", 0)) == stage:
        return LayerwiseResume(stage, previous, resume.state_dict, TrainingState.from_dict(resume.training))
    return LayerwiseResume(stage, previous)
