"""The compression jobs behind the CLI: `prune_run` makes a pruned run directory from a trained one,
`sensitivity_run` scans how much each layer can lose on its own.

A pruned run directory holds ``config.json`` (the original run, the pruning and fine-tuning
settings), ``pruned.pt`` (right after pruning), ``checkpoint.pt`` (best fine-tuned epoch by
validation accuracy), ``last.pt``, ``history.csv`` + ``curves.png`` (fine-tuning), ``widths.csv``
(channels per conv layer before and after), ``report.csv`` + ``report.md`` (original / pruned /
pruned+fine-tuned: parameters, MACs, size, latency, accuracy, reductions) and ``summary.json``.
All of them are ordinary compresskit files: the checkpoints reload without torch-pruning.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from compresskit.analysis.layers import block_csi
from compresskit.checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint, save_checkpoint
from compresskit.compress.depth import choose_depth, truncate
from compresskit.compress.lowrank import LowRankConfig, factorize
from compresskit.compress.prune import (
    ChannelPruner,
    PruneConfig,
    as_batches,
    csi_allocation,
    prune_copy,
    rebuild,
)
from compresskit.data import (
    Augmentation,
    ImageDataset,
    ImageSplit,
    Loader,
    balanced_subset,
    default_augmentation,
)
from compresskit.errors import CompresskitError
from compresskit.measure import measure_model
from compresskit.models import ConvNet, ModelSpec, count_parameters
from compresskit.plots import plot_pareto, plot_sensitivity, plot_training_curves
from compresskit.progress import Progress
from compresskit.report import comparison_table, write_report
from compresskit.runs import (
    _fitted_train_indices,
    check_output_dir,
    checkpoint_dataset,
    make_loaders,
    staged_directory,
    training_config,
    write_json,
)
from compresskit.train import (
    HISTORY_COLUMNS,
    TrainConfig,
    evaluate,
    fit_keeping_finished_epochs,
    resolve_device,
)


def _input_shape(spec: ModelSpec) -> tuple[int, int, int]:
    return (spec.in_channels, spec.input_size, spec.input_size)


def _measure_row(
    name: str,
    model: ConvNet,
    spec: ModelSpec,
    test_acc: float,
    path: Path | None,
    bench_seconds: float,
    threads: int | None = None,
    lineage: Sequence[str] = (),
) -> dict:
    measured = measure_model(
        model, _input_shape(spec), batch_sizes=(1, 128), device=next(model.parameters()).device,
        checkpoint_path=path, min_run_time=bench_seconds, threads=threads,
    )  # fmt: skip
    return {"model": name, **measured.to_row(), "test_acc": test_acc, "lineage": " → ".join(lineage)}


def lineage_of(ckpt: Checkpoint) -> list[str]:
    """The steps that made a checkpoint, oldest first (``train vgg11_bn (run)``, ``prune …``, …)."""
    recorded = ckpt.meta.get("lineage")
    if isinstance(recorded, list) and all(isinstance(step, str) for step in recorded):
        return list(recorded)
    return [f"train {ckpt.spec.name} ({ckpt.path.parent.name})"]


@dataclass
class CompressionJob:
    """What every compression command shares: the source checkpoint and its model, data loaders
    rebuilt from the source run's own split and augmentation, and the measuring settings."""

    ckpt: Checkpoint
    model: ConvNet
    data: ImageDataset
    train: Loader
    val: Loader | None
    test: Loader
    device: torch.device
    finetune: TrainConfig
    original_run: dict
    original_acc: float
    options: JobOptions

    @property
    def spec(self) -> ModelSpec:
        return self.ckpt.spec

    def calibration(self, samples: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A class-balanced subset of the training images the source was fitted on, unaugmented."""
        fitted = _fitted_train_indices(self.ckpt.path.parent, self.data)
        return self._balanced_batches(self.data.train, samples, among=fitted)

    def test_batches(self, samples: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A class-balanced subset of the test images, unaugmented."""
        return self._balanced_batches(self.data.test, samples)

    def _balanced_batches(
        self, split: ImageSplit, samples: int, among: torch.Tensor | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pick = balanced_subset(split.labels, samples, self.finetune.seed, among=among)
        loader = Loader(split.subset(pick), 256, mean=self.data.mean, std=self.data.std, device=self.device)
        return as_batches(loader)

    def accuracy(self, model: ConvNet) -> float:
        return evaluate(model, self.test, self.device)[1]

    def fine_tune(self, model: ConvNet, epochs: int, progress: Progress, **extra) -> tuple[list[dict], Any]:
        """Train `model` in place for `epochs` with the job's settings; (history rows, FitResult)."""
        if not epochs:
            return [], None
        cfg = TrainConfig(**{**self.finetune.to_dict(), "epochs": epochs})
        result = fit_keeping_finished_epochs(model, self.train, self.val, cfg, progress=progress)
        return [{**row, **extra} for row in result.history], result


@dataclass
class JobOptions:
    """Settings every compression job shares: where the data is, whether an existing `--out` may
    be replaced, and how latency is measured (seconds of timing, CPU threads)."""

    data_dir: str | None = None
    download: bool = True
    bench_seconds: float = 1.0
    threads: int | None = None
    overwrite: bool = False

    def validate(self) -> None:
        if self.bench_seconds <= 0:
            raise CompresskitError(f"--bench-seconds {self.bench_seconds} must be positive.")
        if self.threads is not None and self.threads < 1:
            raise CompresskitError(f"--threads {self.threads} must be a positive integer.")


def open_job(checkpoint: str | Path, out: Path, finetune: TrainConfig, options: JobOptions) -> CompressionJob:
    """Validate the shared flags, load the source checkpoint and its data; nothing is written."""
    if finetune.epochs < 0:
        raise CompresskitError(f"--finetune-epochs {finetune.epochs} must be 0 or more.")
    options.validate()
    ckpt = load_checkpoint(checkpoint)
    if out.resolve() == ckpt.path.parent.resolve():
        raise CompresskitError(f"--out {out} is the source run itself; choose a new directory.")
    original_run = training_config(ckpt.path.parent)
    data_cfg = original_run.get("data", {})
    val_fraction = float(data_cfg.get("val_fraction", 0.1))
    finetune.validate(has_validation=val_fraction > 0)
    device = resolve_device(finetune.device)
    check_output_dir(out, overwrite=options.overwrite)
    data = checkpoint_dataset(ckpt, options.data_dir, download=options.download)
    augment_text = data_cfg.get("augment")
    augment = Augmentation.parse(augment_text) if augment_text else default_augmentation(data.name)
    train, val, test = make_loaders(
        data, val_fraction=val_fraction, augment=augment, batch_size=finetune.batch_size,
        seed=finetune.seed, device=device,
    )  # fmt: skip
    model = ckpt.build(device)
    original_acc = evaluate(model, test, device)[1]
    return CompressionJob(ckpt, model, data, train, val, test, device, finetune,
                          original_run, original_acc, options)  # fmt: skip


def finish_job(
    job: CompressionJob,
    stage: Path,
    out: Path,
    *,
    label: str,
    step: str,
    compressed: tuple[ConvNet, ModelSpec],
    final: ConvNet,
    history: list[dict],
    best,
    config: dict,
    notes: Sequence[str],
    progress: Progress,
) -> dict:
    """Write what every compressed run directory holds: ``<label>.pt`` (right after compression),
    ``checkpoint.pt`` (best fine-tuned epoch), ``last.pt``, ``history.csv``, ``curves.png``,
    ``report.csv``/``report.md`` (original / compressed / fine-tuned), ``config.json``,
    ``summary.json``. `final` is the fine-tuned model (trained in place); returns the summary."""
    spec = job.spec
    lineage = [*lineage_of(job.ckpt), step]
    meta = {**job.ckpt.meta, "compressed_from": str(job.ckpt.path), "lineage": lineage}
    compressed_model, compressed_spec = compressed
    compressed_acc = job.accuracy(compressed_model)
    compressed_meta = {**meta, "test_acc": compressed_acc}
    save_checkpoint(stage / f"{label}.pt", compressed_spec, compressed_model, compressed_meta)
    final_spec = compressed_spec
    extra_columns = [c for c in (history[0] if history else {}) if c not in HISTORY_COLUMNS]
    history_table = pd.DataFrame(history, columns=[*HISTORY_COLUMNS, *extra_columns])
    history_table.to_csv(stage / "history.csv", index=False)
    save_checkpoint(stage / "last.pt", final_spec, final, {**meta, "test_acc": job.accuracy(final)})
    if best is not None:
        final.load_state_dict(best.best_state)
    final_acc = job.accuracy(final)
    save_checkpoint(stage / CHECKPOINT_NAME, final_spec, final, {
        **meta, "test_acc": final_acc, "epoch": best.best_epoch if best else 0,
        "val_acc": best.best_val_acc if best else None,
    })  # fmt: skip
    if len(history_table):
        plot_training_curves(history_table, stage / "curves.png", title=f"fine-tuning {label} {spec.name}")
    progress.log("measuring parameters, MACs, size and latency of the three models")
    compared = [
        ("original", job.model, spec, job.original_acc, job.ckpt.path, lineage[:-1]),
        (label, compressed_model, compressed_spec, compressed_acc, stage / f"{label}.pt", lineage),
        (f"{label}+fine-tuned", final, final_spec, final_acc, stage / CHECKPOINT_NAME, lineage),
    ]
    rows = [
        _measure_row(name, model, s, acc, path, job.options.bench_seconds, job.options.threads, steps)
        for name, model, s, acc, path, steps in compared
    ]
    table = comparison_table(rows)
    notes = [
        f"{' → '.join(lineage)}; fine-tuned {job.finetune.epochs} epochs",
        *notes,
        "MACs: torch-pruning's counter, one image; latency: median of torch.utils.benchmark runs on "
        f"{rows[0]['device']} with {rows[0]['threads']} threads; test_acc: full test split",
    ]
    write_report(table, stage, f"{step} of {spec.name}", notes)
    write_json(stage / "config.json", {
        "compressed_from": str(job.ckpt.path), "lineage": lineage, "original_run": job.original_run,
        **config, "finetune": job.finetune.to_dict(), "device": str(job.device),
    })  # fmt: skip
    summary = {
        "run": str(out),
        "lineage": lineage,
        "original_test_acc": job.original_acc,
        f"{label}_test_acc": compressed_acc,
        "test_acc": final_acc,
        "original_parameters": count_parameters(job.model),
        "parameters": count_parameters(final),
        "conv_widths": final_spec.conv_widths,
        "macs_reduction": float(table["macs_reduction"].iloc[-1]),
        "latency_reduction_b1": float(table["latency_reduction_b1"].iloc[-1]),
        "latency_reduction_b128": float(table["latency_reduction_b128"].iloc[-1]),
    }
    write_json(stage / "summary.json", summary)
    return {**summary, "table": table}


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
    and write the pruned run directory `out` (see `finish_job`, plus ``widths.csv``). Returns the
    summary dict with the report table."""
    progress = progress or Progress(enabled=False)
    out = Path(out)
    cfg.validate()
    if calibration_samples < 0:
        raise CompresskitError(f"--calibration-samples {calibration_samples} must be 0 or more.")
    needs_data = cfg.importance in ("taylor", "separation") or cfg.allocate == "csi"
    if needs_data and calibration_samples == 0:
        what = f"--importance {cfg.importance}" if cfg.allocate != "csi" else "--allocate csi"
        raise CompresskitError(f"{what} needs calibration data, but --calibration-samples is 0.")
    options = options or JobOptions()
    job = open_job(checkpoint, out, finetune, options)
    spec = job.spec
    batches = job.calibration(calibration_samples) if calibration_samples else None
    layer_ratios = None
    if cfg.allocate == "csi":
        assert batches is not None
        csi, input_csi = block_csi(job.model, batches)
        layer_ratios = csi_allocation(
            spec, csi, input_csi, cfg.ratio, max_layer_ratio=cfg.max_layer_ratio, round_to=cfg.round_to
        )
        progress.log("per-layer ratios from CSI gains: " + ", ".join(f"{r:.2f}" for r in layer_ratios))
    work = job.ckpt.build(job.device)
    example = torch.zeros(1, *_input_shape(spec), device=job.device)
    pruner = ChannelPruner(work, cfg, example, batches, layer_ratios=layer_ratios)
    epochs_per_step = [finetune.epochs // cfg.steps] * cfg.steps
    epochs_per_step[-1] += finetune.epochs - sum(epochs_per_step)
    history: list[dict] = []
    best = None
    with staged_directory(out, overwrite=options.overwrite) as stage:
        for step, epochs in enumerate(epochs_per_step, start=1):
            widths = pruner.step()
            progress.log(f"pruning step {step}/{cfg.steps}: conv widths {widths}")
            if step == cfg.steps:
                compressed = rebuild(work, spec)
            rows, result = job.fine_tune(work, epochs, progress, step=step)
            history += [{**row, "epoch": row["epoch"] + len(history)} for row in rows]
            if step == cfg.steps:
                best = result
        final, final_spec = rebuild(work, spec)
        widths_table = pd.DataFrame({
            "layer": [f"block{i}" for i in range(1, len(spec.conv_widths) + 1)],
            "original": spec.conv_widths, "pruned": final_spec.conv_widths,
        })  # fmt: skip
        widths_table["kept"] = widths_table["pruned"] / widths_table["original"]
        widths_table.to_csv(stage / "widths.csv", index=False)
        step_name = (
            f"prune {cfg.importance} {cfg.ratio:g} ({cfg.scope}, allocate {cfg.allocate}, steps {cfg.steps})"
        )
        return finish_job(
            job, stage, out, label="pruned", step=step_name, compressed=compressed, final=final,
            history=history, best=best, progress=progress,
            config={"prune": cfg.to_dict(), "layer_ratios": layer_ratios,
                    "calibration_samples": calibration_samples},
            notes=[f"conv widths {spec.conv_widths} → {final_spec.conv_widths}"],
        )  # fmt: skip


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
    and write the run directory `out` (see `finish_job`, plus ``ranks.csv``: every layer's full
    rank, chosen rank, kept energy, MACs before/after, and whether it was factorized)."""
    progress = progress or Progress(enabled=False)
    out = Path(out)
    cfg.validate()
    options = options or JobOptions()
    job = open_job(checkpoint, out, finetune, options)
    compressed_model, compressed_spec, plans = factorize(job.model, job.spec, cfg)
    plan_table = pd.DataFrame([asdict(plan) for plan in plans])
    done = plan_table[plan_table["action"] == "factorized"]["layer"].tolist()
    if not done:
        raise CompresskitError(
            "no layer would get cheaper at this rank, so nothing was factorized; "
            "lower --energy or --rank-ratio."
        )
    left = plan_table[plan_table["action"] != "factorized"]
    left_alone = ", ".join(f"{r.layer} ({r.action})" for r in left.itertuples()) or "none"
    progress.log(f"factorized {', '.join(done)}; left alone: {left_alone}")
    work = copy.deepcopy(compressed_model)
    with staged_directory(out, overwrite=options.overwrite) as stage:
        plan_table.to_csv(stage / "ranks.csv", index=False)
        history, best = job.fine_tune(work, finetune.epochs, progress)
        how = f"energy {cfg.energy:g}" if cfg.energy is not None else f"rank ratio {cfg.rank_ratio:g}"
        return finish_job(
            job, stage, out, label="factorized", step=f"lowrank {how} ({cfg.layers})",
            compressed=(compressed_model, compressed_spec), final=work, history=history, best=best,
            progress=progress, config={"lowrank": cfg.to_dict(), "factorized": done},
            notes=[f"factorized: {', '.join(done)}", f"left alone: {left_alone}"],
        )  # fmt: skip


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
    `keep_blocks` blocks), attach a fresh head, fine-tune, and write the run directory `out` (see
    `finish_job`, plus ``depth.csv``: each block's test CSI, gain, and whether it was kept)."""
    progress = progress or Progress(enabled=False)
    out = Path(out)
    if samples <= 0:
        raise CompresskitError(f"--samples {samples} must be a positive integer.")
    if keep_blocks is not None and keep_blocks < 1:
        raise CompresskitError(f"--keep-blocks {keep_blocks} would remove every block; keep at least 1.")
    options = options or JobOptions()
    job = open_job(checkpoint, out, finetune, options)
    csi, input_csi = block_csi(job.model, job.test_batches(samples))
    keep, gains = choose_depth(
        csi, input_csi, min_gain=None if keep_blocks else min_gain, keep_blocks=keep_blocks
    )
    if keep == len(csi) and keep_blocks is None:
        raise CompresskitError(
            f"every block raises test CSI by more than --min-gain {min_gain}; nothing to remove "
            "(raise --min-gain or give --keep-blocks)."
        )
    table = pd.DataFrame({
        "block": [f"block{i}" for i in range(1, len(csi) + 1)], "csi_test": csi, "gain": gains,
        "kept": [i < keep for i in range(len(csi))],
    })  # fmt: skip
    dropped = table[~table["kept"]].itertuples()
    removed = ", ".join(f"{r.block} (test CSI {r.csi_test:.3f}, gain {r.gain:+.3f})" for r in dropped)
    progress.log(f"keeping {keep} blocks; removing {removed}")
    compressed_model, compressed_spec = truncate(job.model, job.spec, keep, seed=finetune.seed)
    work = copy.deepcopy(compressed_model)
    with staged_directory(out, overwrite=options.overwrite) as stage:
        table.to_csv(stage / "depth.csv", index=False)
        history, best = job.fine_tune(work, finetune.epochs, progress)
        rule = f"keep {keep_blocks}" if keep_blocks else f"min gain {min_gain:g}"
        result = finish_job(
            job, stage, out, label="truncated", step=f"depth {keep} blocks ({rule})",
            compressed=(compressed_model, compressed_spec), final=work, history=history, best=best,
            progress=progress, config={"depth": {"min_gain": min_gain, "keep_blocks": keep_blocks,
                                                 "samples": samples, "kept": keep}},
            notes=[f"removed {removed}"],
        )  # fmt: skip
    return {**result, "depth": table}


def sensitivity_run(
    checkpoint: str | Path,
    ratios: Sequence[float],
    *,
    importance: str = "l1",
    samples: int | None = None,
    data_dir: str | None = None,
    download: bool = True,
    batch_size: int = 256,
    device: str = "auto",
    progress: Progress | None = None,
) -> dict:
    """Prune each conv layer alone by each of `ratios` (no fine-tuning) and measure test accuracy.

    Writes ``sensitivity.csv`` (layer, ratio, channels_kept, test_acc, acc_drop) and
    ``sensitivity.png`` into the run directory. `samples` limits the test images (class-balanced).
    """
    progress = progress or Progress(enabled=False)
    if not ratios or any(not 0 < r < 1 for r in ratios):
        raise CompresskitError(f"--ratios {list(ratios)}: every ratio must be strictly between 0 and 1.")
    PruneConfig(importance=importance).validate()
    if importance in ("taylor", "separation"):
        raise CompresskitError(f"--importance {importance} needs calibration data; sensitivity uses l1, l2, "
                               "bn-scale or random.")  # fmt: skip
    if batch_size <= 0:
        raise CompresskitError(f"--batch-size {batch_size} must be a positive integer.")
    ckpt = load_checkpoint(checkpoint)
    torch_device = resolve_device(device)
    data = checkpoint_dataset(ckpt, data_dir, download=download)
    test = data.test
    if samples:
        test = test.subset(balanced_subset(test.labels, samples, 0))
    loader = Loader(test, batch_size, mean=data.mean, std=data.std, device=torch_device)
    model = ckpt.build(torch_device)
    _, base_acc = evaluate(model, loader, torch_device)
    convs = len(ckpt.spec.conv_widths)
    rows = []
    with progress.task("layers × ratios", total=convs * len(ratios)) as advance:
        for layer in range(convs):
            for ratio in ratios:
                layer_ratios = [ratio if i == layer else 0.0 for i in range(convs)]
                pruned, spec = prune_copy(
                    model, ckpt.spec, PruneConfig(importance=importance), layer_ratios=layer_ratios,
                    prune_head=False,
                )  # fmt: skip
                _, acc = evaluate(pruned, loader, torch_device)
                rows.append({
                    "layer": f"block{layer + 1}", "ratio": ratio,
                    "channels_kept": spec.conv_widths[layer], "channels": ckpt.spec.conv_widths[layer],
                    "test_acc": acc, "acc_drop": base_acc - acc,
                })  # fmt: skip
                advance()
    table = pd.DataFrame(rows)
    run_dir = ckpt.path.parent
    with staged_directory(run_dir / "sensitivity", overwrite=True) as stage:
        table.to_csv(stage / "sensitivity.csv", index=False)
        title = f"{ckpt.spec.name}: one layer pruned"
        plot_sensitivity(table, base_acc, stage / "sensitivity.png", title=title)
    files = [str(run_dir / "sensitivity" / n) for n in ("sensitivity.csv", "sensitivity.png")]
    return {"table": table, "base_acc": base_acc, "files": files, "checkpoint": str(ckpt.path)}


def report_run(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    *,
    device: str = "cpu",
    bench_seconds: float = 1.0,
    threads: int | None = None,
    overwrite: bool = True,
    progress: Progress | None = None,
) -> dict:
    """Compare any runs: parameters, MACs, size, latency (measured now) and the test accuracy each
    checkpoint recorded when it was saved; reductions relative to the first run. Writes
    ``report.csv``, ``report.md`` and ``pareto.png`` (accuracy vs MACs and vs latency) into `out`."""
    progress = progress or Progress(enabled=False)
    if not checkpoints:
        raise CompresskitError("report needs at least one run directory or checkpoint.")
    if bench_seconds <= 0:
        raise CompresskitError(f"--bench-seconds {bench_seconds} must be positive.")
    if threads is not None and threads < 1:
        raise CompresskitError(f"--threads {threads} must be a positive integer.")
    loaded = [load_checkpoint(c) for c in checkpoints]
    for ckpt in loaded:
        if not isinstance(ckpt.meta.get("test_acc"), float):
            raise CompresskitError(
                f"{ckpt.path} records no test accuracy (compresskit train and prune write one)."
            )
    torch_device = resolve_device(device)
    rows = []
    with progress.task("measuring", total=len(loaded)) as advance:
        for ckpt in loaded:
            name = ckpt.path.parent.name if ckpt.path.name == CHECKPOINT_NAME else ckpt.path.stem
            model = ckpt.build(torch_device)
            acc = ckpt.meta["test_acc"]
            steps = lineage_of(ckpt)
            rows.append(_measure_row(name, model, ckpt.spec, acc, ckpt.path, bench_seconds, threads, steps))
            advance()
    table = comparison_table(rows)
    with staged_directory(Path(out), overwrite=overwrite) as stage:
        notes = [f"{row['model']}: {ckpt.path}" for row, ckpt in zip(rows, loaded, strict=True)]
        write_report(table, stage, "model comparison", notes)
        plot_pareto(table, stage / "pareto.png", title="accuracy vs cost")
    files = [str(Path(out) / n) for n in ("report.csv", "report.md", "pareto.png")]
    return {"table": table, "files": files}
