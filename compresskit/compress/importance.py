"""The one registry of pruning importances: how channels are ranked before the lowest are removed.

torch-pruning keeps one `Importance` class per criterion; compresskit names each criterion once
here (`CRITERIA`), with what it needs and how its importance is built for both pruning paths: a
`ConvNet` by its spec (`prune.ChannelPruner`) and any other model (`prune_any.prune_model`). The
command line's choices (``--importance`` of prune and sensitivity), the jobs' calibration checks
and `prune.PruneConfig.validate` all read it.

This module imports neither torch nor torch-pruning (the builders import them when called), so the
command line can build its choices from it without loading either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compresskit.errors import ParameterError

if TYPE_CHECKING:
    import torch_pruning as tp
    from torch import nn

    from compresskit.compress.taps import Batches, Tap


@dataclass(frozen=True)
class Criterion:
    """One importance.

    `build(batches)` gives the torch-pruning importance of the ConvNet path; `build_graph(batches,
    taps)` that of the any-model path, where it differs (None: `build` serves both). Flags:
    `needs_calibration`: scores are read off (images, labels) batches, so none is an error;
    `needs_gradients`: the pruner accumulates cross-entropy gradients over those batches before a
    step; `needs_batch_norm`: scores come from batch norm layers, so a ConvNet without them is refused.
    """

    name: str
    description: str
    build: Callable[[Batches | None], tp.importance.Importance]
    build_graph: Callable[[Batches | None, Mapping[nn.Module, Tap]], tp.importance.Importance] | None = None
    needs_calibration: bool = False
    needs_gradients: bool = False
    needs_batch_norm: bool = False


def _torch_pruning(kind: str, **kwargs: object) -> Callable[[Batches | None], tp.importance.Importance]:
    """A builder of torch-pruning's own ``importance.<kind>(**kwargs)``, which takes no batches."""

    def build(batches: Batches | None) -> tp.importance.Importance:
        import torch_pruning as tp

        return getattr(tp.importance, kind)(**kwargs)

    return build


def _separation(batches: Batches | None) -> tp.importance.Importance:
    from compresskit.compress.separation_importance import SeparationImportance

    return SeparationImportance(batches)


def _graph_separation(batches: Batches | None, taps: Mapping[nn.Module, Tap]) -> tp.importance.Importance:
    from compresskit.compress.prune_any import GraphSeparationImportance

    return GraphSeparationImportance(batches, taps)


# In the order the command line lists them.
CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion(
            "l1",
            "the L1 norm of each channel's weights, summed over its dependency group",
            _torch_pruning("GroupMagnitudeImportance", p=1),
        ),
        Criterion(
            "l2",
            "the L2 norm of each channel's weights, summed over its dependency group",
            _torch_pruning("GroupMagnitudeImportance", p=2),
        ),
        Criterion(
            "bn-scale",
            "|γ| of the channel's batch norm (network slimming)",
            _torch_pruning("BNScaleImportance"),
            needs_batch_norm=True,
        ),
        Criterion(
            "taylor",
            "first-order Taylor estimate |w·∂L/∂w| on the calibration batches",
            _torch_pruning("GroupTaylorImportance"),
            needs_calibration=True,
            needs_gradients=True,
        ),
        Criterion(
            "random",
            "a seeded random order, the baseline every criterion must beat",
            _torch_pruning("RandomImportance"),
        ),
        Criterion(
            "separation",
            "how well the channel alone separates the classes on the calibration batches: the Fisher "
            "ratio of its spatially averaged activated output",
            _separation,
            _graph_separation,
            needs_calibration=True,
        ),
    )
}


def importance_names(needs_calibration: bool | None = None) -> tuple[str, ...]:
    """The registered names in order; only those whose `Criterion.needs_calibration` equals
    `needs_calibration` when it is given."""
    return tuple(
        name
        for name, c in CRITERIA.items()
        if needs_calibration is None or c.needs_calibration == needs_calibration
    )


IMPORTANCES = importance_names()
NEEDS_DATA = importance_names(needs_calibration=True)


def criterion(name: str) -> Criterion:
    """The criterion registered as `name`; a `ParameterError` naming ``importance`` and every
    allowed name otherwise."""
    if name not in CRITERIA:
        allowed = ", ".join(IMPORTANCES)
        raise ParameterError(f"{{0}} '{name}' is not known; choose one of: {allowed}.", "importance")
    return CRITERIA[name]


def make_importance(
    name: str, batches: Batches | None = None, *, taps: Mapping[nn.Module, Tap] | None = None
) -> tp.importance.Importance:
    """The torch-pruning importance of criterion `name`.

    `batches` are the calibration (images, labels) pairs, required where the criterion
    `needs_calibration`. `taps` (each prunable layer's tapped output, `taps.find_taps`) selects the
    any-model path's importance; None builds the ConvNet path's.
    """
    entry = criterion(name)
    if entry.needs_calibration and not batches:
        raise ParameterError(
            f"{{0}} {name} needs calibration data (it looks at activations or gradients), "
            "but none was given.",
            "importance",
        )
    if taps is not None and entry.build_graph is not None:
        return entry.build_graph(batches, taps)
    return entry.build(batches)
