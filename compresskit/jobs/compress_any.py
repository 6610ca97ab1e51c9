"""``prune`` and ``lowrank`` of a model that is not a compresskit ConvNet its spec describes (a
torchvision model, an imported one, or anything saved in checkpoint format 2 with edits).

The library does the work (`compress.prune_any.prune_model`: torch-pruning's dependency graph;
`compress.lowrank_any.lowrank_model`: SVD of any groups-1 Conv2d and Linear); this module makes
the run directory exactly as `jobs.compress` does for a ConvNet (``run.json``, ``config.json``,
``<label>.pt`` before fine-tuning, ``last.pt``/``history.csv``/``curves.png`` after every epoch,
``checkpoint.pt``, ``report.*``, ``summary.json``), with two differences:

* every model it writes is checkpoint format 2: the source's architecture plus the edits
  compression recorded, so it reloads without torch-pruning and without a spec;
* ``--resume`` reloads ``<label>.pt`` (saved before fine-tuning) instead of replaying the pruner,
  so a resumed run fine-tunes exactly the model the stopped one did.

Pruning takes one step (``--steps 1``) with one ratio for every channel group (``--scope uniform``,
or ``--allocate csi``'s per-group ratios), no ``--max-layer-ratio``; the table beside it is
``widths.csv`` (every conv and linear layer's output channels before and after).
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import nn

from compresskit import distributed
from compresskit.checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint
from compresskit.compress.lowrank import LowRankConfig
from compresskit.compress.prune import NEEDS_DATA, PruneConfig
from compresskit.errors import CompresskitError
from compresskit.jobs.anymodel import checkpoint_input_shape, model_name, save_run_checkpoint
from compresskit.jobs.common import LAST_NAME, recording_state, write_history
from compresskit.models import count_parameters
from compresskit.plots import plot_training_curves
from compresskit.progress import Progress
from compresskit.rundir import ModelRecord, RunConfig
from compresskit.train import TrainingState

if TYPE_CHECKING:  # jobs.compress imports this module
    from compresskit.jobs.compress import CompressionJob


def check_prune_any(cfg: PruneConfig, where: Path | None) -> None:
    """Refuse the pruning settings only the ConvNet path has, naming the flag."""
    for flag, value, default in (
        ("--steps", cfg.steps, 1),
        ("--scope", cfg.scope, "uniform"),
        ("--max-layer-ratio", cfg.max_layer_ratio, 1.0),
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
    from compresskit.jobs.compress import _create

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
    _create(out, "prune", config, job.options, checkpoint)
    with recording_state(out):
        if distributed.is_main():
            widths.to_csv(out / "widths.csv", index=False)
        return fine_tune_any(out, config, job, pruned, progress, resume=None)


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
    from compresskit.jobs.compress import _create

    example = torch.zeros(1, *checkpoint_input_shape(job.source), device=job.device)
    try:
        model, plans = lowrank_model(
            job.model, energy=cfg.energy, rank_ratio=cfg.rank_ratio,
            layers=None if cfg.layers == "all" else cfg.layers, example_inputs=example,
        )  # fmt: skip
    except CompresskitError as exc:  # the library names its parameter; this is the flag
        raise CompresskitError(str(exc).replace("layers", "--layers", 1)) from None
    model.eval()
    from compresskit.jobs.compress import factorization_outcome  # jobs.compress imports this module

    plan_table, done, left_alone = factorization_outcome(plans)
    progress.log(f"factorized {len(done)} layers; left alone: {left_alone}")
    how = f"energy {cfg.energy:g}" if cfg.energy is not None else f"rank ratio {cfg.rank_ratio:g}"
    compression = {"lowrank": cfg.to_dict(), "factorized": done, "left_alone": left_alone}
    config = run_config(job, "lowrank", model, compression, f"lowrank {how} ({cfg.layers})")
    _create(out, "lowrank", config, job.options, checkpoint)
    with recording_state(out):
        if distributed.is_main():
            plan_table.to_csv(out / "ranks.csv", index=False)
        return fine_tune_any(out, config, job, model, progress, resume=None)


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
    from compresskit.jobs.compress import compressed_run_config  # jobs.compress imports this module

    return compressed_run_config(job, command, record, compression, step)


def fine_tune_any(
    out: Path,
    config: RunConfig,
    job: CompressionJob,
    compressed: nn.Module,
    progress: Progress,
    resume: Checkpoint | None,
) -> dict:
    """Save ``<label>.pt`` (format 2, checked to rebuild), fine-tune a copy (from `resume` when
    given), finish the run."""
    from compresskit.jobs.compress import LABELS, _fine_tune, _meta, _on_main_exists
    from compresskit.model_io import save

    label = LABELS[config.command]
    if not _on_main_exists(out / f"{label}.pt"):
        acc = job.accuracy(compressed)  # every rank: a collective under torchrun
        if distributed.is_main():
            save(compressed, out / f"{label}.pt", meta=_meta(job, config, test_acc=acc))
        distributed.barrier()
    work = copy.deepcopy(compressed)
    state = None
    if resume is not None:
        work.load_state_dict(resume.state_dict)
        state = TrainingState.from_dict(resume.training)
    arch = job.source.architecture
    result, history = _fine_tune(
        out, config, job, work, arch, job.finetune.epochs, progress, before=[], step=None, resume=state
    )
    return finish_any(out, config, job, label, compressed, work, history, result, progress)


def finish_any(
    out: Path,
    config: RunConfig,
    job: CompressionJob,
    label: str,
    compressed: nn.Module,
    final: nn.Module,
    history: list[dict],
    best,
    progress: Progress,
) -> dict:
    """`jobs.compress._finish` for any model: ``checkpoint.pt`` and ``last.pt`` in format 2,
    ``history.csv``, ``curves.png``, the report of original / compressed / fine-tuned, the final
    ``config.json`` and ``summary.json``."""
    from compresskit.jobs.compress import _meta, last_and_best

    arch = job.source.architecture
    last_acc, last_state, final_acc = last_and_best(job, final, best)
    if not distributed.is_main():
        return {"run": str(out), "test_acc": final_acc, "table": None}
    compressed_acc = load_checkpoint(out / f"{label}.pt").meta["test_acc"]
    write_history(out / "history.csv", history)
    last = load_checkpoint(out / LAST_NAME) if (out / LAST_NAME).is_file() else None
    save_run_checkpoint(
        out / LAST_NAME, arch, last_state, _meta(job, config, test_acc=last_acc),
        training=None if last is None else last.training, edits_of=final,
    )  # fmt: skip
    meta = _meta(
        job, config, test_acc=final_acc, epoch=best.best_epoch if best else 0,
        val_acc=best.best_val_acc if best else None,
    )  # fmt: skip
    save_run_checkpoint(out / CHECKPOINT_NAME, arch, final, meta)
    name = model_name(job.source)
    if history:
        plot_training_curves(pd.DataFrame(history), out / "curves.png", title=f"fine-tuning {label} {name}")
    progress.log("measuring parameters, MACs, size and latency of the three models")
    lineage, shape = config.lineage, checkpoint_input_shape(job.source)
    compared = [
        ("original", job.model, shape, job.original_acc, job.source.path, lineage[:-1]),
        (label, compressed, shape, compressed_acc, out / f"{label}.pt", lineage),
        (f"{label}+fine-tuned", final, shape, final_acc, out / CHECKPOINT_NAME, lineage),
    ]
    from compresskit.jobs.compress import write_compressed_outputs  # jobs.compress imports this module

    compression = config.compression or {}
    notes = [f"{key.replace('_', ' ')}: {compression[key]}"
             for key in ("channels", "factorized", "left_alone") if key in compression]  # fmt: skip
    config.model = ModelRecord(**{**asdict(config.model), "parameters": count_parameters(final)})
    channels = {"channels": compression["channels"]} if "channels" in compression else {}
    return write_compressed_outputs(
        out, job, config, compared, notes, f"{lineage[-1]} of {name}",
        {f"{label}_test_acc": compressed_acc, "test_acc": final_acc},
        {"parameters": count_parameters(final), **channels},
    )  # fmt: skip


def resume_any(
    run: Path, config: RunConfig, job: CompressionJob, last: Checkpoint | None, progress: Progress
) -> dict:
    """Continue a stopped any-model prune or lowrank run: reload ``<label>.pt`` (never replay the
    compression) and fine-tune from `last`."""
    from compresskit.jobs.compress import LABELS

    label = LABELS[config.command]
    if not (run / f"{label}.pt").is_file():
        raise CompresskitError(
            f"--resume {run} has no {label}.pt; it stopped before compressing, start it again."
        )
    compressed = load_checkpoint(run / f"{label}.pt").build(job.device)
    return fine_tune_any(run, config, job, compressed, progress, resume=last)
