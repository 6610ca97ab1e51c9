"""``prune``: channel pruning of a ConvNet by its spec (`compress.prune.ChannelPruner`), in one step
or several, each followed by its share of the fine-tuning; any other model goes to
`any_model.prune_any`. Pruning in several steps keeps ``steps/NN.pt`` (the model after step NN's
fine-tuning); a resumed run replays the pruner's steps from the source, loading those weights."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from compresskit import distributed
from compresskit.analysis.layers import block_csi
from compresskit.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from compresskit.compress.importance import NEEDS_DATA
from compresskit.compress.prune import ChannelPruner, PruneConfig, csi_allocation, rebuild
from compresskit.errors import CompresskitError
from compresskit.jobs.anymodel import is_convnet
from compresskit.jobs.common import recording_state
from compresskit.jobs.compress.any_model import prune_any
from compresskit.jobs.compress.base import (
    CompressionJob,
    JobOptions,
    convnet_run_config,
    create_run,
    job_device,
    job_inputs,
    on_main_exists,
    open_job,
    run_meta,
)
from compresskit.jobs.compress.finetune import fine_tune, finish
from compresskit.models import ConvNet, ModelSpec
from compresskit.progress import Progress
from compresskit.rundir import RunConfig, check_output
from compresskit.train import FitResult, TrainConfig, TrainingState, capture_rng, restore_rng

STEPS_DIR = "steps"


def prune_run(
    checkpoint: str | Path,
    out: str | Path,
    cfg: PruneConfig,
    finetune: TrainConfig,
    *,
    calibration_samples: int = 1000,
    options: JobOptions | None = None,
    progress: Progress | None = None,
) -> dict:
    """Prune the model of `checkpoint` by `cfg`, fine-tune it with `finetune` (``epochs`` is the total
    fine-tuning budget, split evenly over ``cfg.steps`` steps, the remainder going to the last),
    into the new run directory `out` (plus ``widths.csv``). Returns the summary with the report
    table."""
    progress = progress or Progress(enabled=False)
    out = Path(out)
    options = options or JobOptions()
    cfg.validate()
    _check_calibration(cfg, calibration_samples)
    with distributed.session(job_device(finetune)):
        return _prune_run(checkpoint, out, cfg, finetune, calibration_samples, options, progress)


def _prune_run(
    checkpoint: str | Path,
    out: Path,
    cfg: PruneConfig,
    finetune: TrainConfig,
    calibration_samples: int,
    options: JobOptions,
    progress: Progress,
) -> dict:
    check_output(out, "prune", overwrite=options.overwrite, inputs=job_inputs(options, checkpoint))
    job = open_job(checkpoint, finetune, options)
    if not is_convnet(job.source):
        return prune_any(job, out, cfg, calibration_samples, checkpoint, progress)
    pruner, layer_ratios = pruner_of(job, cfg, calibration_samples, progress)
    widths = pruner.step()
    progress.log(f"pruning step 1/{cfg.steps}: conv widths {widths}")
    allocation = cfg.allocate if cfg.layer_ratios is None else "given per layer"
    step = f"prune {cfg.importance} {cfg.ratio:g} ({cfg.scope}, allocate {allocation}, steps {cfg.steps})"
    compressed, compressed_spec = rebuild(pruner.model, job.spec)
    compression = {
        "prune": cfg.to_dict(),
        "layer_ratios": layer_ratios,
        "calibration_samples": calibration_samples,
    }
    config = convnet_run_config(job, "prune", compressed_spec, compressed, compression, step)
    create_run(out, "prune", config, options, checkpoint)
    with recording_state(out):
        return prune_steps(out, config, job, cfg, pruner, progress, resume=None)


def _check_calibration(cfg: PruneConfig, calibration_samples: int) -> None:
    if calibration_samples < 0:
        raise CompresskitError(f"--calibration-samples {calibration_samples} must be 0 or more.")
    needs_data = cfg.importance in NEEDS_DATA or cfg.allocate == "csi"
    if needs_data and calibration_samples == 0:
        what = f"--importance {cfg.importance}" if cfg.allocate != "csi" else "--allocate csi"
        raise CompresskitError(f"{what} needs calibration data, but --calibration-samples is 0.")


def pruner_of(
    job: CompressionJob, cfg: PruneConfig, calibration_samples: int, progress: Progress
) -> tuple[ChannelPruner, list[float] | None]:
    """A pruner over a fresh copy of the source model (nothing pruned yet) and the per-layer
    ratios it uses (None unless ``allocate == "csi"`` or ``cfg.layer_ratios`` is given)."""
    batches = job.calibration(calibration_samples) if calibration_samples else None
    layer_ratios = None
    if cfg.layer_ratios is not None:
        layer_ratios = [float(r) for r in cfg.layer_ratios]
        if len(layer_ratios) != len(job.spec.conv_widths):
            raise CompresskitError(
                f"--layer-ratios has {len(layer_ratios)} ratios, but {job.source.path} has "
                f"{len(job.spec.conv_widths)} conv layers: give one per layer."
            )
    if cfg.allocate == "csi":
        assert batches is not None
        csi, input_csi = block_csi(job.model, batches)
        layer_ratios = csi_allocation(
            job.spec, csi, input_csi, cfg.ratio, max_layer_ratio=cfg.max_layer_ratio, round_to=cfg.round_to
        )
        progress.log("per-layer ratios from CSI gains: " + ", ".join(f"{r:.2f}" for r in layer_ratios))
    work = job.source.build(job.device)
    example = torch.zeros(
        1, job.spec.in_channels, job.spec.input_size, job.spec.input_size, device=job.device
    )
    return ChannelPruner(work, cfg, example, batches, layer_ratios=layer_ratios), layer_ratios


def prune_steps(
    out: Path,
    config: RunConfig,
    job: CompressionJob,
    cfg: PruneConfig,
    pruner: ChannelPruner,
    progress: Progress,
    resume: Checkpoint | None,
) -> dict:
    """Fine-tune after each pruning step (the pruner has taken step 1 already), saving
    ``steps/NN.pt`` after each but the last; with `resume` (the run's ``last.pt``), steps that had
    finished are replayed and their saved weights loaded instead of fine-tuning again."""
    work, spec = pruner.model, job.spec
    epochs = _epoch_split(job.finetune.epochs, cfg.steps)
    history: list[dict] = []
    compressed: tuple[ConvNet, ModelSpec] | None = None
    result: FitResult | None = None
    for step in range(1, cfg.steps + 1):
        if step > 1:
            widths = pruner.step()
            progress.log(f"pruning step {step}/{cfg.steps}: conv widths {widths}")
        saved = out / STEPS_DIR / f"{step:02d}.pt"
        if step == cfg.steps:
            compressed = rebuild(work, spec)
            if not on_main_exists(out / "pruned.pt"):
                acc = job.accuracy(compressed[0])
                if distributed.is_main():
                    save_checkpoint(
                        out / "pruned.pt", compressed[1], compressed[0], run_meta(job, config, test_acc=acc)
                    )
                    _widths_table(spec, compressed[1]).to_csv(out / "widths.csv", index=False)
                distributed.barrier()
        elif on_main_exists(saved):  # finished before the stop: take its weights, go on
            done = load_checkpoint(saved)
            _same_widths(done.spec, rebuild(work, spec)[1], saved)
            work.load_state_dict(done.state_dict)
            history = done.meta["history"]
            restore_rng(done.training["rng"], job.train)  # the next step's batches go on from here
            continue
        state = None
        if resume is not None and int(resume.meta.get("step", 1)) == step:
            _same_widths(resume.spec, rebuild(work, spec)[1], resume.path)
            work.load_state_dict(resume.state_dict)
            state = TrainingState.from_dict(resume.training)
        result, rows = fine_tune(
            out,
            config,
            job,
            work,
            rebuild(work, spec)[1],
            epochs[step - 1],
            progress,
            before=history,
            step=step,
            resume=state,
        )
        history = rows
        if step < cfg.steps and distributed.is_main():
            save_checkpoint(saved, rebuild(work, spec)[1], work, {"history": history},
                            training={"rng": capture_rng(job.train)})  # fmt: skip
    assert compressed is not None
    final, _ = rebuild(work, spec)
    return finish(
        out,
        config,
        job,
        compressed,
        final,
        history,
        result,
        progress,
        notes=[f"conv widths {spec.conv_widths} → {compressed[1].conv_widths}"],
    )


def _epoch_split(total: int, steps: int) -> list[int]:
    """`total` fine-tuning epochs split evenly over `steps`, the remainder going to the last."""
    split = [total // steps] * steps
    split[-1] += total - sum(split)
    return split


def _same_widths(saved: ModelSpec, replayed: ModelSpec, path: Path | None) -> None:
    if saved.conv_widths != replayed.conv_widths:
        raise CompresskitError(
            f"{path} holds conv widths {saved.conv_widths}, but replaying the pruner gives "
            f"{replayed.conv_widths}; this run cannot be resumed on this machine."
        )


def _widths_table(spec: ModelSpec, pruned: ModelSpec) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "layer": [f"block{i}" for i in range(1, len(spec.conv_widths) + 1)],
            "original": spec.conv_widths,
            "pruned": pruned.conv_widths,
        }
    )
    table["kept"] = table["pruned"] / table["original"]
    return table
