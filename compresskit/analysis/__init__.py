"""What each layer of a trained network separates: the notebook API.

>>> from compresskit.analysis import center_separation_index, separation_index
>>> center_separation_index(features, labels)   # features n×…, labels n → float in [0, 1]
>>> table = layer_table(model, train_loader, test_loader, select_layers(model),  # any nn.Module
...                     memory_budget=parse_size("4GiB"))   # one forward pass per split if it fits
>>> table.attrs["features"]["test"].mode                   # "memory" or "streaming"
"""

from compresskit.analysis.capture import (
    LayerCapture,
    LayerProbe,
    consume_layer_outputs,
    iterate_layer_outputs,
    probe_layers,
)
from compresskit.analysis.layers import (
    METRICS,
    TABLE_COLUMNS,
    FeaturePlan,
    layer_csi,
    layer_table,
    parse_metrics,
    plan_features,
)
from compresskit.analysis.memory import (
    default_memory_budget,
    features_nbytes,
    format_size,
    parse_size,
)
from compresskit.analysis.probes import linear_probe, pool_features
from compresskit.analysis.sampling import SampleBatches, collect_samples
from compresskit.analysis.selection import GENERIC_PRESETS, LAYER_PRESETS, Layer, select_layers
from compresskit.analysis.separation import (
    StreamingCenterSeparation,
    center_separation_by_class,
    center_separation_index,
    separation_index,
    separation_index_by_class,
)

__all__ = [
    "GENERIC_PRESETS",
    "LAYER_PRESETS",
    "METRICS",
    "TABLE_COLUMNS",
    "FeaturePlan",
    "Layer",
    "LayerCapture",
    "LayerProbe",
    "SampleBatches",
    "StreamingCenterSeparation",
    "center_separation_by_class",
    "center_separation_index",
    "collect_samples",
    "consume_layer_outputs",
    "default_memory_budget",
    "features_nbytes",
    "format_size",
    "iterate_layer_outputs",
    "layer_csi",
    "layer_table",
    "linear_probe",
    "parse_metrics",
    "parse_size",
    "plan_features",
    "pool_features",
    "probe_layers",
    "select_layers",
    "separation_index",
    "separation_index_by_class",
]
