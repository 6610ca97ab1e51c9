"""The flags the commands share: the fixed choices as enums, the checks of --dataset, --model and
the JSON-object flags, the option annotations several commands use, and --resume's refusal of
any other flag."""

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from compresskit.compress.importance import importance_names
from compresskit.errors import CompresskitError


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum of `values` (member name = value): typer validates it and ``--help`` lists it."""
    return Enum(name, {v: v for v in values}, type=str)


# The allowed values of fixed-choice options; tests/test_cli.py checks each against the library's
# own tuple (models.MODEL_NAMES, data.DATASET_NAMES, …), which would pull in torch at import.
ModelName = _choices(
    "ModelName",
    (
        *(
            f"{b}{bn}"
            for b in ("vgg11", "vgg13", "vgg16", "vgg19", "cnn", "cnn_deep", "cnn_se")
            for bn in ("", "_bn")
        ),
    ),
)
DatasetName = _choices(
    "DatasetName", ("cifar10", "cifar100", "fashion-mnist", "mnist", "digits", "synthetic")
)
HeadName = _choices("HeadName", ("linear", "mlp"))
OptimizerName = _choices("OptimizerName", ("sgd", "adamw"))
ScheduleName = _choices("ScheduleName", ("step", "cosine", "onecycle", "none"))
DeviceName = _choices("DeviceName", ("auto", "cpu", "cuda"))
# The importances come from their registry, which loads neither torch nor torch-pruning.
ImportanceName = _choices("ImportanceName", importance_names())
SensitivityImportance = _choices("SensitivityImportance", importance_names(needs_calibration=False))
ScopeName = _choices("ScopeName", ("uniform", "global"))
AllocateName = _choices("AllocateName", ("uniform", "csi"))
TtaName = _choices("TtaName", ("none", "flip", "flip-translate"))
PrecisionName = _choices("PrecisionName", ("auto", "fp32", "bf16"))
PatienceMetric = _choices("PatienceMetric", ("val_acc", "val_loss"))
LabelSet = _choices("LabelSet", ("fine", "coarse"))
InitName = _choices("InitName", ("kaiming", "torch"))

FOLDER_PREFIX = "folder:"  # --dataset folder:PATH: an image folder (compresskit.data.image_folder)


def _dataset_option(value: str) -> str:
    """A ``--dataset``: one of `DatasetName`, or ``folder:PATH``."""
    if value in DatasetName.__members__ or (value.startswith(FOLDER_PREFIX) and value != FOLDER_PREFIX):
        return value
    names = ", ".join(repr(m.value) for m in DatasetName)
    raise typer.BadParameter(f"Value error, {value!r} is not one of {names}, nor folder:PATH.")


TORCHVISION_PREFIX = "torchvision:"  # --model torchvision:NAME (compresskit.zoo)


def _model_option(value: str) -> str:
    """A ``--model``: one of `ModelName`, or ``torchvision:NAME`` (the name is checked by the job)."""
    torchvision = value.startswith(TORCHVISION_PREFIX) and value != TORCHVISION_PREFIX
    if value in ModelName.__members__ or torchvision:
        return value
    names = ", ".join(repr(m.value) for m in ModelName)
    raise typer.BadParameter(f"Value error, {value!r} is not one of {names}, nor torchvision:NAME.")


def _number_list(value: str | None, flag: str) -> list[float] | None:
    """`value` ("0.25,0.5") as floats, None when not given; one sentence naming `flag` otherwise."""
    if value is None:
        return None
    try:
        return [float(item) for item in value.split(",") if item.strip()]
    except ValueError:
        raise CompresskitError(f"{flag} '{value}' must be a comma list of numbers, e.g. 0.25,0.5.") from None


def _json_object(value: str | None, flag: str) -> dict | None:
    """`value` parsed as a JSON object, None when not given; one sentence naming `flag` otherwise."""
    import json

    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise CompresskitError(
            f"{flag} {value!r} is not valid JSON ({exc}); give an object such as '{{}}'."
        ) from None
    if not isinstance(parsed, dict):
        raise CompresskitError(f"{flag} {value!r} must be a JSON object such as '{{\"dropout\": 0.2}}'.")
    return parsed


def _str_or_none(path: Path | None) -> str | None:
    """A path flag as the jobs take it: its text, or None when the flag was not given."""
    return str(path) if path is not None else None


def _refuse_changes(ctx: typer.Context, allowed: set[str], flag: str) -> None:
    """With --resume the run's own configuration is used: refuse any other flag given explicitly."""
    given = [
        "--" + name.replace("_", "-")
        for name in ctx.params
        if name not in allowed and ctx.get_parameter_source(name).name != "DEFAULT"
    ]
    if given:
        raise CompresskitError(
            f"{flag} continues the run with its own configuration; drop {', '.join(given)} "
            "(only --data-dir, --download and --quiet may be given)."
        )


