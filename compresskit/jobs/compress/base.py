"""What every compression job shares before and around its method: the options, the source
checkpoint loaded and checked with its run's data (`open_job`), the run directory made once every
rank has checked it (`create_run`), and what its ``config.json`` and checkpoints record
(`compressed_run_config`, `run_meta`, `factorization_outcome`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from compresskit import distributed
from compresskit.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint
from compresskit.compress.distill import DEFAULT_TEMPERATURE, DEFAULT_WEIGHT, check_distill
from compresskit.compress.prune import as_batches
from compresskit.data import ImageDataset, ImageSplit, Loader, balanced_loader
from compresskit.errors import CompresskitError
from compresskit.jobs.anymodel import checkpoint_input_shape, is_convnet
from compresskit.jobs.common import data_loaders, run_dataset
from compresskit.jobs.teacher import Teacher, open_teacher
from compresskit.models import ConvNet, ModelSpec, count_parameters
from compresskit.rundir import ModelRecord, RunConfig, create_output, read_config, write_config
from compresskit.train import Precision, TrainConfig, evaluate, resolve_device, resolve_precision

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
        record = self.source_config.data
        stats = {"mean": tuple(record.mean), "std": tuple(record.std), "device": self.device}
        loader = balanced_loader(split, samples, self.finetune.seed, batch_size=256, among=among, **stats)
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
    recorded = source_config.data
    at_least_one.validate(has_validation=recorded.split.val_count > 0 or recorded.val_folder is not None)
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


def job_inputs(options: JobOptions, checkpoint: str | Path) -> list[Path]:
    """What a compression job reads, so that its --out may never be or hold any of it."""
    inputs = [resolve_checkpoint(checkpoint)]
    if options.data_dir is not None:
        inputs.append(Path(options.data_dir))
    if options.distill and options.teacher is not None:
        inputs.append(Path(options.teacher))
    return inputs


def job_device(finetune: TrainConfig) -> torch.device:
    """Where `finetune` computes, after refusing what torchrun's processes cannot do."""
    device = resolve_device(finetune.device)
    distributed.check_batch_size(finetune.batch_size)
    distributed.check_sync_bn(finetune.sync_bn, device)
    return device


def create_run(
    out: Path, command: str, config: RunConfig, options: JobOptions, checkpoint: str | Path
) -> None:
    """Rank 0 makes `out` with its marker and ``config.json`` once every rank has checked it."""
    distributed.barrier()
    if distributed.is_main():
        create_output(out, command, overwrite=options.overwrite, inputs=job_inputs(options, checkpoint))
        write_config(out, config)


def on_main_exists(path: Path) -> bool:
    """Whether `path` exists as rank 0 sees it, on every rank (the others then read it: the run
    directory must be on a filesystem every rank sees)."""
    return bool(distributed.broadcast_object(path.is_file() if distributed.is_main() else None))


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


def convnet_run_config(
    job: CompressionJob, command: str, spec: ModelSpec, model: ConvNet, compression: dict, step: str
) -> RunConfig:
    """A compressed ConvNet's ``config.json``: its `spec` and parameter count, the source's width."""
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


def run_meta(job: CompressionJob, config: RunConfig, **extra) -> dict:
    """The ``meta`` of every checkpoint a compressed run writes: the data record, where it was
    compressed from, its lineage (any model: its input shape), plus `extra` (with ``test_acc``: the
    precision it was measured in)."""
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
