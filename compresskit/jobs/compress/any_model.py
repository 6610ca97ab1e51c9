"""``prune`` and ``lowrank`` of a model that is not a compresskit ConvNet its spec describes (a
torchvision model, an imported one, or anything saved in checkpoint format 2 with edits).

The library does the work (`compress.prune_any.prune_model`: torch-pruning's dependency graph;
`compress.lowrank_any.lowrank_model`: SVD of any groups-1 Conv2d and Linear); this module makes
the run directory exactly as the ConvNet path does (``run.json``, ``config.json``, ``<label>.pt``
before fine-tuning, ``last.pt``/``history.csv``/``curves.png`` after every epoch,
``checkpoint.pt``, ``report.*``, ``summary.json``: `finetune.fine_tune_and_finish`), with two
differences:

* every model it writes is checkpoint format 2: the source's architecture plus the edits
  compression recorded, so it reloads without torch-pruning and without a spec;
* ``--resume`` reloads ``<label>.pt`` (saved before fine-tuning) instead of replaying the pruner,
  so a resumed run fine-tunes exactly the model the stopped one did.

Pruning takes one step (``--steps 1``) with one ratio for every channel group (``--scope uniform``,
or ``--allocate csi``'s per-group ratios), no ``--max-layer-ratio``; the table beside it is
``widths.csv`` (every conv and linear layer's output channels before and after).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import nn

from compresskit import distributed
from compresskit.checkpoint import Checkpoint, load_checkpoint
from compresskit.compress.importance import NEEDS_DATA
from compresskit.compress.lowrank import LowRankConfig
from compresskit.compress.prune import PruneConfig
from compresskit.errors import CompresskitError
from compresskit.jobs.anymodel import checkpoint_input_shape, model_name
from compresskit.jobs.common import recording_state
from compresskit.jobs.compress.base import (
    LABELS,
    CompressionJob,
    compressed_run_config,
    create_run,
    factorization_outcome,
)
from compresskit.jobs.compress.finetune import fine_tune_and_finish
from compresskit.models import count_parameters
from compresskit.progress import Progress
from compresskit.rundir import ModelRecord, RunConfig


def check_prune_any(cfg: PruneConfig, where: Path | None) -> None:
    """Refuse the pruning settings only the ConvNet path has, naming the flag."""
    for flag, value, default in (
        ("--steps", cfg.steps, 1),
        ("--scope", cfg.scope, "uniform"),
        ("--max-layer-ratio", cfg.max_layer_ratio, 1.0),
        ("--layer-ratios", cfg.layer_ratios, None),
    ):
        if value != default:
            raise CompresskitError(
                f"{flag} {value} is for compresskit ConvNets; {where} is pruned through torch-pruning's "
                f"dependency graph, which takes {flag} {default}."
            )


def prune_any(
    job: CompressionJob,
    out: Path,
    cfg: PruneConfig,
    calibration_samples: int,
    checkpoint: str | Path,
    progress: Progress,
) -> dict:
    """Prune `job.model` by `cfg` (`prune_model`), then make and fine-tune the run `out`."""
    from compresskit.compress.prune_any import prune_model

    check_prune_any(cfg, job.source.path)
    needs_data = cfg.importance in NEEDS_DATA or cfg.allocate == "csi"
    batches = job.calibration(calibration_samples) if needs_data else None
    example = torch.zeros(1, *checkpoint_input_shape(job.source), device=job.device)
    pruned = prune_model(
        job.model, example, ratio=cfg.ratio, importance=cfg.importance, allocate=cfg.allocate,
        calibration=batches, round_to=cfg.round_to, seed=cfg.seed,
    )  # fmt: skip
    pruned.eval()
    widths = widths_table(job.model, pruned)
    progress.log(f"pruned {int((widths['pruned'] < widths['original']).sum())} of {len(widths)} layers")
    step = f"prune {cfg.importance} {cfg.ratio:g} (allocate {cfg.allocate})"
    compression = {
        "prune": cfg.to_dict(),
        "layer_ratios": None,
        "calibration_samples": calibration_samples,
        "channels": channels_note(widths),
    }
    config = run_config(job, "prune", pruned, compression, step)
    create_run(out, "prune", config, job.options, checkpoint)
    with recording_state(out):
        if distributed.is_main():
            widths.to_csv(out / "widths.csv", index=False)
        return fine_tune_and_finish(out, config, job, pruned, job.source.architecture, progress, resume=None)


def widths_table(original: nn.Module, pruned: nn.Module) -> pd.DataFrame:
    """Every conv and linear layer of `original` (module path) with its output channels before and
    after pruning, and the fraction kept."""
    after = dict(pruned.named_modules())
    rows = []
    for path, module in original.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and path in after:
            width = _out_width(module)
            rows.append({"layer": path, "original": width, "pruned": _out_width(after[path])})
    table = pd.DataFrame(rows, columns=["layer", "original", "pruned"])
    table["kept"] = table["pruned"] / table["original"]
    return table


def _out_width(module: nn.Module) -> int:
    return int(module.out_channels if isinstance(module, nn.Conv2d) else module.out_features)


def channels_note(widths: pd.DataFrame) -> str:
    before, after = int(widths["original"].sum()), int(widths["pruned"].sum())
    return f"{before} → {after} output channels in {len(widths)} layers"


def lowrank_any(
    job: CompressionJob, out: Path, cfg: LowRankConfig, checkpoint: str | Path, progress: Progress
) -> dict:
    """Factorize `job.model` (`lowrank_model`; ``--layers`` all or a comma list of module paths),
    then make and fine-tune the run `out` (plus ``ranks.csv``)."""
    from compresskit.compress.lowrank_any import lowrank_model

    example = torch.zeros(1, *checkpoint_input_shape(job.source), device=job.device)
    try:
        model, plans = lowrank_model(
            job.model, energy=cfg.energy, rank_ratio=cfg.rank_ratio,
            layers=None if cfg.layers == "all" else cfg.layers, example_inputs=example,
        )  # fmt: skip
    except CompresskitError as exc:  # the library names its parameter; this is the flag
        raise CompresskitError(str(exc).replace("layers", "--layers", 1)) from None
    model.eval()
    plan_table, done, left_alone = factorization_outcome(plans)
    progress.log(f"factorized {len(done)} layers; left alone: {left_alone}")
    how = f"energy {cfg.energy:g}" if cfg.energy is not None else f"rank ratio {cfg.rank_ratio:g}"
    compression = {"lowrank": cfg.to_dict(), "factorized": done, "left_alone": left_alone}
    config = run_config(job, "lowrank", model, compression, f"lowrank {how} ({cfg.layers})")
    create_run(out, "lowrank", config, job.options, checkpoint)
    with recording_state(out):
        if distributed.is_main():
            plan_table.to_csv(out / "ranks.csv", index=False)
        return fine_tune_and_finish(out, config, job, model, job.source.architecture, progress, resume=None)


def run_config(
    job: CompressionJob, command: str, model: nn.Module, compression: dict, step: str
) -> RunConfig:
    """The compressed run's ``config.json``: the source's architecture (its edits are in the
    checkpoints), data record and lineage, the fine-tuning and compression settings."""
    record = ModelRecord(
        name=model_name(job.source), width=1.0, head="", dropout=0.0, global_pool=False, spec={},
        parameters=count_parameters(model), init=job.source_config.model.init,
        architecture=job.source.architecture.to_dict(),
    )  # fmt: skip
    return compressed_run_config(job, command, record, compression, step)


def resume_any(
    run: Path, config: RunConfig, job: CompressionJob, last: Checkpoint | None, progress: Progress
) -> dict:
    """Continue a stopped any-model prune or lowrank run: reload ``<label>.pt`` (never replay the
    compression) and fine-tune from `last`."""
    label = LABELS[config.command]
    if not (run / f"{label}.pt").is_file():
        raise CompresskitError(
            f"--resume {run} has no {label}.pt; it stopped before compressing, start it again."
        )
    compressed = load_checkpoint(run / f"{label}.pt").build(job.device)
    return fine_tune_and_finish(run, config, job, compressed, job.source.architecture, progress, resume=last)
