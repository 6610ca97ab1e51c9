"""Bad input names the library's parameter in the library and the flag on the command line.

`ParameterError` carries both spellings; `compresskit.cli.flags` is the one parameter → flag table.
Every case here is refused before any data is loaded or any model is trained.
"""

from __future__ import annotations

import pytest
import torch
import typer
from typer.testing import CliRunner

from compresskit.checkpoint import load_checkpoint
from compresskit.cli import app
from compresskit.cli.app import user_errors
from compresskit.cli.flags import COMPRESSION_FLAGS, FINETUNE_FLAGS, FLAGS, flag_of
from compresskit.compress.depth import choose_depth
from compresskit.compress.distill import check_distill
from compresskit.compress.lowrank import LowRankConfig
from compresskit.data import Augmentation, balanced_subset, check_dataset, check_image_size, stratified_split
from compresskit.errors import CompresskitError, ParameterError
from compresskit.layerwise import LayerwiseConfig
from compresskit.models import make_spec
from compresskit.rundir import check_output, check_resumable
from compresskit.train import TrainConfig, check_tta, resolve_precision


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    """The single ``error: …`` line a refused command prints (exit 2, nothing on stdout)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0].removeprefix("error: ")


# --------------------------------------------------------------------------- ParameterError itself


def test_str_names_the_parameters_and_spelled_any_other_way():
    error = ParameterError("{0} must be in (0, 1); got 1.5.", "ratio")
    assert str(error) == "ratio must be in (0, 1); got 1.5."
    assert error.spelled(lambda name: "--" + name) == "--ratio must be in (0, 1); got 1.5."
    assert error.template == "{0} must be in (0, 1); got 1.5." and error.parameters == ("ratio",)
    assert isinstance(error, CompresskitError) and isinstance(error, ValueError)


def test_several_parameters_each_in_its_place():
    error = ParameterError("give exactly one of {0} and {1}, not {1} twice.", "rank_ratio", "energy")
    assert str(error) == "give exactly one of rank_ratio and energy, not energy twice."
    spelled = error.spelled(flag_of)
    assert spelled == "give exactly one of --rank-ratio and --energy, not --energy twice."


def test_braces_in_values_are_not_placeholders():
    rest = " must be a JSON object; got '{\"a\": {}}' and {x} and {7}."
    error = ParameterError("{0}" + rest, "kwargs")
    assert str(error) == "kwargs" + rest
    assert error.spelled(flag_of) == "--model-kwargs" + rest
    text = "crop,{x}"  # as a library message puts a given value in: through an f-string
    given = ParameterError(f"{{0}} must be a comma list; got '{text}'.", "augment")
    assert str(given) == "augment must be a comma list; got 'crop,{x}'."


def test_flag_of_defaults_to_the_dashed_name_and_a_command_table_wins():
    assert flag_of("calibration_samples") == "--calibration-samples"
    assert flag_of("name") == FLAGS["name"] == "--model"
    assert flag_of("epochs") == "--epochs"
    assert flag_of("epochs", FINETUNE_FLAGS) == "--finetune-epochs"
    assert flag_of("samples", COMPRESSION_FLAGS["prune"]) == "--calibration-samples"
    assert flag_of("samples", COMPRESSION_FLAGS["depth"]) == "--samples"


# --------------------------------------------------------------------------- the library's words


def _not_a_run(tmp_path):
    return check_resumable(tmp_path, "train")


def _a_file_as_out(tmp_path):
    (tmp_path / "file").write_text("x")
    return check_output(tmp_path / "file", "train", overwrite=False)


# (call, the parameters its error names, in order); each call takes tmp_path.
LIBRARY_ERRORS = {
    "make_spec width": (lambda tmp: make_spec("vgg11", width=-1), ("width",)),
    "make_spec name": (lambda tmp: make_spec("vgg99"), ("name",)),
    "TrainConfig lr": (lambda tmp: TrainConfig(lr=-1).validate(), ("lr",)),
    "TrainConfig epochs": (lambda tmp: TrainConfig(epochs=0).validate(), ("epochs",)),
    "TrainConfig patience": (
        lambda tmp: TrainConfig(patience=3).validate(has_validation=False),
        ("target_accuracy", "patience", "val_fraction"),
    ),
    "precision": (lambda tmp: resolve_precision("fp16", torch.device("cpu")), ("precision",)),
    "tta": (lambda tmp: check_tta("rotate"), ("tta",)),
    "augment": (lambda tmp: Augmentation.parse("spin"), ("augment",)),
    "stage_epochs": (lambda tmp: LayerwiseConfig.parse_stage_epochs("two"), ("stage_epochs",)),
    "image_size": (lambda tmp: check_image_size(0), ("image_size",)),
    "dataset": (lambda tmp: check_dataset("imagenet"), ("dataset",)),
    "val_fraction": (lambda tmp: stratified_split(torch.tensor([0, 1, 0, 1]), 1.5, 0), ("val_fraction",)),
    "samples": (lambda tmp: balanced_subset(torch.arange(3), 2, seed=0), ("samples",)),
    "energy": (lambda tmp: LowRankConfig(energy=1.5).validate(), ("energy",)),
    "min_gain": (lambda tmp: choose_depth([0.1, 0.2], 0.0), ("min_gain", "keep_blocks")),
    "temperature": (lambda tmp: check_distill(0.0, 0.5), ("temperature",)),
    "path": (lambda tmp: load_checkpoint(tmp / "nope.pt"), ("path",)),
    "out": (_a_file_as_out, ("out",)),
    "run": (_not_a_run, ("run",)),
}


@pytest.mark.parametrize("case", list(LIBRARY_ERRORS))
def test_a_library_call_names_its_parameter_and_no_flag(tmp_path, case):
    call, parameters = LIBRARY_ERRORS[case]
    with pytest.raises(ParameterError) as info:
        call(tmp_path)
    error = info.value
    assert error.parameters == parameters
    assert "--" not in str(error)
    for name in parameters:
        assert name in str(error)
    spelled = error.spelled(flag_of)
    assert all(flag_of(name) in spelled for name in parameters)


def test_the_width_message_reads_parameter_allowed_given():
    with pytest.raises(ParameterError) as info:
        make_spec("vgg11", width=-1)
    assert str(info.value) == "width must be a positive number; got -1."
    with pytest.raises(ParameterError) as info:
        TrainConfig(lr=-1).validate()
    assert str(info.value) == "lr must be a positive number; got -1."


def test_every_parameter_is_spelled_as_a_flag_the_command_line_has():
    commands = typer.main.get_command(app).commands
    options = {opt for command in commands.values() for p in command.params for opt in p.opts}
    names = {name for _, parameters in LIBRARY_ERRORS.values() for name in parameters} | set(FLAGS)
    assert {name: flag_of(name) for name in names if flag_of(name) not in options} == {}
    for command, table in COMPRESSION_FLAGS.items():
        own = {opt for p in commands[command].params for opt in p.opts}
        assert set(table.values()) <= own, command


# --------------------------------------------------------------------------- the command line's words


def test_the_cli_names_the_flag_for_the_same_bad_value(tmp_path):
    out = tmp_path / "run"
    line = one_error_line(invoke("train", "--dataset", "synthetic", "--width", -1, "--out", out))
    assert line == "--width must be a positive number; got -1.0."
    line = one_error_line(invoke("train", "--dataset", "synthetic", "--lr", 0, "--out", out))
    assert line == "--lr must be a positive number; got 0.0."
    assert not out.exists()


def test_the_cli_names_resume_and_checkpoint_for_the_library_s_run_and_path(tmp_path):
    line = one_error_line(invoke("train", "--resume", tmp_path))
    assert line.startswith(f"--resume {tmp_path} is not a compresskit train run directory")
    line = one_error_line(invoke("evaluate", "--checkpoint", tmp_path / "nope.pt"))
    assert line.startswith("--checkpoint ") and "nope.pt does not exist" in line


def test_prune_says_finetune_epochs_and_distill_temperature(tmp_path):
    source = tmp_path / "model.pt"
    source.write_bytes(b"never read: refused before loading")
    base = ("prune", "--checkpoint", source, "--quiet")
    line = one_error_line(invoke(*base, "--out", tmp_path / "a", "--finetune-epochs", -1))
    assert line.startswith("--finetune-epochs -1")
    line = one_error_line(invoke(*base, "--out", tmp_path / "b", "--distill", "--distill-temperature", 0))
    assert line == "--distill-temperature must be a positive number, e.g. 4; got 0.0."
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_train_config_error_in_a_compression_command_names_its_finetune_flag(capsys):
    with pytest.raises(typer.Exit) as info, user_errors(flags=COMPRESSION_FLAGS["prune"]):
        TrainConfig(epochs=0).validate()
    assert info.value.exit_code == 2
    assert capsys.readouterr().err.strip() == "error: --finetune-epochs must be a positive integer; got 0."
    with pytest.raises(typer.Exit), user_errors(flags=COMPRESSION_FLAGS["prune"]):
        balanced_subset(torch.arange(3), 2, seed=0)
    message = capsys.readouterr().err.strip()
    assert message == "error: --calibration-samples must be at least the number of classes (3); got 2."
