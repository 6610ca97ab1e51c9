"""The analyze job: per-layer CSI, SI and linear-probe accuracy of a checkpoint, train vs test,
into ``RUN/analysis/`` (replaced as a whole, never half-written, and only when it is analyze's own
earlier output; files this call does not redo are kept)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from compresskit.data import balanced_loader
from compresskit.errors import CompresskitError
from compresskit.jobs.anymodel import model_name
from compresskit.jobs.common import open_checkpoint
from compresskit.progress import Progress
from compresskit.rundir import RUN_FILE, check_derived_folder, staged_output
from compresskit.train import resolve_device

FOLDER = "analysis"


def analyze_run(
    checkpoint: str | Path,
    *,
    samples: int = 1000,
    layers: str | None = None,
    metrics: str = "csi,si,probe",
    filters: bool = False,
    data_dir: str | None = None,
    download: bool = True,
    batch_size: int = 256,
    device: str = "auto",
    seed: int = 0,
    memory_budget: int | str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Per-layer CSI, SI and linear-probe accuracy of `checkpoint`, on class-balanced subsets of
    `samples` training images (from the part of train the run was fitted on: its recorded split,
    checked) and `samples` test images.

    `layers`: None is the model's default (``blocks`` for a compresskit ConvNet, ``all`` for any
    other model), else a preset, a regular expression over module paths, or a comma list of module
    paths (`layer_selection`; see `analysis.selection`).

    `memory_budget` (bytes, or a size such as "4GiB"; default a quarter of the total memory) is
    what each split's features may take to be held for a single forward pass (see
    `analysis.layers`); `device` is auto, cpu or cuda (cuda refused when none is available).

    Writes ``layers.csv`` and ``separation.png`` (and ``filters.png`` with `filters`) into
    ``RUN/analysis/``. Returns ``{"table": DataFrame, "files": [...], "features": {split:
    FeaturePlan}, ...}``.
    """
    from compresskit.analysis import (
        default_memory_budget,
        layer_table,
        parse_metrics,
        parse_size,
        select_layers,
    )
    from compresskit.plots import plot_filters, plot_separation

    progress = progress or Progress(enabled=False)
    if batch_size <= 0:
        raise CompresskitError(f"--batch-size {batch_size} must be a positive integer.")
    if samples <= 0:
        raise CompresskitError(f"--samples {samples} must be a positive integer.")
    metric_names = parse_metrics(metrics)
    if memory_budget is None:
        budget = default_memory_budget()
    else:
        try:
            budget = parse_size(memory_budget)
        except ValueError as exc:
            raise CompresskitError(f"--memory-budget {exc}") from None
    if not metric_names and not filters:
        raise CompresskitError("--metrics none leaves nothing to do; ask for a metric or --filters.")
    ckpt, config, data = open_checkpoint(checkpoint, data_dir, download=download)
    folder = ckpt.path.parent / FOLDER
    check_derived_folder(folder, "analyze")
    torch_device = resolve_device(device)
    model = ckpt.build(torch_device)
    try:
        chosen = select_layers(model, layer_selection(model, layers))
    except CompresskitError as exc:  # the library names its parameter; this is the flag
        raise CompresskitError(str(exc).replace("layers", "--layers", 1)) from None
    except ValueError as exc:
        raise CompresskitError(str(exc)) from None
    result: dict = {"checkpoint": str(ckpt.path), "dataset": data.name, "files": []}
    with staged_output(folder, "analyze") as stage:
        if folder.is_dir():  # keep what this call does not redo
            for old in folder.iterdir():
                if old.is_file() and old.name != RUN_FILE:
                    shutil.copy2(old, stage / old.name)
        if metric_names:
            fitted, _ = config.data.split.indices(data.train.labels, str(ckpt.path.parent))
            stats = {"mean": tuple(config.data.mean), "std": tuple(config.data.std), "device": torch_device}
            loaders = [
                balanced_loader(data.train, samples, seed, batch_size=batch_size, among=fitted, **stats),
                balanced_loader(data.test, samples, seed, batch_size=batch_size, **stats),
            ]
            train_count, test_count = (loader.num_samples for loader in loaders)
            progress.log(
                f"analyzing {len(chosen)} layers of {model_name(ckpt)} on {train_count} train and "
                f"{test_count} test images of {data.name} ({', '.join(metric_names)})"
            )
            table = layer_table(
                model, *loaders, chosen, metric_names, memory_budget=budget, progress=progress
            )
            table.to_csv(stage / "layers.csv", index=False)
            plot_separation(table, stage / "separation.png", title=f"{model_name(ckpt)} on {data.name}")
            result.update(
                table=table,
                train_samples=train_count,
                test_samples=test_count,
                features=table.attrs["features"],
            )
        if filters:
            first_conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
            if first_conv is None:
                raise CompresskitError(f"--filters: {ckpt.path} has no convolution layer.")
            plot_filters(
                first_conv.weight.detach().cpu().numpy(),
                stage / "filters.png",
                title=f"first-layer filters of {model_name(ckpt)}",
            )
        result["files"] = [str(folder / p.name) for p in sorted(stage.iterdir()) if p.name != RUN_FILE]
    return result


def layer_selection(model: torch.nn.Module, layers: str | None) -> str | list[str] | None:
    """``--layers`` as `select_layers` takes it: a comma list whose every item is a module path of
    `model` becomes that list of paths; anything else (None, a preset, a regular expression, which
    may hold commas itself) is passed on unchanged."""
    if layers is None or "," not in layers:
        return layers
    items = [item.strip() for item in layers.split(",")]
    paths = {path for path, _ in model.named_modules() if path}
    return items if all(item in paths for item in items) else layers
