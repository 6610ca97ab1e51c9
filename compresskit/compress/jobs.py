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

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from compresskit.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from compresskit.compress.prune import (
    ChannelPruner,
    PruneConfig,
    as_batches,
    csi_allocation,
    layer_csi,
    prune_copy,
    rebuild,
)
from compresskit.data import Augmentation, Loader, balanced_subset, default_augmentation
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
    write_json,
)
from compresskit.train import HISTORY_COLUMNS, TrainConfig, evaluate, fit, resolve_device


def _run_config(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}


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
) -> dict:
    measured = measure_model(
        model, _input_shape(spec), batch_sizes=(1, 128), device=next(model.parameters()).device,
        checkpoint_path=path, min_run_time=bench_seconds, threads=threads,
    )  # fmt: skip
    return {"model": name, **measured.to_row(), "test_acc": test_acc}


def prune_run(
    checkpoint: str | Path,
    out: str | Path,
    cfg: PruneConfig,
    finetune: TrainConfig,
    *,
    calibration_samples: int = 1000,
    data_dir: str | None = None,
    download: bool = True,
    bench_seconds: float = 1.0,
    threads: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict:
    """Prune the model of `checkpoint` by `cfg`, fine-tune it with `finetune` (``epochs`` is the total
    fine-tuning budget, split evenly over ``cfg.steps`` steps, the remainder going to the last),
    and write the pruned run directory `out`. Returns the summary dict (with the report table)."""
    progress = progress or Progress(enabled=False)
    cfg.validate()
    if finetune.epochs < 0:
        raise CompresskitError(f"--finetune-epochs {finetune.epochs} must be 0 or more.")
    if calibration_samples < 0:
        raise CompresskitError(f"--calibration-samples {calibration_samples} must be 0 or more.")
    needs_data = cfg.importance in ("taylor", "separation") or cfg.allocate == "csi"
    if needs_data and calibration_samples == 0:
        what = f"--importance {cfg.importance}" if cfg.allocate != "csi" else "--allocate csi"
        raise CompresskitError(f"{what} needs calibration data, but --calibration-samples is 0.")
    if bench_seconds <= 0:
        raise CompresskitError(f"--bench-seconds {bench_seconds} must be positive.")
    if threads is not None and threads < 1:
        raise CompresskitError(f"--threads {threads} must be a positive integer.")
    ckpt = load_checkpoint(checkpoint)
    out = Path(out)
    if out.resolve() == ckpt.path.parent.resolve():
        raise CompresskitError(f"--out {out} is the run being pruned; choose a new directory.")
    original_run = _run_config(ckpt.path.parent)
    data_cfg = original_run.get("data", {})
    val_fraction = float(data_cfg.get("val_fraction", 0.1))
    finetune.validate(has_validation=val_fraction > 0)
    device = resolve_device(finetune.device)
    check_output_dir(out, overwrite=overwrite)
    data = checkpoint_dataset(ckpt, data_dir, download=download)
    augment_text = data_cfg.get("augment")
    augment = Augmentation.parse(augment_text) if augment_text else default_augmentation(data.name)
    train_loader, val_loader, test_loader = make_loaders(
        data, val_fraction=val_fraction, augment=augment, batch_size=finetune.batch_size,
        seed=finetune.seed, device=device,
    )  # fmt: skip
    model = ckpt.build(device)
    spec = ckpt.spec
    batches = None
    if calibration_samples:
        fitted = _fitted_train_indices(ckpt.path.parent, data)
        pick = fitted[balanced_subset(data.train.labels[fitted], calibration_samples, finetune.seed)]
        calibration = Loader(data.train.subset(pick), 256, mean=data.mean, std=data.std, device=device)
        batches = as_batches(calibration)
    layer_ratios = None
    if cfg.allocate == "csi":
        assert batches is not None
        csi, input_csi = layer_csi(model, batches)
        layer_ratios = csi_allocation(
            spec, csi, input_csi, cfg.ratio, max_layer_ratio=cfg.max_layer_ratio, round_to=cfg.round_to
        )
        progress.log("per-layer ratios from CSI gains: " + ", ".join(f"{r:.2f}" for r in layer_ratios))

    _, original_acc = evaluate(model, test_loader, device)
    work = ckpt.build(device)
    example = torch.zeros(1, *_input_shape(spec), device=device)
    pruner = ChannelPruner(work, cfg, example, batches, layer_ratios=layer_ratios)
    epochs_per_step = [finetune.epochs // cfg.steps] * cfg.steps
    epochs_per_step[-1] += finetune.epochs - sum(epochs_per_step)
    history: list[dict] = []
    best = None
    meta = {**ckpt.meta, "pruned_from": str(ckpt.path), "prune": cfg.to_dict()}
    with staged_directory(out, overwrite=overwrite) as stage:
        for step, epochs in enumerate(epochs_per_step, start=1):
            widths = pruner.step()
            progress.log(f"pruning step {step}/{cfg.steps}: conv widths {widths}")
            if step == cfg.steps:
                pruned_model, pruned_spec_ = rebuild(work, spec)
                _, pruned_acc = evaluate(pruned_model, test_loader, device)
                pruned_meta = {**meta, "test_acc": pruned_acc}
                save_checkpoint(stage / "pruned.pt", pruned_spec_, pruned_model, pruned_meta)
            if epochs:
                step_cfg = TrainConfig(**{**finetune.to_dict(), "epochs": epochs})
                result = fit(work, train_loader, val_loader, step_cfg, progress=progress)
                offset = len(history)
                history += [{**row, "epoch": row["epoch"] + offset, "step": step} for row in result.history]
                if step == cfg.steps:
                    best = result
        final_model, final_spec = rebuild(work, spec)
        history_table = pd.DataFrame(history, columns=[*HISTORY_COLUMNS, "step"])
        history_table.to_csv(stage / "history.csv", index=False)
        _, last_acc = evaluate(final_model, test_loader, device)
        save_checkpoint(stage / "last.pt", final_spec, final_model, {**meta, "test_acc": last_acc})
        if best is not None and best.best_state is not None:
            final_model.load_state_dict(best.best_state)
        _, final_acc = evaluate(final_model, test_loader, device)
        save_checkpoint(stage / CHECKPOINT_NAME, final_spec, final_model, {
            **meta, "test_acc": final_acc, "epoch": best.best_epoch if best else 0,
            "val_acc": best.best_val_acc if best else None,
        })  # fmt: skip
        if len(history_table):
            plot_training_curves(history_table, stage / "curves.png", title=f"fine-tuning pruned {spec.name}")
        widths_table = pd.DataFrame(
            {
                "layer": [f"block{i}" for i in range(1, len(spec.conv_widths) + 1)],
                "original": spec.conv_widths,
                "pruned": final_spec.conv_widths,
            }
        )
        widths_table["kept"] = widths_table["pruned"] / widths_table["original"]
        widths_table.to_csv(stage / "widths.csv", index=False)
        progress.log("measuring parameters, MACs, size and latency of the three models")
        compared = [
            ("original", model, spec, original_acc, ckpt.path),
            ("pruned", pruned_model, pruned_spec_, pruned_acc, stage / "pruned.pt"),
            ("pruned+fine-tuned", final_model, final_spec, final_acc, stage / CHECKPOINT_NAME),
        ]
        rows = [_measure_row(*entry, bench_seconds, threads) for entry in compared]
        table = comparison_table(rows)
        notes = [
            f"pruned from {ckpt.path}: --ratio {cfg.ratio} --importance {cfg.importance} --scope {cfg.scope} "
            f"--allocate {cfg.allocate} --steps {cfg.steps}; fine-tuned {finetune.epochs} epochs",
            f"conv widths {spec.conv_widths} → {final_spec.conv_widths}",
            "MACs: torch-pruning's counter, one 32×32 image; latency: median of torch.utils.benchmark "
            f"runs on {rows[0]['device']} with {rows[0]['threads']} threads; test_acc: full test split",
        ]
        write_report(table, stage, f"pruning {spec.name}", notes)
        config = {
            "pruned_from": str(ckpt.path),
            "original_run": original_run,
            "prune": cfg.to_dict(),
            "layer_ratios": layer_ratios,
            "finetune": finetune.to_dict(),
            "calibration_samples": calibration_samples,
            "device": str(device),
        }
        write_json(stage / "config.json", config)
        summary = {
            "run": str(out),
            "original_test_acc": original_acc,
            "pruned_test_acc": pruned_acc,
            "test_acc": final_acc,
            "original_parameters": count_parameters(model),
            "parameters": count_parameters(final_model),
            "conv_widths": final_spec.conv_widths,
            "macs_reduction": float(table["macs_reduction"].iloc[-1]),
            "latency_reduction_b1": float(table["latency_reduction_b1"].iloc[-1]),
            "latency_reduction_b128": float(table["latency_reduction_b128"].iloc[-1]),
        }
        write_json(stage / "summary.json", summary)
    return {**summary, "table": table}


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
            rows.append(_measure_row(name, model, ckpt.spec, acc, ckpt.path, bench_seconds, threads))
            advance()
    table = comparison_table(rows)
    with staged_directory(Path(out), overwrite=overwrite) as stage:
        notes = [f"{row['model']}: {ckpt.path}" for row, ckpt in zip(rows, loaded, strict=True)]
        write_report(table, stage, "model comparison", notes)
        plot_pareto(table, stage / "pareto.png", title="accuracy vs cost")
    files = [str(Path(out) / n) for n in ("report.csv", "report.md", "pareto.png")]
    return {"table": table, "files": files}
