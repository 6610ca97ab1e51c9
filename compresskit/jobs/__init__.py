"""Orchestration: each job reads its inputs, checks every flag before touching the disk, and
writes one folder that `compresskit.rundir` describes. The library below (`compress`, `analysis`,
`train`, `models`, `data`) stays pure: model in, model or metrics out.

- `train_run` / `resume_train_run`: a live training run directory (`jobs.train`).
- `prune_run`, `lowrank_run`, `depth_run` / `resume_compress_run`: live compressed runs
  (`jobs.compress`).
- `evaluate_run`, `analyze_run`, `sensitivity_run`: ``RUN/evaluation``, ``RUN/analysis``,
  ``RUN/sensitivity`` (`jobs.evaluate`, `jobs.analyze`, `jobs.sensitivity`).
- `report_run`: a comparison folder (`jobs.report`).
- `import_run`: a run directory from a model trained elsewhere (`jobs.import_`).
"""

from compresskit.jobs.analyze import analyze_run
from compresskit.jobs.common import RunInterrupted
from compresskit.jobs.compress import JobOptions, depth_run, lowrank_run, prune_run, resume_compress_run
from compresskit.jobs.evaluate import evaluate_run
from compresskit.jobs.import_ import ImportOptions, import_run
from compresskit.jobs.report import report_run
from compresskit.jobs.sensitivity import sensitivity_run
from compresskit.jobs.train import DataOptions, ModelOptions, resume_train_run, train_run

__all__ = [
    "DataOptions",
    "ImportOptions",
    "JobOptions",
    "ModelOptions",
    "RunInterrupted",
    "analyze_run",
    "depth_run",
    "evaluate_run",
    "import_run",
    "lowrank_run",
    "prune_run",
    "report_run",
    "resume_compress_run",
    "resume_train_run",
    "sensitivity_run",
    "train_run",
]
