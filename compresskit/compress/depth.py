"""Depth reduction: cut the network after the last conv block that still adds class separation.

The layer analysis gives each conv block's CSI on test images; a block's gain is its CSI minus the
previous block's (the first block's gain is over the raw input pixels). `choose_depth` keeps every
block up to the last one whose gain exceeds ``min_gain`` (or exactly ``keep_blocks`` blocks);
`truncate` keeps those blocks with their weights, the max-pools that directly follow the last of
them, and attaches a fresh head of the original kind sized to the new feature map.
"""

from __future__ import annotations

from collections.abc import Sequence

from compresskit.errors import CompresskitError, ParameterError
from compresskit.models import POOL, ConvNet, ModelSpec, build_model


def choose_depth(
    csi: Sequence[float],
    input_csi: float,
    *,
    min_gain: float | None = None,
    keep_blocks: int | None = None,
) -> tuple[int, list[float]]:
    """Number of conv blocks to keep, and every block's CSI gain.

    With `keep_blocks`, that number (1 ≤ keep_blocks ≤ len(csi)); otherwise the position of the last
    block whose gain exceeds `min_gain`. Raises CompresskitError when the choice would keep no block.
    """
    gains = [c - p for c, p in zip(csi, [input_csi, *csi[:-1]], strict=True)]
    if keep_blocks is not None:
        if not 1 <= keep_blocks <= len(csi):
            raise ParameterError(
                f"{{0}} must be between 1 and the model's {len(csi)} conv blocks; got {keep_blocks}.",
                "keep_blocks",
            )
        return keep_blocks, gains
    if min_gain is None:
        raise ParameterError("give {0} or {1}.", "min_gain", "keep_blocks")
    above = [i for i, gain in enumerate(gains) if gain > min_gain]
    if not above:
        raise ParameterError(
            f"{{0}} {min_gain} would remove every block: no block raises test CSI by more than "
            f"that (largest gain {max(gains):.4f}).",
            "min_gain",
        )
    return above[-1] + 1, gains


def truncated_spec(spec: ModelSpec, keep: int) -> ModelSpec:
    """`spec` with only its first `keep` conv layers (and the pools right after the last one), the
    same kind of head, and no factorization in the head."""
    layers: list[int | str] = []
    convs = 0
    for item in spec.layers:
        if item != POOL:
            if convs == keep:
                break
            convs += 1
        layers.append(item)
    ranks = spec.conv_ranks[:keep] if spec.conv_ranks else None
    new = ModelSpec(**{**spec.to_dict(), "layers": layers, "conv_ranks": ranks, "linear_ranks": None})
    new.validate()
    return new


def truncate(model: ConvNet, spec: ModelSpec, keep: int, *, seed: int = 0) -> tuple[ConvNet, ModelSpec]:
    """A new model with the first `keep` conv blocks of `model` (weights copied) and a freshly
    initialised head; `model` is not changed."""
    if not 1 <= keep <= len(spec.conv_widths):
        raise CompresskitError(f"cannot keep {keep} of the model's {len(spec.conv_widths)} conv blocks.")
    new_spec = truncated_spec(spec, keep)
    new = build_model(new_spec, seed=seed).to(next(model.parameters()).device)
    kept = model.named_blocks("block")[:keep]
    for old_block, new_block in zip(kept, new.named_blocks("block"), strict=True):
        new_block.module.load_state_dict(old_block.module.state_dict())
    return new.train(model.training), new_spec
