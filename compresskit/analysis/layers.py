"""The per-layer table: CSI, SI and linear-probe accuracy of every chosen layer, train vs test.

Each split costs one forward pass over its batches when its features fit the memory budget, two
when they do not, whatever the number of layers (plus a one-sample pass that tells the layers'
output sizes and how many times each runs per forward pass: `capture.probe_layers`):

1. one pass with hooks on every chosen layer (`capture.consume_layer_outputs`) hands each output
   over the moment its layer returns, without copying it: it adds to the class sums for CSI
   (`StreamingCenterSeparation.add`), is copied into the split's feature store (float32, on the
   host, flattened) when SI is asked for or when the features fit the budget, and is pooled for
   the probe;
2. CSI then scores every sample against the now fixed class centres: from the stored features
   (mode ``"memory"``), or, when they were not stored, in a second forward pass (mode
   ``"streaming"``). A sample's nearest centre is exact (see `separation`), so both modes give the
   same CSI.

A split's features take ``samples × Σ dims × 4`` bytes (`memory.features_nbytes`); they are kept
for CSI when that is at most ``memory_budget`` (default: `memory.default_memory_budget`, a quarter of
the total memory), and freed once the split is scored. float16 storage would halve them but changed
an SI by 1e-3 on real features (see `memory.FEATURE_ITEMSIZE`), so they stay float32. Streamed CSI
memory is bounded by the class sums (classes × dims per layer, float64). SI needs every sample's
features of a layer at once whatever the budget (n × dims float32 per layer, both splits held until
the table is made); its distances are chunked (see `separation.separation_index`). With the model on
CUDA the features are still kept on the host (the budget is host memory); scoring moves them to the
model's device one batch at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from compresskit.analysis.capture import Layer, LayerProbe, consume_layer_outputs, probe_layers
from compresskit.analysis.memory import default_memory_budget, features_nbytes, format_size
from compresskit.analysis.probes import linear_probe, pool_features
from compresskit.analysis.separation import (
    StreamingCenterSeparation,
    center_separation_index,
    separation_index,
)
from compresskit.data import Loader
from compresskit.errors import CompresskitError, ParameterError
from compresskit.models import ConvNet
from compresskit.progress import Progress

METRICS = ("csi", "si", "probe")
TABLE_COLUMNS = (
    "layer", "module", "output_shape", "dims",
    "csi_train", "csi_test", "si_train", "si_test", "probe_train", "probe_test",
)  # fmt: skip


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"csi,si,probe"`` → ("csi", "si", "probe"); ``"none"`` → (). Unknown names are refused."""
    text = text.strip().lower()
    if text == "none":
        return ()
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise ParameterError(
            f"{{0}} must be a comma list of {', '.join(METRICS)}, or none; got '{text}'.", "metrics"
        )
    return names


@dataclass(frozen=True)
class FeaturePlan:
    """How one split's features were handled.

    ``mode`` is ``"memory"`` (every layer's flattened features of the split held on the host; CSI
    scored from them, one forward pass) or ``"streaming"`` (not held; CSI, if asked for, scored in a
    second forward pass). ``passes`` is the number of forward passes made over the split;
    ``needed_bytes`` what holding the split's features takes (`memory.features_nbytes`),
    ``budget_bytes`` the budget it was compared with.
    """

    mode: str
    passes: int
    needed_bytes: int
    budget_bytes: int

    def describe(self) -> str:
        """One short line for logs and summaries, e.g. "in memory, 1 pass (1.2 MiB, budget 6.0 GiB)"."""
        sizes = f"{format_size(self.needed_bytes)}, budget {format_size(self.budget_bytes)}"
        where = "in memory" if self.mode == "memory" else "streamed"
        return f"{where}, {self.passes} pass{'es' if self.passes > 1 else ''} ({sizes})"


def plan_features(metrics: Sequence[str], samples: int, dims: Sequence[int], budget: int) -> FeaturePlan:
    """Hold a split's features (`samples` × each layer's `dims`, float32) or stream them.

    SI needs them all at once, so they are held whatever the budget; for CSI alone they are held
    when they fit `budget` (bytes), which saves the second forward pass. Without CSI one pass does.
    """
    needed = features_nbytes(dims, samples)
    hold = "si" in metrics or ("csi" in metrics and needed <= budget)
    passes = 2 if "csi" in metrics and not hold else 1
    return FeaturePlan("memory" if hold else "streaming", passes, needed, budget)


