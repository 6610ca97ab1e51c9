"""Low-rank factorization of any PyTorch model (`lowrank_model`): `lowrank.py`'s truncated SVD on
every chosen ``nn.Conv2d`` (groups 1, any kernel size, stride, padding, dilation and padding mode)
and ``nn.Linear``, wherever they sit in the module tree.

A conv becomes a `FactorizedConv2d` (a k×k conv to r channels keeping the original geometry, then a
1×1 conv back with the original bias), a linear layer a `FactorizedLinear`. At full rank the pair
computes the original layer exactly (up to rounding). Grouped and depthwise convs are left alone
(their weight is not one out×(in·k·k) matrix), as are subclasses of Conv2d / Linear (their forward
may differ, e.g. an attention block's output projection) and layers already factorized; the
returned plan lists every layer and what happened to it. Each new layer is marked as an edit
(`compresskit.edits`), so `compresskit.model_io.save` records it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from compresskit.compress.lowrank import (
    LayerPlan,
    LowRankConfig,
    choose_rank,
    factorize_conv,
    factorize_linear,
)
from compresskit.compress.taps import hooked_forward
from compresskit.edits import mark_edited
from compresskit.errors import CompresskitError
from compresskit.models import FACTORIZED


def _positions(model: nn.Module, example_inputs: torch.Tensor | tuple) -> dict[nn.Module, int]:
    """Output positions per image of every conv and linear layer (H·W of a conv's output, the
    leading dimensions of a linear layer's), from one forward pass in eval mode."""
    found: dict[nn.Module, int] = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        channels = output.shape[1] if isinstance(module, nn.Conv2d) else output.shape[-1]
        found[module] = found.get(module, 0) + output.numel() // max(1, output.shape[0]) // channels

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooked_forward(model, example_inputs, layers, hook)
    return found


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Conv2d / Linear (of any class) and factorized layer, in module order; the factors inside
    a factorized layer are not listed."""
    found: list[tuple[str, nn.Module]] = []
    for path, module in model.named_modules():
        if any(path.startswith(p + ".") for p, m in found if isinstance(m, FACTORIZED)):
            continue
        if isinstance(module, (nn.Conv2d, nn.Linear, *FACTORIZED)):
            found.append((path, module))
    return found


def _chosen(layers: Sequence[str] | str | None, names: list[str]) -> set[str]:
    if layers is None or layers == "all":
        return set(names)
    wanted = [n.strip() for n in layers.split(",")] if isinstance(layers, str) else list(layers)
    unknown = [n for n in wanted if n not in names]
    if unknown or not wanted:
        shown = ", ".join(names[:8]) + (", …" if len(names) > 8 else "")
        raise CompresskitError(
            f"layers names no conv or linear layer of this model ({', '.join(unknown) or 'empty'}); "
            f"choose None (all) or module paths such as: {shown}."
        )
    return set(wanted)


def lowrank_model(
    model: nn.Module,
    *,
    energy: float | None = None,
    rank_ratio: float | None = None,
    layers: Sequence[str] | str | None = None,
    only_if_cheaper: bool = True,
    example_inputs: torch.Tensor | tuple | None = None,
) -> tuple[nn.Module, list[LayerPlan]]:
    """A factorized copy of `model` (which is not changed) and the plan of every conv and linear layer.

    Exactly one of `energy` (keep the smallest rank holding that fraction of Σσ²) and `rank_ratio`
    (r = ⌈ratio · full rank⌉), each in (0, 1]. `layers`: None (every layer), or module paths (a list,
    or one comma-separated string). A layer is factorized only when that saves MACs, r·(n + out) <
    out·n for an out×n weight matrix (n = in·k·k), unless ``only_if_cheaper=False``. The plan's
    ``layer`` is the module path; its MACs are per image when `example_inputs` is given (one
    forward pass counts each layer's output positions), else per output position.
    """
    cfg = LowRankConfig(rank_ratio=rank_ratio, energy=energy)
    cfg.validate()
    work = copy.deepcopy(model)
    positions = _positions(work, example_inputs) if example_inputs is not None else {}
    candidates = _candidates(work)
    chosen = _chosen(layers, [path for path, _ in candidates])
    plans: list[LayerPlan] = []
    for path, layer in candidates:
        if isinstance(layer, FACTORIZED):
            plans.append(LayerPlan(path, "—", layer.rank, layer.rank, 1.0, 0, 0, "kept: already factorized"))
            continue
        weight = layer.weight.detach()
        shape = "×".join(str(d) for d in weight.shape)
        matrix = weight.reshape(weight.shape[0], -1)
        out_f, n = matrix.shape
        full = min(out_f, n)
        per_position = positions.get(layer, 1)
        before = per_position * out_f * n
        if type(layer) not in (nn.Conv2d, nn.Linear):
            plans.append(LayerPlan(path, shape, full, full, 1.0, before, before, "kept: custom layer class"))
            continue
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            plans.append(LayerPlan(path, shape, full, full, 1.0, before, before, "kept: grouped conv"))
            continue
        if path not in chosen:  # no SVD: it is the slow part (about 2 s for a 512×4608 matrix)
            plans.append(LayerPlan(path, shape, full, full, 1.0, before, before, "kept: not selected"))
            continue
        svd = torch.linalg.svd(matrix.double(), full_matrices=False)
        rank, kept = choose_rank(svd[1], full, cfg)
        after = per_position * rank * (n + out_f)
        if after >= before and only_if_cheaper:
            plans.append(LayerPlan(path, shape, full, rank, kept, before, before, "kept: no MAC saving"))
            continue
        if isinstance(layer, nn.Conv2d):
            new: nn.Module = factorize_conv(layer, rank, svd=svd)
        else:
            new = factorize_linear(layer, rank, svd=svd)
        new.train(layer.training)
        mark_edited(new)
        if not path:
            work = new  # the model is this one layer
        else:
            parent_path, _, name = path.rpartition(".")
            setattr(work.get_submodule(parent_path), name, new)
        plans.append(LayerPlan(path, shape, full, rank, kept, before, after, "factorized"))
    return work, plans
