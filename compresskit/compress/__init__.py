"""Making a trained network smaller: structured channel pruning (`prune`).

The names below are `prune`'s, imported on first use (PEP 562 ``__getattr__``): the command line
reads `compresskit.compress.importance` for its choices without loading torch or torch-pruning.
"""

import importlib


def __getattr__(name: str) -> object:
    if name in __all__:
        return getattr(importlib.import_module("compresskit.compress.prune"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