class _SplitFeatures:
    """What one split's passes produce for every layer."""

    def __init__(self, layers: Sequence[Layer], num_samples: int) -> None:
        self.n = num_samples
        self.layers = list(layers)  # as probed: calls per forward set, optional layers left out
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.centres = {layer.name: StreamingCenterSeparation() for layer in layers}
        self.flat: dict[str, torch.Tensor] = {}
        self.pooled: dict[str, torch.Tensor] = {}
        self.labels = torch.empty(num_samples, dtype=torch.int64)
        self.plan: FeaturePlan | None = None

    def store(self, store: dict[str, torch.Tensor], name: str, start: int, value: torch.Tensor) -> None:
        """Copy a batch's outputs m×… into rows start…start+m of ``store[name]`` (n×d float32 on the
        host, made at the first call), flattened in row-major order whatever their memory layout."""
        if name not in store:
            store[name] = torch.empty(self.n, math.prod(value.shape[1:]), dtype=torch.float32)
        store[name][start : start + len(value)].view(value.shape).copy_(value)


Batches = Loader | Sequence[tuple[torch.Tensor, torch.Tensor]]
"""What the analysis reads: a `Loader`, or a list of ``(x, y)`` batches on the model's device; it is
read once per forward pass, so it must be re-iterable."""


def _num_samples(batches: Batches) -> int:
    count = getattr(batches, "num_samples", None)
    return int(count) if count is not None else sum(len(y) for _, y in batches)


def _probe(model: nn.Module, batches: Batches, layers: Sequence[Layer]) -> LayerProbe:
    """Each layer's output shape per sample and calls per forward pass, from a forward pass of one
    sample (`capture.probe_layers`)."""
    for x, y in batches:
        if len(y):
            return probe_layers(model, x[:1], layers)
    raise ValueError("the loader yielded no samples; there is nothing to analyse.")


def _passes(
    model: nn.Module,
    batches: Batches,
    layers: Sequence[Layer],
    metrics: Sequence[str],
    progress: Progress,
    split: str,
    budget: int,
) -> _SplitFeatures:
    probe = _probe(model, batches, layers)
    layers = probe.layers
    if probe.left_out:
        progress.log(f"{split}: left out {', '.join(f'{path} ({why})' for path, why in probe.left_out)}")
    out = _SplitFeatures(layers, _num_samples(batches))
    out.shapes = probe.shapes
    plan = out.plan = plan_features(metrics, out.n, [math.prod(s) for s in out.shapes.values()], budget)
    progress.log(f"{split}: features {plan.describe()}")
    first = layers[0].name

    def consume(name: str, value: torch.Tensor, y: torch.Tensor, start: int) -> None:
        if len(value) != len(y):
            raise CompresskitError(
                f"layers: module '{name}' returned {len(value)} rows for a batch of {len(y)} samples; "
                "only outputs with the batch as their first dimension can be analysed."
            )
        if name == first:
            out.labels[start : start + len(y)] = y.cpu()
        if "csi" in metrics:
            out.centres[name].add(value, y)
        if plan.mode == "memory":
            out.store(out.flat, name, start, value)
        if "probe" in metrics:
            out.store(out.pooled, name, start, pool_features(value))

    with progress.task(f"{split}: forward pass", total=len(batches)) as advance:
        consume_layer_outputs(model, batches, list(layers), consume, after_batch=advance)
    if "csi" in metrics and plan.mode == "memory":
        for name, centres in out.centres.items():
            centres.score(out.flat[name], out.labels)
        if "si" not in metrics:
            out.flat.clear()
    elif "csi" in metrics:
        with progress.task(f"{split}: forward pass 2/2", total=len(batches)) as advance:
            consume_layer_outputs(
                model, batches, list(layers), lambda name, value, y, _: out.centres[name].score(value, y),
                after_batch=advance,
            )  # fmt: skip
    return out


