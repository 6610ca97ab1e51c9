"""The import job: ``compresskit import --factory MOD:FN --weights FILE.pt --dataset … --out RUN``
brings a model trained elsewhere into a run directory that every later job can use (evaluate,
analyze, prune, lowrank, report, fine-tuning with --distill).

The model is built by the factory (a module outside ``torchvision.models``, ``timm`` and
``compresskit.models`` only with ``trust_factory``, refused before it is imported), its weights are
read with ``torch.load(weights_only=True)`` (a bare state dict, or one under ``"state_dict"`` or
``"model"``) and loaded strictly. The dataset is recorded with a stratified validation split as
``train`` records it, so fine-tuning later validates on images the import set aside. The run
directory holds ``run.json`` (command ``import``), ``config.json``, ``checkpoint.pt`` (format 2:
the factory, no edits, the weights, the test accuracy computed in fp32 on import) and
``summary.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compresskit.architecture import (
    TRUSTED_MODULES,
    Architecture,
    check_factory_kwargs,
    check_factory_name,
    is_trusted,
)
from compresskit.checkpoint import CHECKPOINT_NAME
from compresskit.data import (
    Augmentation,
    Loader,
    check_dataset,
    check_image_size,
    check_labels,
    check_val_fraction,
    default_augmentation,
    load_dataset,
)
from compresskit.errors import CompresskitError
from compresskit.jobs.anymodel import factory_label, output_count
from compresskit.jobs.common import recording_state, split_record, versions
from compresskit.models import count_parameters
from compresskit.rundir import (
    DataRecord,
    ModelRecord,
    RunConfig,
    check_output,
    create_output,
    write_config,
    write_json,
)
from compresskit.train import evaluate, resolve_device, resolve_precision

WRAPPERS = ("state_dict", "model")  # keys a training script commonly saves the weights under


@dataclass
class ImportOptions:
    """What to import: the factory (``module:function``) and its JSON kwargs, whether its module
    is trusted by the user, the weights file; and the data it was trained for."""

    factory: str
    weights: str
    dataset: str
    factory_kwargs: dict | None = None
    trust_factory: bool = False
    data_dir: str | None = None
    download: bool = True
    labels: str = "fine"
    image_size: int = 32
    val_fraction: float = 0.1
    augment: str | None = None  # the fine-tuning augmentation later jobs use; None: the dataset's
    seed: int = 0  # of the validation split
    device: str = "auto"


def import_run(out: str | Path, options: ImportOptions, *, overwrite: bool = False) -> dict:
    """Make the run directory `out` from `options` (see the module docstring); returns the summary."""
    out = Path(out)
    name = check_factory_name(options.factory, "--factory")
    kwargs = check_factory_kwargs(options.factory_kwargs or {}, "--factory-kwargs")
    if not is_trusted(name) and not options.trust_factory:
        raise CompresskitError(
            f"--factory {name} is outside the trusted modules ({', '.join(TRUSTED_MODULES)}), so it was "
            "not imported; add --trust-factory if you trust that code."
        )
    check_dataset(options.dataset)
    check_labels(options.dataset, options.labels)
    check_image_size(options.image_size)
    check_val_fraction(options.val_fraction)
    if options.dataset.startswith("folder:") and options.data_dir is not None:
        raise CompresskitError("--data-dir is for named datasets; --dataset folder:PATH names its folder.")
    augment = (
        Augmentation.parse(options.augment)
        if options.augment is not None
        else default_augmentation(options.dataset)
    )
    weights = Path(options.weights)
    if not weights.is_file():
        raise CompresskitError(f"--weights {weights} is not a file.")
    inputs = [weights] + ([Path(options.data_dir)] if options.data_dir is not None else [])
    check_output(out, "import", overwrite=overwrite, inputs=inputs)
    device = resolve_device(options.device)
    architecture = Architecture(factory=name, kwargs=kwargs)
    model = architecture.build(trust_factory=name if options.trust_factory else None, where="--factory")
    _load_weights(model, weights)
    data = load_dataset(
        options.dataset, options.data_dir, download=options.download, labels=options.labels,
        image_size=options.image_size,
    )  # fmt: skip
    shape = (data.channels, data.image_size, data.image_size)
    outputs = output_count(model, shape, torch.device("cpu"), f"--factory {name}")
    if outputs != data.num_classes:
        raise CompresskitError(
            f"--factory {name} gives {outputs} outputs, but {data.name} has {data.num_classes} classes."
        )
    split, val_folder = split_record(data, options.val_fraction, options.seed)
    record = DataRecord(
        dataset=data.name, data_dir=options.data_dir, augment=augment.describe(), split=split,
        classes=list(data.classes), mean=list(data.mean), std=list(data.std), test_count=len(data.test),
        labels=options.labels, image_size=data.image_size, val_folder=val_folder,
    )  # fmt: skip
    label = factory_label(name, kwargs)
    config = RunConfig(
        command="import",
        model=ModelRecord(
            name=label,
            width=1.0,
            head="",
            dropout=0.0,
            global_pool=False,
            spec={},
            parameters=count_parameters(model),
            init="imported",
            architecture=architecture.to_dict(),
        ),
        data=record,
        train={},
        source=str(weights),
        lineage=[f"import {label} ({out.name})"],
        device=str(device),
        precision="fp32",
        threads=torch.get_num_threads(),
        versions=versions(),
    )
    create_output(out, "import", overwrite=overwrite, inputs=inputs)
    write_config(out, config)
    with recording_state(out):
        model = model.to(device).eval()
        loader = Loader(data.test, 256, mean=tuple(record.mean), std=tuple(record.std), device=device)
        fp32 = resolve_precision("fp32", device)
        test_loss, test_acc = evaluate(model, loader, device, precision=fp32)
        meta = {
            "dataset": data.name, "data_dir": options.data_dir, "classes": record.classes,
            "mean": record.mean, "std": record.std, "lineage": config.lineage, "test_acc": test_acc,
            "test_precision": fp32.describe(), "input_shape": list(shape), "imported_from": str(weights),
        }  # fmt: skip
        from compresskit.model_io import save

        save(model, out / CHECKPOINT_NAME, factory=name, factory_kwargs=kwargs, meta=meta)
        summary = {
            "run": str(out),
            "model": label,
            "factory": name,
            "weights": str(weights),
            "parameters": count_parameters(model),
            "dataset": data.name,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "test_precision": fp32.describe(),
            "device": str(device),
        }
        write_json(out / "summary.json", summary)
    return summary


def _load_weights(model: nn.Module, path: Path) -> None:
    """Load `path` (read with weights_only=True) into `model` strictly; one sentence naming the file
    and the first missing, unexpected or mis-shaped key otherwise."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable or code-carrying file: refused, never run
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompresskitError(
            f"--weights {path} could not be read as a weights-only torch file ({first})."
        ) from None
    if isinstance(payload, dict):
        for key in WRAPPERS:
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()
    ):
        raise CompresskitError(
            f"--weights {path} holds no state dict (a dict of tensors, bare or under "
            f"{' or '.join(repr(w) for w in WRAPPERS)})."
        )
    want = model.state_dict()
    missing = [k for k in want if k not in payload]
    unexpected = [k for k in payload if k not in want]
    if missing or unexpected:
        key, what = (missing[0], "lacks") if missing else (unexpected[0], "has the unexpected key")
        raise CompresskitError(
            f"--weights {path} does not fit the factory's model: it {what} '{key}' "
            f"({len(missing)} missing, {len(unexpected)} unexpected)."
        )
    for key, tensor in want.items():
        if tuple(payload[key].shape) != tuple(tensor.shape):
            raise CompresskitError(
                f"--weights {path} does not fit the factory's model: '{key}' has the shape "
                f"{tuple(payload[key].shape)}, the model's {tuple(tensor.shape)}."
            )
    model.load_state_dict(payload)
