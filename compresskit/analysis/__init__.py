"""What each layer of a trained network separates: the notebook API.

>>> from compresskit.analysis import center_separation_index, separation_index
>>> center_separation_index(features, labels)   # features n×…, labels n → float in [0, 1]
"""

from compresskit.analysis.capture import (
    LAYER_PRESETS,
    Layer,
    LayerCapture,
    iterate_layer_outputs,
    select_layers,
)
from compresskit.analysis.layers import METRICS, TABLE_COLUMNS, layer_table, parse_metrics
from compresskit.analysis.probes import linear_probe, pool_features
from compresskit.analysis.separation import (
    StreamingCenterSeparation,
    center_separation_by_class,
    center_separation_index,
    separation_index,
    separation_index_by_class,
)

__all__ = [
    "LAYER_PRESETS",
    "METRICS",
    "TABLE_COLUMNS",
    "Layer",
    "LayerCapture",
    "StreamingCenterSeparation",
    "center_separation_by_class",
    "center_separation_index",
    "iterate_layer_outputs",
    "layer_table",
    "linear_probe",
    "parse_metrics",
    "pool_features",
    "select_layers",
    "separation_index",
    "separation_index_by_class",
]
