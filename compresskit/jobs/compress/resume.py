"""``--resume``: a stopped prune, lowrank or depth run continued from its last finished fine-tuning
epoch with its own recorded configuration (and the teacher it distilled from, if it did)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from compresskit import distributed
from compresskit.checkpoint import load_checkpoint
from compresskit.compress.prune import PruneConfig
from compresskit.errors import CompresskitError
from compresskit.jobs.anymodel import is_convnet
from compresskit.jobs.common import LAST_NAME, recording_state
from compresskit.jobs.compress.any_model import resume_any
from compresskit.jobs.compress.base import LABELS, JobOptions, job_device, open_job
from compresskit.jobs.compress.finetune import fine_tune_and_finish
from compresskit.jobs.compress.prune import prune_steps, pruner_of
from compresskit.jobs.teacher import recorded_options
from compresskit.progress import Progress
from compresskit.rundir import RunConfig, check_resumable, read_config, set_state
from compresskit.train import TrainConfig, resolve_device


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
        device = job_device(finetune)
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
            pruner, _ = pruner_of(job, cfg, int(compression["calibration_samples"]), progress)
            widths = pruner.step()
            progress.log(f"pruning step 1/{cfg.steps} (replayed): conv widths {widths}")
            return prune_steps(run, config, job, cfg, pruner, progress, resume=last)
        label = LABELS[command]
        if not (run / f"{label}.pt").is_file():
            raise CompresskitError(
                f"--resume {run} has no {label}.pt; it stopped before compressing, start it again."
            )
        compressed = load_checkpoint(run / f"{label}.pt")
        result = fine_tune_and_finish(
            run, config, job, compressed.build(job.device), compressed.spec, progress, resume=last
        )
        if command == "depth" and distributed.is_main():
            result["depth"] = pd.read_csv(run / "depth.csv")
        return result
