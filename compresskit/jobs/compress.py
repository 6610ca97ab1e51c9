"""The compression jobs: `prune_run`, `lowrank_run` and `depth_run` each make a live run directory
from a trained (or already compressed) run; `resume_compress_run` continues a stopped one.

A compressed run directory holds, like a training run, ``run.json``, ``config.json`` (a
`rundir.RunConfig` whose data record is the source run's own, so fine-tuning validates on exactly
the images the source held out), and after every fine-tuning epoch ``last.pt``, ``history.csv``
and ``curves.png``. It also holds ``<label>.pt`` (the model right after compression:
``pruned.pt``, ``factorized.pt`` or ``truncated.pt``), the method's table (``widths.csv``,
``ranks.csv`` or ``depth.csv``), and once finished ``checkpoint.pt`` (best fine-tuned epoch by
validation accuracy), ``report.csv``/``report.md`` (original / compressed / fine-tuned) and
``summary.json``. Pruning in several steps keeps ``steps/NN.pt`` (the model after step NN's
fine-tuning); a resumed run replays the pruner's steps from the source, loading those weights,
so it continues exactly where it stopped.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from compresskit import distributed
from compresskit.analysis.layers import block_csi
from compresskit.architecture import Architecture
from compresskit.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from compresskit.compress.depth import choose_depth, truncate
from compresskit.compress.distill import DEFAULT_TEMPERATURE, DEFAULT_WEIGHT, check_distill
from compresskit.compress.lowrank import LowRankConfig, factorize
from compresskit.compress.prune import ChannelPruner, PruneConfig, as_batches, csi_allocation, rebuild
from compresskit.data import ImageDataset, ImageSplit, Loader, balanced_subset
from compresskit.errors import CompresskitError
from compresskit.jobs.anymodel import checkpoint_input_shape, is_convnet, model_name
from compresskit.jobs.common import (
    LAST_NAME,
    EpochRecorder,
    data_loaders,
    recording_state,
    run_dataset,
    write_history,
)
from compresskit.jobs.compress_any import lowrank_any, prune_any, resume_any
from compresskit.jobs.report import measure_rows
from compresskit.jobs.teacher import Teacher, open_teacher, recorded_options
from compresskit.latency import describe as describe_latency
from compresskit.models import ConvNet, ModelSpec, count_parameters
from compresskit.plots import plot_training_curves
from compresskit.progress import Progress
from compresskit.report import comparison_table, write_report
from compresskit.rundir import (
    ModelRecord,
    RunConfig,
    check_output,
    check_resumable,
    create_output,
    read_config,
    set_state,
    write_config,
    write_json,
)
from compresskit.train import (
    FitResult,
    Precision,
    TrainConfig,
    TrainingState,
    capture_rng,
    evaluate,
    fit,
    resolve_device,
    resolve_precision,
    restore_rng,
)

LABELS = {"prune": "pruned", "lowrank": "factorized", "depth": "truncated"}


@dataclass
class JobOptions:
    """Settings every compression job shares: where the data is, whether an earlier output of the
    same command may be replaced, how latency is measured (seconds of timing, CPU threads), and
    whether fine-tuning distils from a teacher (`compress.distill`; `teacher` None: the source)."""

    data_dir: str | None = None
    download: bool = True
    bench_seconds: float = 1.0
    threads: int | None = None
    overwrite: bool = False
    distill: bool = False
    teacher: str | None = None
    distill_temperature: float = DEFAULT_TEMPERATURE
    distill_weight: float = DEFAULT_WEIGHT

    def validate(self) -> None:
        if self.bench_seconds <= 0:
            raise CompresskitError(f"--bench-seconds {self.bench_seconds} must be positive.")
        if self.threads is not None and self.threads < 1:
            raise CompresskitError(f"--threads {self.threads} must be a positive integer.")
        check_distill(self.distill_temperature, self.distill_weight)
        if self.teacher is not None and not self.distill:
            raise CompresskitError(f"--teacher {self.teacher} names a model to distill from; add --distill.")


@dataclass
class CompressionJob:
    """What every compression command shares: the source checkpoint, its run's configuration and
    model, loaders rebuilt from the source run's own split (checked against its hash) and
    augmentation, the fine-tuning settings and the measuring options."""

    source: Checkpoint
    source_config: RunConfig
    model: ConvNet
    data: ImageDataset
    train: Loader
    val: Loader | None
    test: Loader
    device: torch.device
    finetune: TrainConfig
    original_acc: float
    options: JobOptions
    teacher: Teacher | None = None  # with --distill

    @property
    def spec(self) -> ModelSpec:
        return self.source.spec

    def calibration(self, samples: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A class-balanced subset of the training images the source was fitted on, unaugmented."""
        fitted, _ = self.source_config.data.split.indices(self.data.train.labels, str(self.source.path))
        return self._balanced_batches(self.data.train, samples, among=fitted)

    def test_batches(self, samples: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A class-balanced subset of the test images, unaugmented."""
        return self._balanced_batches(self.data.test, samples)

    def _balanced_batches(
        self, split: ImageSplit, samples: int, among: torch.Tensor | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pick = balanced_subset(split.labels, samples, self.finetune.seed, among=among)
        record = self.source_config.data
        loader = Loader(
            split.subset(pick), 256, mean=tuple(record.mean), std=tuple(record.std), device=self.device
        )
        return as_batches(loader)

    @property
    def precision(self) -> Precision:
        return resolve_precision(self.finetune.precision, self.device)

    @property
    def test_precision(self) -> Precision:
        """Recorded test accuracies are fp32 whatever fine-tuning used, so they reproduce on any
        machine (bf16 autocast where a CPU has it moved them by a few hundredths of a percent)."""
        return resolve_precision("fp32", self.device)

    def accuracy(self, model: ConvNet) -> float:
        return evaluate(model, self.test, self.device, precision=self.test_precision)[1]


def open_job(checkpoint: str | Path, finetune: TrainConfig, options: JobOptions) -> CompressionJob:
    """Validate the shared flags, load the source checkpoint, its run's config and data; nothing
    is written."""
    if finetune.epochs < 0:
        raise CompresskitError(f"--finetune-epochs {finetune.epochs} must be 0 or more.")
    options.validate()
    source = load_checkpoint(checkpoint)
    source_config = read_config(source.path.parent)
    # the other settings are checked even when no epoch runs (0 epochs: compress only)
    at_least_one = TrainConfig(**{**finetune.to_dict(), "epochs": max(finetune.epochs, 1)})
    at_least_one.validate(has_validation=source_config.data.split.val_count > 0)
    device = resolve_device(finetune.device)
    distributed.check_batch_size(finetune.batch_size)
    distributed.check_sync_bn(finetune.sync_bn, device)
    where = f"--checkpoint {source.path}"
    data = run_dataset(source_config, options.data_dir, download=options.download, where=where)
    train, val, test = data_loaders(
        data,
        source_config.data,
        batch_size=finetune.batch_size,
        seed=finetune.seed,
        device=device,
        where=where,
    )
    model = source.build(device)
    job = CompressionJob(source, source_config, model, data, train, val, test, device, finetune, 0.0, options)
    if options.distill:
        job.teacher = open_teacher(
            options.teacher, temperature=options.distill_temperature, weight=options.distill_weight,
            source=source, source_config=source_config, device=device,
        )  # fmt: skip
    job.original_acc = job.accuracy(model)
    return job


def _inputs(options: JobOptions, checkpoint: str | Path) -> list[Path]:
    """What a compression job reads, so that its --out may never be or hold any of it."""
    inputs = [resolve_checkpoint(checkpoint)]
    if options.data_dir is not None:
        inputs.append(Path(options.data_dir))
    if options.distill and options.teacher is not None:
        inputs.append(Path(options.teacher))
    return inputs


def last_and_best(
    job: CompressionJob, final: nn.Module, best: FitResult | None
) -> tuple[float, dict[str, torch.Tensor], float]:
    """The fine-tuned model's last epoch: its test accuracy and a copy of its weights; then `final`
    holds the best epoch's weights (when there was a best) and its test accuracy is the third value.
    Evaluated on every rank (collectives under torchrun)."""
    last_acc = job.accuracy(final)
    last_state = {k: v.detach().clone() for k, v in final.state_dict().items()}
    if best is not None:
        final.load_state_dict(best.best_state)
    return last_acc, last_state, job.accuracy(final)


def factorization_outcome(plans: list) -> tuple[pd.DataFrame, list[str], str]:
    """The low-rank `plans` as a table (``ranks.csv``), the layers factorized, and the others with
    why ("none" if every one was); refused when nothing gets factorized."""
    plan_table = pd.DataFrame([asdict(plan) for plan in plans])
    done = plan_table[plan_table["action"] == "factorized"]["layer"].tolist()
    if not done:
        raise CompresskitError(
            "no layer would get cheaper at this rank, so nothing was factorized; "
            "lower --energy or --rank-ratio."
        )
    left = plan_table[plan_table["action"] != "factorized"]
    return plan_table, done, ", ".join(f"{r.layer} ({r.action})" for r in left.itertuples()) or "none"


def _run_config(
    job: CompressionJob, command: str, spec: ModelSpec, model: ConvNet, compression: dict, step: str
) -> RunConfig:
    source_model = job.source_config.model
    record = ModelRecord(
        spec.name,
        source_model.width,
        spec.head,
        spec.dropout,
        spec.global_pool,
        spec.to_dict(),
        count_parameters(model),
    )
    return compressed_run_config(job, command, record, compression, step)


def compressed_run_config(
    job: CompressionJob, command: str, record: ModelRecord, compression: dict, step: str
) -> RunConfig:
    """A compressed run's ``config.json``: its model `record`, the source's data record and
    lineage, the fine-tuning settings and the `compression` ones (with the distillation choice)."""
    return RunConfig(
        command=command,
        model=record,
        data=job.source_config.data,
        train=job.finetune.to_dict(),
        compression={
            "method": command,
            "step": step,
            **compression,
            "distill": None if job.teacher is None else job.teacher.record(),
        },
        source=str(job.source.path),
        lineage=[*job.source_config.lineage, step],
        device=str(job.device),
        precision=job.precision.describe(),
        threads=torch.get_num_threads(),
        versions=job.source_config.versions,
        world_size=distributed.world_size(),
    )


def _epoch_split(total: int, steps: int) -> list[int]:
    """`total` fine-tuning epochs split evenly over `steps`, the remainder going to the last."""
    split = [total // steps] * steps
    split[-1] += total - sum(split)
    return split


# --------------------------------------------------------------------------- the three methods


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
    with distributed.session(_device(finetune)):
        return _prune_run(checkpoint, out, cfg, finetune, calibration_samples, options, progress)


def _device(finetune: TrainConfig) -> torch.device:
    """Where `finetune` computes, after refusing what torchrun's processes cannot do."""
    device = resolve_device(finetune.device)
    distributed.check_batch_size(finetune.batch_size)
    distributed.check_sync_bn(finetune.sync_bn, device)
    return device


def _create(out: Path, command: str, config: RunConfig, options: JobOptions, checkpoint: str | Path) -> None:
    """Rank 0 makes `out` with its marker and ``config.json`` once every rank has checked it."""
    distributed.barrier()
    if distributed.is_main():
        create_output(out, command, overwrite=options.overwrite, inputs=_inputs(options, checkpoint))
        write_config(out, config)


def _prune_run(
    checkpoint: str | Path,
    out: Path,
    cfg: PruneConfig,
    finetune: TrainConfig,
    calibration_samples: int,
    options: JobOptions,
    progress: Progress,
) -> dict:
    check_output(out, "prune", overwrite=options.overwrite, inputs=_inputs(options, checkpoint))
    job = open_job(checkpoint, finetune, options)
    if not is_convnet(job.source):
        return prune_any(job, out, cfg, calibration_samples, checkpoint, progress)
    pruner, layer_ratios = _pruner(job, cfg, calibration_samples, progress)
    widths = pruner.step()
    progress.log(f"pruning step 1/{cfg.steps}: conv widths {widths}")
    step = f"prune {cfg.importance} {cfg.ratio:g} ({cfg.scope}, allocate {cfg.allocate}, steps {cfg.steps})"
    compressed, compressed_spec = rebuild(pruner.model, job.spec)
    compression = {
        "prune": cfg.to_dict(),
        "layer_ratios": layer_ratios,
        "calibration_samples": calibration_samples,
    }
    config = _run_config(job, "prune", compressed_spec, compressed, compression, step)
    _create(out, "prune", config, options, checkpoint)
    with recording_state(out):
        return _prune_steps(out, config, job, cfg, pruner, progress, resume=None)


def _check_calibration(cfg: PruneConfig, calibration_samples: int) -> None:
    if calibration_samples < 0:
        raise CompresskitError(f"--calibration-samples {calibration_samples} must be 0 or more.")
    needs_data = cfg.importance in ("taylor", "separation") or cfg.allocate == "csi"
    if needs_data and calibration_samples == 0:
        what = f"--importance {cfg.importance}" if cfg.allocate != "csi" else "--allocate csi"
        raise CompresskitError(f"{what} needs calibration data, but --calibration-samples is 0.")


def _pruner(
    job: CompressionJob, cfg: PruneConfig, calibration_samples: int, progress: Progress
) -> tuple[ChannelPruner, list[float] | None]:
    """A pruner over a fresh copy of the source model (nothing pruned yet) and the per-layer
    ratios it uses (None unless ``allocate == "csi"``)."""
    batches = job.calibration(calibration_samples) if calibration_samples else None
    layer_ratios = None
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


STEPS_DIR = "steps"


def _prune_steps(
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
            if not _on_main_exists(out / "pruned.pt"):
                acc = job.accuracy(compressed[0])
                if distributed.is_main():
                    save_checkpoint(
                        out / "pruned.pt", compressed[1], compressed[0], _meta(job, config, test_acc=acc)
                    )
                    _widths_table(spec, compressed[1]).to_csv(out / "widths.csv", index=False)
                distributed.barrier()
        elif _on_main_exists(saved):  # finished before the stop: take its weights, go on
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
        result, rows = _fine_tune(
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
    return _finish(
        out,
        config,
        job,
        "pruned",
        compressed,
        final,
        history,
        result,
        progress,
        notes=[f"conv widths {spec.conv_widths} → {compressed[1].conv_widths}"],
    )


def _on_main_exists(path: Path) -> bool:
    """Whether `path` exists as rank 0 sees it, on every rank (the others then read it: the run
    directory must be on a filesystem every rank sees)."""
    return bool(distributed.broadcast_object(path.is_file() if distributed.is_main() else None))


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


def lowrank_run(
    checkpoint: str | Path,
    out: str | Path,
    cfg: LowRankConfig,
    finetune: TrainConfig,
    *,
    options: JobOptions | None = None,
    progress: Progress | None = None,
) -> dict:
    """Factorize the chosen layers of `checkpoint` by truncated SVD (`lowrank.factorize`), fine-tune,
    into the new run directory `out` (plus ``ranks.csv``: every layer's full rank, chosen rank,
    kept energy, MACs before/after, and whether it was factorized)."""
    progress = progress or Progress(enabled=False)
    out = Path(out)
    options = options or JobOptions()
    cfg.validate()
    with distributed.session(_device(finetune)):
        return _lowrank_run(checkpoint, out, cfg, finetune, options, progress)


def _lowrank_run(
    checkpoint: str | Path,
    out: Path,
    cfg: LowRankConfig,
    finetune: TrainConfig,
    options: JobOptions,
    progress: Progress,
) -> dict:
    check_output(out, "lowrank", overwrite=options.overwrite, inputs=_inputs(options, checkpoint))
    job = open_job(checkpoint, finetune, options)
    if not is_convnet(job.source):
        return lowrank_any(job, out, cfg, checkpoint, progress)
    model, spec, plans = factorize(job.model, job.spec, cfg)
    plan_table, done, left_alone = factorization_outcome(plans)
    progress.log(f"factorized {', '.join(done)}; left alone: {left_alone}")
    how = f"energy {cfg.energy:g}" if cfg.energy is not None else f"rank ratio {cfg.rank_ratio:g}"
    config = _run_config(
        job,
        "lowrank",
        spec,
        model,
        {"lowrank": cfg.to_dict(), "factorized": done, "left_alone": left_alone},
        f"lowrank {how} ({cfg.layers})",
    )
    _create(out, "lowrank", config, options, checkpoint)
    with recording_state(out):
        if distributed.is_main():
            plan_table.to_csv(out / "ranks.csv", index=False)
        return _compressed_fine_tune(out, config, job, (model, spec), progress, resume=None)


def depth_run(
    checkpoint: str | Path,
    out: str | Path,
    finetune: TrainConfig,
    *,
    min_gain: float | None = 0.01,
    keep_blocks: int | None = None,
    samples: int = 1000,
    options: JobOptions | None = None,
    progress: Progress | None = None,
) -> dict:
    """Cut `checkpoint` after the last conv block whose test-CSI gain exceeds `min_gain` (or keep
    `keep_blocks` blocks), attach a fresh head, fine-tune, into the new run directory `out` (plus
    ``depth.csv``: each block's test CSI, gain, and whether it was kept)."""
    progress = progress or Progress(enabled=False)
    out = Path(out)
    options = options or JobOptions()
    if samples <= 0:
        raise CompresskitError(f"--samples {samples} must be a positive integer.")
    if keep_blocks is not None and keep_blocks < 1:
        raise CompresskitError(f"--keep-blocks {keep_blocks} would remove every block; keep at least 1.")
    with distributed.session(_device(finetune)):
        return _depth_run(checkpoint, out, finetune, min_gain, keep_blocks, samples, options, progress)


def _depth_run(
    checkpoint: str | Path,
    out: Path,
    finetune: TrainConfig,
    min_gain: float | None,
    keep_blocks: int | None,
    samples: int,
    options: JobOptions,
    progress: Progress,
) -> dict:
    check_output(out, "depth", overwrite=options.overwrite, inputs=_inputs(options, checkpoint))
    source = load_checkpoint(checkpoint)
    if not is_convnet(source):
        raise CompresskitError(
            f"depth cuts the conv blocks of a compresskit ConvNet, and {source.path} holds "
            f"{model_name(source)}; use prune or lowrank on it instead."
        )
    job = open_job(checkpoint, finetune, options)
    csi, input_csi = block_csi(job.model, job.test_batches(samples))
    keep, gains = choose_depth(
        csi, input_csi, min_gain=None if keep_blocks else min_gain, keep_blocks=keep_blocks
    )
    if keep == len(csi) and keep_blocks is None:
        raise CompresskitError(
            f"every block raises test CSI by more than --min-gain {min_gain}; nothing to remove "
            "(raise --min-gain or give --keep-blocks)."
        )
    table = pd.DataFrame(
        {
            "block": [f"block{i}" for i in range(1, len(csi) + 1)],
            "csi_test": csi,
            "gain": gains,
            "kept": [i < keep for i in range(len(csi))],
        }
    )
    removed = ", ".join(
        f"{r.block} (test CSI {r.csi_test:.3f}, gain {r.gain:+.3f})"
        for r in table[~table["kept"]].itertuples()
    )
    progress.log(f"keeping {keep} blocks; removing {removed}")
    model, spec = truncate(job.model, job.spec, keep, seed=finetune.seed)
    rule = f"keep {keep_blocks}" if keep_blocks else f"min gain {min_gain:g}"
    config = _run_config(
        job,
        "depth",
        spec,
        model,
        {
            "depth": {"min_gain": min_gain, "keep_blocks": keep_blocks, "samples": samples, "kept": keep},
            "removed": removed,
        },
        f"depth {keep} blocks ({rule})",
    )
    _create(out, "depth", config, options, checkpoint)
    with recording_state(out):
        if distributed.is_main():
            table.to_csv(out / "depth.csv", index=False)
        result = _compressed_fine_tune(out, config, job, (model, spec), progress, resume=None)
    return {**result, "depth": table}


def _compressed_fine_tune(
    out: Path,
    config: RunConfig,
    job: CompressionJob,
    compressed: tuple[ConvNet, ModelSpec],
    progress: Progress,
    resume: Checkpoint | None,
) -> dict:
    """Save ``<label>.pt``, fine-tune a copy (from `resume` when given), finish the run."""
    label = LABELS[config.command]
    model, spec = compressed
    if not _on_main_exists(out / f"{label}.pt"):
        acc = job.accuracy(model)  # every rank: a collective under torchrun
        if distributed.is_main():
            save_checkpoint(out / f"{label}.pt", spec, model, _meta(job, config, test_acc=acc))
        distributed.barrier()
    work = copy.deepcopy(model)
    state = None
    if resume is not None:
        work.load_state_dict(resume.state_dict)
        state = TrainingState.from_dict(resume.training)
    result, history = _fine_tune(
        out, config, job, work, spec, job.finetune.epochs, progress, before=[], step=None, resume=state
    )
    notes = [
        f"{key.replace('_', ' ')}: {config.compression[key]}"
        for key in ("factorized", "left_alone", "removed")
        if key in config.compression
    ]
    return _finish(out, config, job, label, compressed, work, history, result, progress, notes=notes)


def _meta(job: CompressionJob, config: RunConfig, **extra) -> dict:
    record = config.data
    return {
        "dataset": record.dataset,
        "data_dir": record.data_dir,
        "classes": record.classes,
        "mean": record.mean,
        "std": record.std,
        "compressed_from": str(job.source.path),
        "lineage": config.lineage,
        **({"test_precision": job.test_precision.describe()} if "test_acc" in extra else {}),
        **({} if is_convnet(job.source) else {"input_shape": list(checkpoint_input_shape(job.source))}),
        **extra,
    }


def _fine_tune(
    out: Path,
    config: RunConfig,
    job: CompressionJob,
    model: nn.Module,
    spec: ModelSpec | Architecture,
    epochs: int,
    progress: Progress,
    *,
    before: list[dict],
    step: int | None,
    resume: TrainingState | None,
) -> tuple[FitResult | None, list[dict]]:
    """Train `model` in place for `epochs` with the job's settings (distilling from `job.teacher`
    when there is one), recording every epoch in `out`; (the fit's result or None for no epochs,
    the run's whole history so far)."""
    if not epochs:
        return None, list(before)
    cfg = TrainConfig(**{**job.finetune.to_dict(), "epochs": epochs})
    extra = {} if step is None else {"step": step}
    recorder = EpochRecorder(
        out,
        spec,
        model,
        _meta(job, config, **extra),
        f"fine-tuning {LABELS[config.command]} {model_name(job.source)}",
        before=before,
        extra=extra,
    )
    on_epoch = recorder if distributed.is_main() else None
    distill = None if job.teacher is None else job.teacher.distillation
    result = fit(
        model, job.train, job.val, cfg, progress=progress, resume=resume, on_epoch=on_epoch, distill=distill
    )
    return result, recorder.combined(result.history)


def _finish(
    out: Path,
    config: RunConfig,
    job: CompressionJob,
    label: str,
    compressed: tuple[ConvNet, ModelSpec],
    final: ConvNet,
    history: list[dict],
    best: FitResult | None,
    progress: Progress,
    notes: Sequence[str],
) -> dict:
    """Write what every finished compressed run holds besides its method's own files:
    ``checkpoint.pt`` (best fine-tuned epoch), ``last.pt``, ``history.csv``, ``curves.png``,
    ``report.csv``/``report.md`` (original / compressed / fine-tuned), the final ``config.json``
    and ``summary.json``. `final` is the fine-tuned model (last epoch). Returns the summary."""
    compressed_model, spec = compressed
    final_spec = spec  # fine-tuning keeps the compressed architecture
    last_acc, last_state, final_acc = last_and_best(job, final, best)
    if not distributed.is_main():
        return {"run": str(out), "test_acc": final_acc, "table": None}
    # evaluated when <label>.pt was saved, before fine-tuning (perhaps by the run that stopped)
    compressed_acc = load_checkpoint(out / f"{label}.pt").meta["test_acc"]
    write_history(out / "history.csv", history)
    last = load_checkpoint(out / LAST_NAME) if (out / LAST_NAME).is_file() else None
    save_checkpoint(
        out / LAST_NAME,
        final_spec,
        last_state,
        _meta(job, config, test_acc=last_acc),
        training=None if last is None else last.training,
    )
    save_checkpoint(
        out / CHECKPOINT_NAME,
        final_spec,
        final,
        _meta(
            job,
            config,
            test_acc=final_acc,
            epoch=best.best_epoch if best else 0,
            val_acc=best.best_val_acc if best else None,
        ),
    )
    if history:
        plot_training_curves(
            pd.DataFrame(history), out / "curves.png", title=f"fine-tuning {label} {job.spec.name}"
        )
    progress.log("measuring parameters, MACs, size and latency of the three models")
    lineage = config.lineage
    compared = [
        ("original", job.model, job.spec, job.original_acc, job.source.path, lineage[:-1]),
        (label, compressed_model, spec, compressed_acc, out / f"{label}.pt", lineage),
        (f"{label}+fine-tuned", final, final_spec, final_acc, out / CHECKPOINT_NAME, lineage),
    ]
    config.model = ModelRecord(
        **{**asdict(config.model), "spec": final_spec.to_dict(), "parameters": count_parameters(final)}
    )
    return write_compressed_outputs(
        out, job, config, compared, notes, f"{lineage[-1]} of {job.spec.name}",
        {f"{label}_test_acc": compressed_acc, "test_acc": final_acc},
        {"parameters": count_parameters(final), "conv_widths": final_spec.conv_widths},
    )  # fmt: skip


def write_compressed_outputs(
    out: Path,
    job: CompressionJob,
    config: RunConfig,
    compared: list,
    notes: list[str],
    title: str,
    accuracies: dict,
    sizes: dict,
) -> dict:
    """The end of every compression run: latency of the `compared` models measured together,
    ``report.csv``/``report.md`` (`notes` between the lineage line and the measurement lines), the
    final ``config.json``, and ``summary.json`` (the compressed and final test `accuracies`, the
    final model's `sizes`, the reductions and speed-ups of the last row). Returns the summary and
    the ``table``."""
    lineage = config.lineage
    rows = measure_rows(compared, job.options.bench_seconds, job.options.threads)
    table = comparison_table(rows)
    notes = [
        f"{' → '.join(lineage)}; fine-tuned {job.finetune.epochs} epochs",
        *notes,
        f"MACs: torch-pruning's counter, one image; {describe_latency(rows)}",
        f"test_acc: full test split, {job.test_precision.describe()}",
    ]
    write_report(table, out, title, notes)
    write_config(out, config)
    summary = {
        "run": str(out),
        "lineage": lineage,
        "original_test_acc": job.original_acc,
        **accuracies,
        "original_parameters": count_parameters(job.model),
        **sizes,
        "macs_reduction": float(table["macs_reduction"].iloc[-1]),
        "latency_reduction_b1": float(table["latency_reduction_b1"].iloc[-1]),
        "latency_reduction_b128": float(table["latency_reduction_b128"].iloc[-1]),
        "speedup_b1": float(table["speedup_b1"].iloc[-1]),
        "speedup_b128": float(table["speedup_b128"].iloc[-1]),
        "test_precision": job.test_precision.describe(),
    }
    write_json(out / "summary.json", summary)
    return {**summary, "table": table}


# --------------------------------------------------------------------------- resume


def resume_compress_run(
    run: str | Path,
    command: str,
    *,
    data_dir: str | None = None,
    download: bool = True,
    bench_seconds: float = 1.0,
    threads: int | None = None,
    progress: Progress | None = None,
) -> dict:
    """Continue the stopped `command` (prune, lowrank or depth) run `run` from its last finished
    fine-tuning epoch, with the run's own configuration."""
    progress = progress or Progress(enabled=False)
    run = Path(run)
    check_resumable(run, command)
    config = read_config(run)
    options = JobOptions(
        data_dir=data_dir, download=download, bench_seconds=bench_seconds, threads=threads,
        **recorded_options(config),  # the teacher it distilled from, if it did
    )  # fmt: skip
    finetune = TrainConfig(**config.train)
    device = resolve_device(finetune.device)
    if distributed.world_size() > 1:  # a resumed --sync-bn run may go on in one process
        device = _device(finetune)
    with distributed.session(device):
        return _resume_compress_run(run, command, config, options, progress)


def _resume_compress_run(
    run: Path, command: str, config: RunConfig, options: JobOptions, progress: Progress
) -> dict:
    job = open_job(config.source, TrainConfig(**config.train), options)
    if job.source_config.data.split != config.data.split:
        raise CompresskitError(
            f"--resume {run}: its source {config.source} no longer has the split it recorded."
        )
    last = load_checkpoint(run / LAST_NAME) if (run / LAST_NAME).is_file() else None
    if last is not None and last.training is None:
        last = None  # a finished fine-tuning's last.pt: the run stopped while writing its report
    distributed.barrier()  # every rank has checked run.json before rank 0 marks it running
    if distributed.is_main():
        set_state(run, "running")
    progress.log(f"resuming {run}" + (f" after fine-tuning epoch {last.meta.get('epoch')}" if last else ""))
    with recording_state(run):
        if not is_convnet(job.source):
            return resume_any(run, config, job, last, progress)
        if command == "prune":
            compression = config.compression or {}
            cfg = PruneConfig(**compression["prune"])
            pruner, _ = _pruner(job, cfg, int(compression["calibration_samples"]), progress)
            widths = pruner.step()
            progress.log(f"pruning step 1/{cfg.steps} (replayed): conv widths {widths}")
            return _prune_steps(run, config, job, cfg, pruner, progress, resume=last)
        label = LABELS[command]
        if not (run / f"{label}.pt").is_file():
            raise CompresskitError(
                f"--resume {run} has no {label}.pt; it stopped before compressing, start it again."
            )
        compressed = load_checkpoint(run / f"{label}.pt")
        result = _compressed_fine_tune(
            run, config, job, (compressed.build(job.device), compressed.spec), progress, resume=last
        )
        if command == "depth" and distributed.is_main():
            result["depth"] = pd.read_csv(run / "depth.csv")
        return result
