"""``lowrank``: the chosen layers of a ConvNet factorized by truncated SVD (`compress.lowrank`), then
fine-tuned; any other model goes to `any_model.lowrank_any`."""

from __future__ import annotations

from pathlib import Path

from compresskit import distributed
from compresskit.compress.lowrank import LowRankConfig, factorize
from compresskit.jobs.anymodel import is_convnet
from compresskit.jobs.common import recording_state
from compresskit.jobs.compress.any_model import lowrank_any
from compresskit.jobs.compress.base import (
    JobOptions,
    convnet_run_config,
    create_run,
    factorization_outcome,
    job_device,
    job_inputs,
    open_job,
)
from compresskit.jobs.compress.finetune import fine_tune_and_finish
from compresskit.progress import Progress
from compresskit.rundir import check_output
from compresskit.train import TrainConfig


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
    with distributed.session(job_device(finetune)):
        return _lowrank_run(checkpoint, out, cfg, finetune, options, progress)


def _lowrank_run(
    checkpoint: str | Path,
    out: Path,
    cfg: LowRankConfig,
    finetune: TrainConfig,
    options: JobOptions,
    progress: Progress,
) -> dict:
    check_output(out, "lowrank", overwrite=options.overwrite, inputs=job_inputs(options, checkpoint))
    job = open_job(checkpoint, finetune, options)
    if not is_convnet(job.source):
        return lowrank_any(job, out, cfg, checkpoint, progress)
    model, spec, plans = factorize(job.model, job.spec, cfg)
    plan_table, done, left_alone = factorization_outcome(plans)
    progress.log(f"factorized {', '.join(done)}; left alone: {left_alone}")
    how = f"energy {cfg.energy:g}" if cfg.energy is not None else f"rank ratio {cfg.rank_ratio:g}"
    config = convnet_run_config(
        job,
        "lowrank",
        spec,
        model,
        {"lowrank": cfg.to_dict(), "factorized": done, "left_alone": left_alone},
        f"lowrank {how} ({cfg.layers})",
    )
    create_run(out, "lowrank", config, options, checkpoint)
    with recording_state(out):
        if distributed.is_main():
            plan_table.to_csv(out / "ranks.csv", index=False)
        return fine_tune_and_finish(out, config, job, model, spec, progress, resume=None)
