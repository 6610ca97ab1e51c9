"""Fine-tuning a compressed model and the end of its run, for a ConvNet (its `ModelSpec`: checkpoint
format 1) and for any other model (the source's `Architecture` plus the recorded edits: format 2)
alike: ``<label>.pt`` before fine-tuning, every epoch recorded, then ``checkpoint.pt``,
``last.pt``, ``history.csv``, ``curves.png``, ``report.*``, the final ``config.json`` and
``summary.json``."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from torch import nn

from compresskit import distributed
from compresskit.architecture import Architecture
from compresskit.checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint, save_checkpoint
from compresskit.jobs.anymodel import checkpoint_input_shape, model_name
from compresskit.jobs.common import EpochRecorder, evaluate_last_and_best, write_final_checkpoints
from compresskit.jobs.compress.base import LABELS, CompressionJob, on_main_exists, run_meta
from compresskit.jobs.report import measure_rows
from compresskit.latency import describe as describe_latency
from compresskit.models import ModelSpec, count_parameters
from compresskit.progress import Progress
from compresskit.report import comparison_table, write_report
from compresskit.rundir import ModelRecord, RunConfig, write_config, write_json
from compresskit.train import FitResult, TrainConfig, TrainingState, fit

NOTE_KEYS = ("channels", "factorized", "left_alone", "removed")  # config.compression's, in the report


def fine_tune(
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
        run_meta(job, config, **extra),
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


def fine_tune_and_finish(
    out: Path,
    config: RunConfig,
    job: CompressionJob,
    compressed: nn.Module,
    what: ModelSpec | Architecture,
    progress: Progress,
    resume: Checkpoint | None,
) -> dict:
    """Save ``<label>.pt`` (a ConvNet's `what` is its spec; any other model's is the source's
    architecture: format 2, checked to rebuild), fine-tune a copy (from `resume` when given),
    finish the run."""
    label = LABELS[config.command]
    if not on_main_exists(out / f"{label}.pt"):
        acc = job.accuracy(compressed)  # every rank: a collective under torchrun
        if distributed.is_main():
            if isinstance(what, ModelSpec):
                save_checkpoint(out / f"{label}.pt", what, compressed, run_meta(job, config, test_acc=acc))
            else:
                from compresskit.model_io import save

                save(compressed, out / f"{label}.pt", meta=run_meta(job, config, test_acc=acc))
        distributed.barrier()
    work = copy.deepcopy(compressed)
    state = None
    if resume is not None:
        work.load_state_dict(resume.state_dict)
        state = TrainingState.from_dict(resume.training)
    result, history = fine_tune(
        out, config, job, work, what, job.finetune.epochs, progress, before=[], step=None, resume=state
    )
    notes = compression_notes(config)
    return finish(out, config, job, (compressed, what), work, history, result, progress, notes)


def compression_notes(config: RunConfig) -> list[str]:
    """The report's lines for what `config.compression` says was done or left alone."""
    compression = config.compression or {}
    return [f"{key.replace('_', ' ')}: {compression[key]}" for key in NOTE_KEYS if key in compression]


def finish(
    out: Path,
    config: RunConfig,
    job: CompressionJob,
    compressed: tuple[nn.Module, ModelSpec | Architecture],
    final: nn.Module,
    history: list[dict],
    best: FitResult | None,
    progress: Progress,
    notes: Sequence[str],
) -> dict:
    """Write what every finished compressed run holds besides its method's own files:
    ``checkpoint.pt`` (best fine-tuned epoch), ``last.pt``, ``history.csv``, ``curves.png``,
    ``report.csv``/``report.md`` (original / compressed / fine-tuned), the final ``config.json``
    and ``summary.json``. `compressed` is the model saved as ``<label>.pt`` and what its checkpoints
    are written from (fine-tuning keeps the compressed architecture); `final` is the fine-tuned
    model (last epoch). Returns the summary."""
    label = LABELS[config.command]
    compressed_model, what = compressed
    # every rank: collectives under torchrun
    tests = evaluate_last_and_best(
        final, job.test, job.device, job.test_precision, None if best is None else best.best_state
    )
    final_acc = tests.best_acc
    if not distributed.is_main():
        return {"run": str(out), "test_acc": final_acc, "table": None}
    # evaluated when <label>.pt was saved, before fine-tuning (perhaps by the run that stopped)
    compressed_acc = load_checkpoint(out / f"{label}.pt").meta["test_acc"]
    name = model_name(job.source)
    meta = run_meta(
        job, config, test_acc=final_acc, epoch=best.best_epoch if best else 0,
        val_acc=best.best_val_acc if best else None,
    )  # fmt: skip
    write_final_checkpoints(
        out, what, final, tests.last_state, history, best_meta=meta,
        last_meta=run_meta(job, config, test_acc=tests.last_acc), title=f"fine-tuning {label} {name}",
    )  # fmt: skip
    progress.log("measuring parameters, MACs, size and latency of the three models")
    lineage = config.lineage
    record = {**asdict(config.model), "parameters": count_parameters(final)}
    sizes: dict = {"parameters": count_parameters(final)}
    if isinstance(what, ModelSpec):
        inputs: tuple = (job.spec, what, what)
        record["spec"] = what.to_dict()
        sizes["conv_widths"] = what.conv_widths
    else:
        inputs = (checkpoint_input_shape(job.source),) * 3
        compression = config.compression or {}
        sizes.update({"channels": compression["channels"]} if "channels" in compression else {})
    compared = [
        ("original", job.model, inputs[0], job.original_acc, job.source.path, lineage[:-1]),
        (label, compressed_model, inputs[1], compressed_acc, out / f"{label}.pt", lineage),
        (f"{label}+fine-tuned", final, inputs[2], final_acc, out / CHECKPOINT_NAME, lineage),
    ]
    config.model = ModelRecord(**record)
    return write_compressed_outputs(
        out, job, config, compared, list(notes), f"{lineage[-1]} of {name}",
        {f"{label}_test_acc": compressed_acc, "test_acc": final_acc}, sizes,
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
