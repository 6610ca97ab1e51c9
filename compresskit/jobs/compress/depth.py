"""``depth``: a ConvNet cut after the last conv block whose test-CSI gain is worth keeping (or after
``--keep-blocks`` blocks), with a fresh head (`compress.depth`), then fine-tuned. Only a compresskit
ConvNet has blocks to cut; any other model is refused."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from compresskit import distributed
from compresskit.analysis.layers import block_csi
from compresskit.checkpoint import load_checkpoint
from compresskit.compress.depth import choose_depth, truncate
from compresskit.errors import CompresskitError
from compresskit.jobs.anymodel import is_convnet, model_name
from compresskit.jobs.common import recording_state
from compresskit.jobs.compress.base import (
    JobOptions,
    convnet_run_config,
    create_run,
    job_device,
    job_inputs,
    open_job,
)
from compresskit.jobs.compress.finetune import fine_tune_and_finish
from compresskit.progress import Progress
from compresskit.rundir import check_output
from compresskit.train import TrainConfig


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
    with distributed.session(job_device(finetune)):
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
    check_output(out, "depth", overwrite=options.overwrite, inputs=job_inputs(options, checkpoint))
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
    config = convnet_run_config(
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
    create_run(out, "depth", config, options, checkpoint)
    with recording_state(out):
        if distributed.is_main():
            table.to_csv(out / "depth.csv", index=False)
        result = fine_tune_and_finish(out, config, job, model, spec, progress, resume=None)
    return {**result, "depth": table}
