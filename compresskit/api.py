"""The notebook API: `analyze` any PyTorch model's layers in one call.

>>> import compresskit as ck
>>> table = ck.analyze(model, train_loader, test_loader, layers="stages", samples=1000)
>>> table[["layer", "csi_train", "csi_test"]]

Imports stay inside the functions, so ``import compresskit`` does not load torch.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from compresskit.errors import CompresskitError

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

DEFAULT_METRICS = ("csi", "si", "probe")


def analyze(
    model: nn.Module,
    train_loader: Iterable,
    test_loader: Iterable | None = None,
    layers: str | Sequence[str] = "all",
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    samples: int | None = None,
    memory_budget: int | str | None = None,
    device: str | torch.device | None = None,
    *,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Per-layer CSI, SI and linear-probe accuracy of `model`: one row per chosen layer.

    Parameters
    ----------
    model : any ``torch.nn.Module`` (a compresskit ``ConvNet`` keeps its block names and presets).
    train_loader, test_loader : iterables of ``(images, labels)`` batches, a torch ``DataLoader``
        included: images a float tensor N×… normalised as the model expects, labels an integer
        tensor N (int64). Each is read once (shuffling is fine; random augmentation is not what
        the metrics mean) and the samples are kept on the host. Without `test_loader` the table
        has only the ``*_train`` columns (the probe is then scored on the samples it was fitted on).
    layers : ``"all"``, ``"convs"``, ``"stages"``, a regular expression over module paths
        (``re.search``), or a list of module paths; see `compresskit.analysis.selection`. Layers
        are named by their module paths. A module that runs more than once per forward pass is
        measured on the output of its last call.
    metrics : any of ``"csi"``, ``"si"``, ``"probe"`` (a sequence, or a comma-separated string).
    samples : analyse a class-balanced random subset of this many samples of each loader
        (drawn with `seed`); None analyses every sample.
    memory_budget : bytes (int) or a size such as ``"4GiB"`` that one split's flattened features
        may take to be held for a single forward pass (beyond it: two, streamed); None is a
        quarter of the total memory.
    device : where the forward passes run ("cpu", "cuda", "cuda:1", a ``torch.device``); None is
        the device of the model's parameters. The model is moved there for the analysis and back
        afterwards; every module's train/eval mode is restored too.
    seed : seed of the class-balanced subsets.
    batch_size : samples per forward pass; None is the largest batch the train loader yielded.
    progress : show progress bars and log lines on stderr.

    Returns
    -------
    A pandas DataFrame with the columns of `compresskit.analysis.TABLE_COLUMNS` (``layer``,
    ``module``, ``output_shape``, ``dims``, then ``csi_train``, ``csi_test``, ``si_train``, …;
    fractions in [0, 1], NaN for a metric not asked for). ``attrs["features"]`` says per split how
    the features were handled (`FeaturePlan`), ``attrs["samples"]`` how many samples each split had.

    Raises `CompresskitError` naming the parameter for any input it cannot use.
    """
    from torch import nn

    if not isinstance(model, nn.Module):
        raise CompresskitError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    metric_names = _metrics(metrics)
    _positive_or_none("samples", samples)
    _positive_or_none("batch_size", batch_size)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise CompresskitError(f"seed must be an integer, got {seed!r}.")
    budget = _memory_budget(memory_budget)
    target = _device(model, device)

    from compresskit.analysis import layer_table, select_layers
    from compresskit.analysis.sampling import SampleBatches, collect_samples
    from compresskit.progress import Progress

    chosen = select_layers(model, layers)  # bad input: an error naming `layers`
    splits = {}
    for name, loader in (("train_loader", train_loader), ("test_loader", test_loader)):
        if loader is not None:
            splits[name] = collect_samples(loader, samples=samples, seed=seed, name=name)
    train_labels = splits["train_loader"][1]
    if len(train_labels.unique()) < 2:
        raise CompresskitError("train_loader must hold samples of at least two classes to separate.")
    if "test_loader" in splits:
        unseen = ~splits["test_loader"][1].unsqueeze(1).eq(train_labels.unique()).any(1)
        if unseen.any():
            raise CompresskitError(
                f"test_loader has label {int(splits['test_loader'][1][unseen][0])}, which train_loader "
                "does not; the test samples' classes must all appear in the train samples."
            )
    size = batch_size or splits["train_loader"][2]
    batches = {name: SampleBatches(x, y, size, target) for name, (x, y, _) in splits.items()}

    modes = {module: module.training for module in model.modules()}
    home = _parameter_device(model)
    try:
        model.to(target)
        table = layer_table(
            model,
            batches["train_loader"],
            batches.get("test_loader"),
            chosen,
            metric_names,
            memory_budget=budget,
            progress=Progress(enabled=bool(progress)),
        )
    finally:
        if home is not None:
            model.to(home)
        for module, training in modes.items():
            module.training = training
    table.attrs["samples"] = {name.removesuffix("_loader"): b.num_samples for name, b in batches.items()}
    return table


def _metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    from compresskit.analysis.layers import METRICS

    names = metrics.split(",") if isinstance(metrics, str) else metrics
    try:
        names = tuple(dict.fromkeys(str(n).strip().lower() for n in names if str(n).strip()))
    except TypeError:
        names = ()
    if not names or any(n not in METRICS for n in names):
        raise CompresskitError(
            f"metrics {metrics!r} is not allowed; give one or more of {', '.join(METRICS)} "
            "(a sequence or a comma-separated string)."
        )
    return names


def _positive_or_none(name: str, value: object) -> None:
    integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if value is not None and not (integer and value >= 1):
        raise CompresskitError(f"{name} must be a positive integer or None, got {value!r}.")


def _memory_budget(memory_budget: int | str | None) -> int | None:
    from compresskit.analysis.memory import SIZE_HELP, parse_size

    if memory_budget is None:
        return None
    if isinstance(memory_budget, (numbers.Integral, str)) and not isinstance(memory_budget, bool):
        try:
            return parse_size(memory_budget if isinstance(memory_budget, str) else int(memory_budget))
        except ValueError:
            pass
    raise CompresskitError(f"memory_budget {memory_budget!r} is not allowed; give None or {SIZE_HELP}.")


def _parameter_device(model: nn.Module) -> torch.device | None:
    """The one device of `model`'s parameters and buffers; None when it has none."""
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    if len(devices) > 1:
        raise CompresskitError(
            f"model has parameters on several devices ({', '.join(sorted(map(str, devices)))}); "
            "analyze needs them on one."
        )
    return next(iter(devices), None)


def _device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    import torch

    if device is None:
        return _parameter_device(model) or torch.device("cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise CompresskitError(
            f"device {device!r} is not allowed; give None, 'cpu', 'cuda', 'cuda:N' or a torch.device."
        ) from None
    if target.type not in ("cpu", "cuda"):
        raise CompresskitError(f"device {device!r} is not allowed; give None, 'cpu', 'cuda' or 'cuda:N'.")
    if target.type == "cuda" and (target.index or 0) >= torch.cuda.device_count():
        raise CompresskitError(
            f"device {device!r} was asked for but {torch.cuda.device_count()} CUDA device(s) are available."
        )
    return target
