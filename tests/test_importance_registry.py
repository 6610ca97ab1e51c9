"""The one registry of pruning importances: the command line's choices, the sensitivity job's and
`PruneConfig.validate` read it, unknown names are refused naming the parameter, and the command
line still builds its choices without loading torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch_pruning as tp
from torch import nn
from typer.testing import CliRunner

from compresskit import cli
from compresskit.cli.flags import flag_of
from compresskit.compress.importance import CRITERIA, criterion, importance_names, make_importance
from compresskit.compress.prune import PruneConfig
from compresskit.compress.prune_any import prune_model
from compresskit.errors import ParameterError
from compresskit.jobs import sensitivity_run

BATCHES = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))]


def test_prune_accepts_every_registered_name_and_no_other():
    assert [m.value for m in cli.ImportanceName] == list(importance_names()) == list(CRITERIA)
    for name in importance_names():
        PruneConfig(importance=name).validate()


def test_sensitivity_offers_exactly_the_importances_without_calibration():
    without = [name for name, c in CRITERIA.items() if not c.needs_calibration]
    assert [m.value for m in cli.SensitivityImportance] == without == list(importance_names(False))
    assert set(importance_names(True)) == set(CRITERIA) - set(without)
    for name in importance_names(needs_calibration=True):
        with pytest.raises(ParameterError, match=f"^importance {name} needs calibration data") as info:
            sensitivity_run("no-such-run", [0.5], importance=name)
        assert info.value.spelled(flag_of).startswith(f"--importance {name}")
        assert ", ".join(without[:-1]) + f" or {without[-1]}" in str(info.value)


def test_help_lists_every_registered_name():
    for command, names in (("prune", importance_names()), ("sensitivity", importance_names(False))):
        result = CliRunner().invoke(cli.app, [command, "--help"], terminal_width=80, env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        assert f"<{'|'.join(names)}>" in "".join(result.stdout.split())


@pytest.mark.parametrize(
    "refuse",
    [
        lambda: criterion("magic"),
        lambda: make_importance("magic"),
        lambda: PruneConfig(importance="magic").validate(),
        lambda: prune_model(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.zeros(1, 3, 8, 8), 0.5, "magic"),
    ],
    ids=["criterion", "make_importance", "PruneConfig.validate", "prune_model"],
)
def test_an_unknown_name_is_refused_naming_the_parameter_and_the_allowed_names(refuse):
    with pytest.raises(ParameterError) as info:
        refuse()
    allowed = ", ".join(importance_names())
    assert str(info.value) == f"importance 'magic' is not known; choose one of: {allowed}."
    assert info.value.spelled(flag_of).startswith("--importance 'magic'")


@pytest.mark.parametrize("name", list(CRITERIA))
def test_every_criterion_builds_a_torch_pruning_importance_on_both_paths(name):
    for taps in (None, {}):
        assert isinstance(make_importance(name, BATCHES, taps=taps), tp.importance.Importance)
    if CRITERIA[name].needs_calibration:
        with pytest.raises(ParameterError, match=f"^importance {name} needs calibration data"):
            make_importance(name)


def test_the_command_line_reads_the_registry_without_loading_torch():
    code = (
        "import sys, compresskit.cli; "
        "assert 'torch' not in sys.modules and 'torch_pruning' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