# Options shared by several commands.
Device = Annotated[DeviceName, typer.Option(help="Where to compute.")]
PrecisionOption = Annotated[
    PrecisionName,
    typer.Option(
        help="auto: bf16 autocast on CUDA or a CPU with native bf16, else fp32 (always channels_last)."
    ),
]
RunDataDir = Annotated[Path | None, typer.Option(help="Dataset folder (default: the one used in training).")]
Download = Annotated[bool, typer.Option(help="Download CIFAR (checksum-verified) when not on disk.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress output.")]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace --out when it is this command's own earlier output.")
]
BenchSeconds = Annotated[float, typer.Option(help="Seconds of timing per latency measurement.")]
Threads = Annotated[int | None, typer.Option(help="CPU threads for latency (default: torch's count).")]
Source = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint", "--from", help="Run directory (its checkpoint.pt) or .pt file: trained or compressed."
    ),
]
TrustFactory = Annotated[
    bool,
    typer.Option(
        "--trust-factory",
        help="Build the model factory the run records even outside torchvision.models, timm and "
        "compresskit.models (it imports and runs that code).",
    ),
]
SyncBn = Annotated[
    bool,
    typer.Option(
        "--sync-bn",
        help="Under torchrun on CUDA: batch-norm statistics over the global batch (SyncBatchNorm).",
    ),
]

# Options of the compression commands (prune, lowrank, depth). Their fine-tuning options, with Device,
# PrecisionOption and SyncBn; cli.compression.FINETUNE_FIELDS names the TrainConfig field each sets.
FinetuneEpochs = Annotated[int, typer.Option(help="Fine-tuning epochs in all.")]
FinetuneBatchSize = Annotated[int, typer.Option(help="Fine-tuning batch size.")]
FinetuneLr = Annotated[float, typer.Option(help="Peak fine-tuning learning rate.")]
FinetuneOptimizer = Annotated[OptimizerName, typer.Option(help="SGD with Nesterov momentum, or AdamW.")]
FinetuneMomentum = Annotated[float, typer.Option(help="SGD momentum.")]
FinetuneWeightDecay = Annotated[float, typer.Option(help="Weight decay on weights (not biases or BN).")]
FinetuneSchedule = Annotated[ScheduleName, typer.Option(help="Learning-rate schedule, stepped every batch.")]
FinetuneLabelSmoothing = Annotated[float, typer.Option(help="Label smoothing of the fine-tuning loss.")]
Seed = Annotated[
    int,
    typer.Option(
        help="Seed of the fine-tuning batches and of every other draw (subsets, random importance, "
        "a new head).",
    ),
]
ResumeOut = Annotated[
    Path | None,
    typer.Option("--resume", help="Continue this stopped run directory from its last finished epoch."),
]
Distill = Annotated[
    bool, typer.Option(help="Fine-tune towards a teacher's soft outputs too: (1-w)*CE + w*T^2*KL.")
]
DistillTemperature = Annotated[float, typer.Option(help="--distill: softmax temperature T, above 0.")]
DistillWeight = Annotated[float, typer.Option(help="--distill: weight w of the teacher's term, in [0, 1].")]
Teacher = Annotated[
    Path | None, typer.Option(help="--distill: teacher run directory or .pt (default: --checkpoint).")
]
