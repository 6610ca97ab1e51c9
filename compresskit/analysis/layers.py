"""The per-layer table: CSI, SI and linear-probe accuracy of every chosen layer, train vs test.

Each split costs at most two forward passes over its batches, whatever the number of layers:

1. one pass with hooks on every chosen layer (`capture.iterate_layer_outputs`) accumulates the
   class sums for CSI (`StreamingCenterSeparation.add`), and keeps the flattened outputs for SI and
   the pooled outputs for the probe when those metrics are asked for;
2. a second pass scores every sample against the now fixed class centres (CSI only).

CSI memory is bounded by the class sums (classes × dims per layer, float64), not by the number
of samples. SI needs every sample's features of a layer at once (n × dims float32 per layer,
held for one split at a time); its distances are chunked (see `separation.separation_index`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from compresskit.analysis.capture import Layer, iterate_layer_outputs
from compresskit.analysis.probes import linear_probe, pool_features
from compresskit.analysis.separation import StreamingCenterSeparation, separation_index
from compresskit.data import Loader
from compresskit.errors import CompresskitError
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
        raise CompresskitError(
            f"--metrics '{text}' is not allowed; give a comma list of {', '.join(METRICS)}, or none."
        )
    return names


class _SplitFeatures:
    """What one split's passes produce for every layer."""

    def __init__(self, layers: Sequence[Layer], num_samples: int) -> None:
        self.n = num_samples
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.centres = {layer.name: StreamingCenterSeparation() for layer in layers}
        self.flat: dict[str, torch.Tensor] = {}
        self.pooled: dict[str, torch.Tensor] = {}
        self.labels = torch.empty(num_samples, dtype=torch.int64)

    @staticmethod
    def _store(store: dict[str, torch.Tensor], name: str, n: int, start: int, rows: torch.Tensor) -> None:
        if name not in store:
            store[name] = torch.empty(n, rows.shape[1], dtype=torch.float32)
        store[name][start : start + len(rows)] = rows.cpu()


def _passes(
    model: nn.Module,
    loader: Loader,
    layers: Sequence[Layer],
    metrics: Sequence[str],
    progress: Progress,
    split: str,
) -> _SplitFeatures:
    out = _SplitFeatures(layers, loader.num_samples)
    passes = 2 if "csi" in metrics else 1
    start = 0
    with progress.task(f"{split}: forward pass 1/{passes}", total=len(loader)) as advance:
        for outputs, y in iterate_layer_outputs(model, iter(loader), list(layers)):
            out.labels[start : start + len(y)] = y.cpu()
            for name, value in outputs.items():
                out.shapes[name] = tuple(value.shape[1:])
                if "csi" in metrics:
                    out.centres[name].add(value, y)
                if "si" in metrics:
                    out._store(out.flat, name, out.n, start, value.reshape(len(value), -1).float())
                if "probe" in metrics:
                    out._store(out.pooled, name, out.n, start, pool_features(value))
            start += len(y)
            advance()
    if "csi" in metrics:
        with progress.task(f"{split}: forward pass 2/2", total=len(loader)) as advance:
            for outputs, y in iterate_layer_outputs(model, iter(loader), list(layers)):
                for name, value in outputs.items():
                    out.centres[name].score(value, y)
                advance()
    return out


def layer_table(
    model: nn.Module,
    train: Loader,
    test: Loader,
    layers: Sequence[Layer],
    metrics: Sequence[str] = METRICS,
    *,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """One row per layer with the columns of `TABLE_COLUMNS`.

    `train` and `test` yield the (unaugmented, normalised) samples to analyse, usually
    class-balanced subsets. CSI and SI are fractions in [0, 1]; the probe columns are accuracies in
    [0, 1] of a linear probe fitted on the train samples (see `probes`). Metrics not asked for are
    NaN.
    """
    progress = progress or Progress(enabled=False)
    metrics = tuple(metrics)
    splits = {
        split: _passes(model, loader, layers, metrics, progress, split)
        for split, loader in (("train", train), ("test", test))
    }
    rows = []
    with progress.task("metrics per layer", total=len(layers)) as advance:
        for layer in layers:
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
                row["probe_train"], row["probe_test"] = linear_probe(
                    splits["train"].pooled.pop(layer.name),
                    splits["train"].labels,
                    splits["test"].pooled.pop(layer.name),
                    splits["test"].labels,
                )
            else:
                row["probe_train"] = row["probe_test"] = np.nan
            rows.append(row)
            advance()
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def block_csi(
    model: ConvNet, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[list[float], float]:
    """CSI of every conv block's output on `batches` (in model order), and of the input images."""
    layers = [Layer(block.name, block.path, block.module) for block in model.named_blocks("block")]
    streams = {layer.name: StreamingCenterSeparation() for layer in layers}
    pixels = StreamingCenterSeparation()
    for outputs, y in iterate_layer_outputs(model, iter(batches), layers):
        for name, value in outputs.items():
            streams[name].add(value, y)
    for x, y in batches:
        pixels.add(x, y)
    for outputs, y in iterate_layer_outputs(model, iter(batches), layers):
        for name, value in outputs.items():
            streams[name].score(value, y)
    for x, y in batches:
        pixels.score(x, y)
    return [streams[layer.name].value() for layer in layers], pixels.value()
