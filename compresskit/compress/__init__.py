"""Making a trained network smaller: structured channel pruning (`prune`)."""

from compresskit.compress.prune import (
    ALLOCATIONS,
    IMPORTANCES,
    SCOPES,
    ChannelPruner,
    PruneConfig,
    SeparationImportance,
    csi_allocation,
    fisher_ratio,
    prune_copy,
    pruned_spec,
    rebuild,
)

__all__ = [
    "ALLOCATIONS",
    "IMPORTANCES",
    "SCOPES",
    "ChannelPruner",
    "PruneConfig",
    "SeparationImportance",
    "csi_allocation",
    "fisher_ratio",
    "prune_copy",
    "pruned_spec",
    "rebuild",
]
