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

- `base`: the options, the source loaded and checked (`open_job`), ``config.json`` and checkpoint
  meta, the run directory made.
- `finetune`: fine-tuning, and the end of a run (``checkpoint.pt``, ``last.pt``, report, summary).
- `prune`, `lowrank`, `depth`: the three methods on a ConvNet; `any_model`: prune and lowrank of
  any other model (checkpoint format 2); `resume`: ``--resume``.
"""

from compresskit.jobs.compress.any_model import lowrank_any, prune_any
from compresskit.jobs.compress.base import (
    LABELS,
    CompressionJob,
    JobOptions,
    compressed_run_config,
    factorization_outcome,
    open_job,
)
from compresskit.jobs.compress.depth import depth_run
from compresskit.jobs.compress.finetune import write_compressed_outputs
from compresskit.jobs.compress.lowrank import lowrank_run
from compresskit.jobs.compress.prune import prune_run
from compresskit.jobs.compress.resume import resume_compress_run

__all__ = [
    "LABELS",
    "CompressionJob",
    "JobOptions",
    "compressed_run_config",
    "depth_run",
    "factorization_outcome",
    "lowrank_any",
    "lowrank_run",
    "open_job",
    "prune_any",
    "prune_run",
    "resume_compress_run",
    "write_compressed_outputs",
]
