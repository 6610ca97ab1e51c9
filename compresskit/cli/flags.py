"""The one parameter → flag table: how a library `ParameterError` reads on the command line.

A parameter is shown as ``--`` + its name with ``-`` for ``_`` (``calibration_samples`` →
``--calibration-samples``) unless `FLAGS` or a command's own table (the fine-tuning flags of
prune, lowrank and depth; prune's calibration samples) says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

# Library parameters whose flag is not the default spelling.
FLAGS: dict[str, str] = {
    "model": "--model",
    "name": "--model",
    "spec": "--model",
    "dataset": "--dataset",
    "root": "--data-dir",
    "data_dir": "--data-dir",
    "val_fraction": "--val-fraction",
    "factory": "--factory",
    "factory_kwargs": "--factory-kwargs",
    "trust_factory": "--trust-factory",
    "kwargs": "--model-kwargs",
    "path": "--checkpoint",  # checkpoint.load_checkpoint / resolve_checkpoint
    "run": "--resume",  # rundir.check_resumable: the run a resume continues
    "temperature": "--distill-temperature",  # compress.distill: Distillation, check_distill
    "weight": "--distill-weight",
}

# prune, lowrank and depth fine-tune with a TrainConfig whose `epochs` is --finetune-epochs.
FINETUNE_FLAGS: dict[str, str] = {"epochs": "--finetune-epochs"}

# prune's class-balanced calibration subset (data.balanced_subset's `samples`) is --calibration-samples;
# depth's and analyze's own --samples keep the default spelling.
PRUNE_FLAGS: dict[str, str] = {**FINETUNE_FLAGS, "samples": "--calibration-samples"}

# The table each compression command passes to `user_errors`.
COMPRESSION_FLAGS: dict[str, dict[str, str]] = {
    "prune": PRUNE_FLAGS,
    "lowrank": FINETUNE_FLAGS,
    "depth": FINETUNE_FLAGS,
}


def flag_of(parameter: str, overrides: Mapping[str, str] | None = None) -> str:
    """The flag that sets library parameter `parameter`."""
    if overrides and parameter in overrides:
        return overrides[parameter]
    return FLAGS.get(parameter, "--" + parameter.replace("_", "-"))
