"""The `compresskit` command: a thin typer shell over the library (parse, call, print a summary).

`app.py` builds the typer app; the commands live in one module per family and are registered on
it here, in the order ``compresskit --help`` lists them."""

from compresskit.cli.app import app, main
from compresskit.cli.compression import depth, lowrank, prune
from compresskit.cli.exchange import import_, report
from compresskit.cli.inspection import analyze, evaluate, sensitivity
from compresskit.cli.options import (
    AllocateName,
    DatasetName,
    DeviceName,
    HeadName,
    ImportanceName,
    InitName,
    LabelSet,
    ModelName,
    OptimizerName,
    PatienceMetric,
    PrecisionName,
    ScheduleName,
    ScopeName,
    SensitivityImportance,
    TtaName,
)
from compresskit.cli.render import _print_report
from compresskit.cli.training import train

app.command()(train)
app.command()(evaluate)
app.command()(analyze)
app.command()(prune)
app.command()(lowrank)
app.command()(depth)
app.command()(report)
app.command("import")(import_)
app.command()(sensitivity)

__all__ = [
    "AllocateName",
    "DatasetName",
    "DeviceName",
    "HeadName",
    "ImportanceName",
    "InitName",
    "LabelSet",
    "ModelName",
    "OptimizerName",
    "PatienceMetric",
    "PrecisionName",
    "ScheduleName",
    "ScopeName",
    "SensitivityImportance",
    "TtaName",
    "_print_report",
    "analyze",
    "app",
    "depth",
    "evaluate",
    "import_",
    "lowrank",
    "main",
    "prune",
    "report",
    "sensitivity",
    "train",
]