def layer_table(
    model: nn.Module,
    train: Batches,
    test: Batches | None,
    layers: Sequence[Layer],
    metrics: Sequence[str] = METRICS,
    *,
    memory_budget: int | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """One row per layer with the columns of `TABLE_COLUMNS` (without the ``*_test`` ones when
    `test` is None; the probe is then scored on the samples it was fitted on).

    `train` and `test` yield the (unaugmented, normalised) samples to analyse, usually
    class-balanced subsets, on the model's device. CSI and SI are fractions in [0, 1]; the probe
    columns are accuracies in [0, 1] of a linear probe fitted on the train samples (see `probes`).
    Metrics not asked for are NaN. Every output is flattened per sample (B×C×H×W → B×(C·H·W)). The
    rows follow `layers` as probed (`capture.probe_layers`): an optional layer that does not run or
    returns no tensor has no row, and a module that runs several times per forward pass is
    measured on its last call's output.

    `memory_budget` (bytes; default `memory.default_memory_budget()`) decides per split whether the
    features are held for a single forward pass or streamed in two (see the module docstring);
    ``table.attrs["features"]`` records the choice, ``{"train": FeaturePlan, "test": FeaturePlan}``.
    """
    progress = progress or Progress(enabled=False)
    metrics = tuple(metrics)
    budget = _budget(memory_budget)
    loaders = {"train": train} if test is None else {"train": train, "test": test}
    splits = {
        split: _passes(model, loader, layers, metrics, progress, split, budget)
        for split, loader in loaders.items()
    }
    probed = splits["train"].layers
    if "test" in splits and [x.name for x in splits["test"].layers] != [x.name for x in probed]:
        raise ValueError("the train and test samples gave different layers to analyse; give both alike.")
    rows = []
    with progress.task("metrics per layer", total=len(probed)) as advance:
        for layer in probed:
            shape = splits["train"].shapes[layer.name]
            row: dict[str, object] = {
                "layer": layer.name,
                "module": layer.path,
                "output_shape": "×".join(str(s) for s in shape),
                "dims": math.prod(shape),
            }
            for split, feats in splits.items():
                row[f"csi_{split}"] = feats.centres[layer.name].value() if "csi" in metrics else np.nan
                row[f"si_{split}"] = (
                    separation_index(feats.flat.pop(layer.name), feats.labels) if "si" in metrics else np.nan
                )
            if "probe" in metrics:
                fit, scored = splits["train"], splits.get("test")
                x_fit = fit.pooled.pop(layer.name)
                x_score = x_fit if scored is None else scored.pooled.pop(layer.name)
                row["probe_train"], row["probe_test"] = linear_probe(
                    x_fit, fit.labels, x_score, fit.labels if scored is None else scored.labels
                )  # without test samples the second accuracy repeats the first; its column is dropped
            else:
                row["probe_train"] = row["probe_test"] = np.nan
            rows.append(row)
            advance()
    columns = [c for c in TABLE_COLUMNS if "test" in splits or not c.endswith("_test")]
    table = pd.DataFrame(rows, columns=columns)
    table.attrs["features"] = {split: feats.plan for split, feats in splits.items()}
    return table


def layer_csi(
    model: nn.Module,
    loader: Batches,
    layers: Sequence[Layer],
    *,
    memory_budget: int | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, float], FeaturePlan]:
    """CSI of every layer of `layers` (as probed: see `layer_table`) on the samples `loader` yields:
    ``{name: CSI in [0, 1]}`` in layer order, and the `FeaturePlan` that says how the features were
    handled (held for one forward pass when they fit `memory_budget` bytes, default a quarter of the
    total memory; streamed in two beyond it; the same CSI either way)."""
    progress = progress or Progress(enabled=False)
    feats = _passes(model, loader, layers, ("csi",), progress, "samples", _budget(memory_budget))
    assert feats.plan is not None
    return {layer.name: feats.centres[layer.name].value() for layer in feats.layers}, feats.plan


def _budget(memory_budget: int | None) -> int:
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    if budget < 0:
        raise ValueError(f"memory_budget must be a number of bytes >= 0, got {memory_budget!r}.")
    return budget


def block_csi(model: ConvNet, batches: Batches) -> tuple[list[float], float]:
    """CSI of every conv block's output on `batches` (in model order), and of the input images."""
    layers = [Layer(block.name, block.path, block.module) for block in model.named_blocks("block")]
    csi, _ = layer_csi(model, batches, layers)
    pixels = center_separation_index(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))
    return [csi[layer.name] for layer in layers], pixels
