"""The command line end to end, and its handling of bad input: exit code 2, one line, no mess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from compresskit.checkpoint import load_checkpoint
from compresskit.cli import app
from tests.fakedata import CIFAR10_FOLDER, write_cifar10

HISTORY_COLUMNS = [
    "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "seconds",
]  # fmt: skip


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, object, object]:
    """One small training run (3 epochs on the synthetic set), then its evaluation."""
    run = tmp_path_factory.mktemp("cli") / "run"
    train = invoke(
        "train", "--dataset", "synthetic", "--model", "cnn_bn", "--width", "0.5",
        "--epochs", "3", "--out", run, "--quiet",
    )  # fmt: skip
    assert train.exit_code == 0, train.output
    evaluation = invoke("evaluate", "--checkpoint", run)
    assert evaluation.exit_code == 0, evaluation.output
    return run, train, evaluation


def test_train_writes_a_complete_run_directory(trained_run):
    run, train, _ = trained_run
    for name in ("config.json", "history.csv", "checkpoint.pt", "last.pt", "curves.png",
                 "summary.json"):  # fmt: skip
        assert (run / name).is_file(), name
        assert (run / name).stat().st_size > 0, name
    assert not list(run.parent.glob(".*partial*"))
    history = pd.read_csv(run / "history.csv")
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == [1, 2, 3]
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["name"] == "cnn_bn"
    assert config["model"]["width"] == 0.5
    assert config["model"]["spec"]["layers"] == [16, "M", 32, "M", 64, "M"]
    assert config["train"]["epochs"] == 3
    assert config["data"]["dataset"] == "synthetic"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 3
    assert summary["model"] == "cnn_bn"
    assert summary["stop_reason"] == "epochs"
    assert 1 <= summary["best_epoch"] <= 3
    assert summary["best_val_acc"] == pytest.approx(history["val_acc"].max())
    assert 0.0 <= summary["test_acc"] <= 1.0
    best = load_checkpoint(run)
    assert best.meta["epoch"] == summary["best_epoch"]
    assert best.meta["test_acc"] == summary["test_acc"]
    assert best.meta["dataset"] == "synthetic"
    assert best.meta["classes"] == [f"class{i}" for i in range(4)]
    assert best.spec.to_dict() == config["model"]["spec"]
    last = load_checkpoint(run / "last.pt")
    assert last.meta["epoch"] == 3
    assert last.meta["test_acc"] == summary["last_test_acc"]
    assert "cnn_bn" in train.stdout
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quiet_prints_no_progress(trained_run):
    _, train, _ = trained_run
    assert train.stderr == ""


def test_evaluate_writes_reports_that_agree(trained_run):
    run, _, evaluation = trained_run
    folder = run / "evaluation"
    for name in ("evaluation.json", "per_class.csv", "confusion.csv", "most_confused.csv"):
        assert (folder / name).is_file(), name
    for name in ("confusion.png", "most_confused.png", "recall.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert json.loads((folder / "run.json").read_text())["command"] == "evaluate"
    result = json.loads((folder / "evaluation.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert result["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-9)
    assert result["dataset"] == "synthetic"

    confusion = pd.read_csv(folder / "confusion.csv", index_col=0)
    classes = [f"class{i}" for i in range(4)]
    assert list(confusion.index) == classes
    assert list(confusion.columns) == classes
    matrix = confusion.to_numpy()
    assert matrix.sum() == result["test_samples"]
    assert result["test_acc"] == pytest.approx(matrix.trace() / matrix.sum())

    per_class = pd.read_csv(folder / "per_class.csv")
    assert per_class["class"].tolist() == classes
    for i, row in per_class.iterrows():
        support = matrix[i].sum()
        assert row["support"] == support
        assert row["recall"] == pytest.approx(matrix[i, i] / support)
        predicted = matrix[:, i].sum()
        assert row["precision"] == pytest.approx(matrix[i, i] / predicted if predicted else 0.0)
    assert result["macro_recall"] == pytest.approx(per_class["recall"].mean())
    assert "evaluation.json" in evaluation.stdout


def test_evaluate_a_checkpoint_file(trained_run):
    run, _, _ = trained_run
    result = invoke("evaluate", "--checkpoint", run / "last.pt")
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- bad input


def _garbage_cifar(tmp_path: Path) -> Path:
    write_cifar10(tmp_path / "cifar")
    (tmp_path / "cifar" / CIFAR10_FOLDER / "data_batch_1").write_bytes(b"\x00garbage" * 50)
    return tmp_path / "cifar"


def _empty_dir(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


BASE = ["train", "--dataset", "synthetic", "--model", "cnn", "--width", "0.25", "--epochs", "1"]

# (extra arguments, text the error line must contain); "{tmp}" is the test's tmp_path,
# "{garbage}" a CIFAR folder whose data_batch_1 is garbage, "{empty}" an empty folder.
TRAIN_ERRORS = {
    "unknown-model": (["--model", "vgg99"], "'--model': Value error, 'vgg99' is not one of 'vgg11'"),
    "unknown-dataset": (["--dataset", "imagenet"], "'--dataset': Value error, 'imagenet' is not one of"),
    "missing-data": (
        ["--dataset", "cifar10", "--data-dir", "{empty}", "--no-download"],
        CIFAR10_FOLDER,
    ),
    "malformed-data": (
        ["--dataset", "cifar10", "--data-dir", "{garbage}", "--no-download"],
        "data_batch_1",
    ),
    "epochs": (["--epochs", "0"], "--epochs must be a positive integer; got 0."),
    "batch-size": (["--batch-size", "0"], "--batch-size must be a positive integer; got 0."),
    "val-fraction": (["--val-fraction", "1.5"], "--val-fraction must be in [0, 1); got 1.5."),
    "augment": (
        ["--augment", "spin"],
        "--augment must be a comma list of crop, flip, cutout, jitter, rotate (each optionally =VALUE), "
        "or 'none'; got 'spin'.",
    ),
    "lr": (["--lr", "-1"], "--lr"),
    "optimizer": (["--optimizer", "adam"], "'adam' is not one of 'sgd', 'adamw'"),
    "target-accuracy": (
        ["--target-accuracy", "90"],
        "--target-accuracy must be a fraction in (0, 1], e.g. 0.9; got 90.0.",
    ),
    "head": (["--head", "deep"], "'deep' is not one of 'linear', 'mlp'"),
    "markup-in-input": (["--model", "[/bold]x"], "'[/bold]x' is not one of"),
    "precision": (["--precision", "fp16"], "'fp16' is not one of 'auto', 'fp32', 'bf16'"),
    "patience-metric": (["--patience-metric", "train_loss"], "'train_loss' is not one of 'val_acc'"),
    "min-delta": (["--min-delta", "-1"], "--min-delta must be 0 or more; got -1.0."),
    "init": (["--init", "xavier"], "'xavier' is not one of 'kaiming', 'torch'"),
    "init-layerwise": (["--init", "torch", "--layerwise"], "--init torch is for end-to-end training"),
    "track-test-layerwise": (["--track-test", "--layerwise"], "--track-test is for end-to-end training"),
    "track-test-value": (["--track-test=yes"], "--track-test"),
}


def _check_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]
    assert result.stdout == ""


def _no_run_left(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not list(parent.glob(f".{name}.partial-*"))


@pytest.mark.parametrize("case", list(TRAIN_ERRORS))
def test_train_bad_input(tmp_path, case):
    args, fragment = TRAIN_ERRORS[case]
    places = {}
    if "{garbage}" in args:
        places["{garbage}"] = str(_garbage_cifar(tmp_path))
    if "{empty}" in args:
        places["{empty}"] = str(_empty_dir(tmp_path))
    args = [places.get(a, a) for a in args]
    before = sorted(os.listdir(tmp_path))
    result = invoke(*BASE, *args, "--out", tmp_path / "run")
    _check_one_line_error(result, fragment)
    _no_run_left(tmp_path, "run")
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_train_refuses_a_folder_it_did_not_make(tmp_path, overwrite):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke(*BASE, "--out", out, *overwrite)
    _check_one_line_error(result, "--out")
    assert "made by something other than compresskit" in result.stderr
    assert os.listdir(out) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".run.partial-*"))


def test_train_needs_out_or_resume(tmp_path):
    result = CliRunner().invoke(app, BASE)
    _check_one_line_error(result, "train needs --out DIR (a new run directory) or --resume RUN")


def test_train_refuses_out_that_is_a_file(tmp_path):
    out = tmp_path / "run"
    out.write_text("a file")
    result = invoke(*BASE, "--out", out)
    _check_one_line_error(result, "--out")
    assert out.read_text() == "a file"


def test_evaluate_missing_checkpoint(tmp_path):
    result = invoke("evaluate", "--checkpoint", tmp_path / "nope.pt")
    _check_one_line_error(result, "--checkpoint")
    assert "nope.pt" in result.stderr
    assert os.listdir(tmp_path) == []


def test_evaluate_empty_run_directory(tmp_path):
    result = invoke("evaluate", "--checkpoint", tmp_path)
    _check_one_line_error(result, "checkpoint.pt")
    assert os.listdir(tmp_path) == []


def test_evaluate_not_a_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04 definitely not a torch file" * 10)
    result = invoke("evaluate", "--checkpoint", path)
    _check_one_line_error(result, "model.pt")
    assert "not a compresskit checkpoint" in result.stderr
    assert os.listdir(tmp_path) == ["model.pt"]


def test_subprocess_unknown_model(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "compresskit.cli", "train", "--model", "nope", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "'nope' is not one of" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1
    _no_run_left(tmp_path, "run")


def test_failure_during_training_leaves_a_failed_run_with_its_finished_epochs(tmp_path, monkeypatch):
    import compresskit.jobs.train
    from compresskit.train import fit

    def fit_that_breaks_after_epoch_1(model, train, val, cfg, **kwargs):
        recorder = kwargs["on_epoch"]

        def record_then_break(state):
            recorder(state)
            raise RuntimeError("disk on fire")

        return fit(model, train, val, cfg, **{**kwargs, "on_epoch": record_then_break})

    monkeypatch.setattr(compresskit.jobs.train, "fit", fit_that_breaks_after_epoch_1)
    with pytest.raises(RuntimeError, match="disk on fire"):
        invoke_raising(*BASE, "--epochs", "3", "--out", tmp_path / "run", "--quiet")
    marker = json.loads((tmp_path / "run" / "run.json").read_text())
    assert marker["state"] == "failed"
    assert "disk on fire" in marker["message"]
    assert pd.read_csv(tmp_path / "run" / "history.csv")["epoch"].tolist() == [1]
    assert load_checkpoint(tmp_path / "run" / "last.pt").training["epoch"] == 1
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def invoke_raising(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_overwrite_replaces_only_an_earlier_train_run(tmp_path):
    out = tmp_path / "run"
    first = invoke(*BASE, "--out", out, "--quiet", "--val-fraction", "0")
    assert first.exit_code == 0, first.output
    (out / "note.txt").write_text("inside the earlier run")
    again = invoke(*BASE, "--out", out, "--quiet", "--val-fraction", "0")
    _check_one_line_error(again, "--overwrite")
    assert (out / "note.txt").exists()
    result = invoke(*BASE, "--out", out, "--overwrite", "--quiet", "--val-fraction", "0")
    assert result.exit_code == 0, result.output
    assert not (out / "note.txt").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_val_acc"] is None
    assert summary["best_epoch"] == 1
    assert json.loads((out / "run.json").read_text())["state"] == "finished"
    assert os.listdir(tmp_path) == ["run"]


# ----------------------------------------------------------------------------- analyze


@pytest.fixture(scope="module")
def analyzed_run(trained_run):
    run = trained_run[0]
    result = invoke("analyze", "--checkpoint", run, "--samples", "40", "--filters", "--quiet")
    assert result.exit_code == 0, result.output
    return run, result


def test_analyze_writes_the_layer_table_and_plots(analyzed_run):
    run, result = analyzed_run
    table = pd.read_csv(run / "analysis" / "layers.csv")
    assert list(table.columns) == [
        "layer", "module", "output_shape", "dims",
        "csi_train", "csi_test", "si_train", "si_test", "probe_train", "probe_test",
    ]  # fmt: skip
    assert table["layer"].tolist() == ["block1", "block2", "block3", "fc1"]
    assert table["dims"].tolist() == [16 * 32 * 32, 32 * 16 * 16, 64 * 8 * 8, 4]
    metrics = table.drop(columns=["layer", "module", "output_shape", "dims"])
    assert metrics.notna().all().all()
    assert ((metrics >= 0) & (metrics <= 1)).all().all()
    # 40 class-balanced samples of 4 classes: every fraction is a multiple of 1/40
    assert np.allclose((metrics[["csi_train", "csi_test", "si_train", "si_test"]] * 40) % 1, 0)
    for name in ("separation.png", "filters.png"):
        assert (run / "analysis" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "block1" in result.stdout and "64×8×8" in result.stdout
    assert "layers.csv" in result.stdout
    assert not list(run.glob(".analysis.partial*"))


def test_analyze_is_deterministic_and_keeps_other_files(analyzed_run, tmp_path):
    run, _ = analyzed_run
    first = (run / "analysis" / "layers.csv").read_text()
    again = invoke("analyze", "--checkpoint", run, "--samples", "40", "--metrics", "csi", "--quiet")
    assert again.exit_code == 0, again.output
    table = pd.read_csv(run / "analysis" / "layers.csv")
    before = pd.read_csv(io.StringIO(first))
    assert table["csi_test"].tolist() == before["csi_test"].tolist()
    assert table["si_test"].isna().all()
    assert (run / "analysis" / "filters.png").is_file()  # from the earlier call, kept


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--layers", "features\\.("], "--layers"),
        (["--layers", "no-such-layer"], "--layers"),
        (["--metrics", "csi,accuracy"], "--metrics"),
        (["--metrics", "none"], "--metrics none"),
        (["--samples", "0"], "--samples"),
        (["--samples", "3"], "--samples must be at least the number of classes (4); got 3."),
        (["--batch-size", "0"], "--batch-size"),
        (["--memory-budget", "4 gigs"], "--memory-budget '4 gigs' is not a size; give a number of bytes"),
        (["--memory-budget", "-1"], "--memory-budget '-1' is not a size"),
        (["--memory-budget", "GiB"], "KiB, MiB, GiB or TiB (e.g. 4GiB, 500MB)"),
    ],
)
def test_analyze_bad_input(trained_run, args, fragment):
    run = trained_run[0]
    before = sorted(p.name for p in (run / "analysis").iterdir()) if (run / "analysis").exists() else None
    result = invoke("analyze", "--checkpoint", run, "--quiet", *args)
    _check_one_line_error(result, fragment)
    after = sorted(p.name for p in (run / "analysis").iterdir()) if (run / "analysis").exists() else None
    assert before == after
    assert not list(run.glob(".analysis.partial*"))


def test_analyze_streams_beyond_the_memory_budget_with_the_same_csi(analyzed_run):
    run, held = analyzed_run  # the default budget holds 40 small samples
    assert "train features" in held.stdout and "in memory, 1 pass (" in held.stdout
    before = pd.read_csv(run / "analysis" / "layers.csv")
    result = invoke(
        "analyze", "--checkpoint", run, "--samples", "40", "--metrics", "csi,probe",
        "--memory-budget", "1KiB", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "streamed, 2 passes (" in result.stdout and "budget 1.0 KiB" in result.stdout
    after = pd.read_csv(run / "analysis" / "layers.csv")
    for split in ("train", "test"):
        assert np.abs(after[f"csi_{split}"] - before[f"csi_{split}"]).max() <= 1e-6


def test_analyze_on_cuda_without_cuda_is_one_clear_error(trained_run, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = invoke("analyze", "--checkpoint", trained_run[0], "--device", "cuda", "--quiet")
    _check_one_line_error(result, "--device cuda was asked for but no CUDA device is available")


def test_analyze_missing_checkpoint(tmp_path):
    result = invoke("analyze", "--checkpoint", tmp_path / "nope")
    _check_one_line_error(result, "--checkpoint")


def test_evaluate_with_tta_records_both_accuracies(trained_run):
    run = trained_run[0]
    plain = json.loads((run / "evaluation" / "evaluation.json").read_text())
    result = invoke("evaluate", "--checkpoint", run, "--tta", "flip-translate")
    assert result.exit_code == 0, result.output
    tta = json.loads((run / "evaluation" / "evaluation.json").read_text())
    assert tta["tta"] == "flip-translate"
    assert tta["test_acc_no_tta"] == plain["test_acc"]
    assert 0 <= tta["test_acc"] <= 1
    assert "without" in result.stdout
    bad = invoke("evaluate", "--checkpoint", run, "--tta", "rotate")
    _check_one_line_error(bad, "'rotate' is not one of 'none', 'flip', 'flip-translate'")
    assert invoke("evaluate", "--checkpoint", run).exit_code == 0  # leave the plain evaluation behind


# ----------------------------------------------------------------------------- prune, report, sensitivity


@pytest.fixture(scope="module")
def pruned_run(trained_run):
    run = trained_run[0]
    out = run.parent / "pruned"
    result = invoke(
        "prune", "--checkpoint", run, "--out", out, "--ratio", "0.5", "--importance", "separation",
        "--finetune-epochs", "2", "--calibration-samples", "40", "--bench-seconds", "0.05", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return run, out, result


def test_prune_writes_a_pruned_run_with_a_consistent_report(pruned_run):
    run, out, _ = pruned_run
    for name in ("config.json", "checkpoint.pt", "pruned.pt", "last.pt", "history.csv", "curves.png",
                 "widths.csv", "report.csv", "report.md", "summary.json"):  # fmt: skip
        assert (out / name).is_file(), name
    widths = pd.read_csv(out / "widths.csv")
    assert widths["original"].tolist() == [16, 32, 64]
    assert widths["pruned"].tolist() == [8, 16, 32]
    report = pd.read_csv(out / "report.csv")
    assert report["model"].tolist() == ["original", "pruned", "pruned+fine-tuned"]
    for column in ("params", "macs", "size_mb", "latency_b1_ms", "latency_b128_ms", "test_acc",
                   "macs_reduction", "latency_reduction_b1", "latency_reduction_b128"):  # fmt: skip
        assert report[column].notna().all(), column
    macs = report["macs"]
    assert report["macs_reduction"].tolist() == pytest.approx((macs.iloc[0] / macs).tolist())
    assert report["latency_reduction_b1"].tolist() == pytest.approx(
        (report["latency_b1_ms"].iloc[0] / report["latency_b1_ms"]).tolist()
    )
    assert report["params"].iloc[1] == report["params"].iloc[2] < report["params"].iloc[0]
    assert report["macs_reduction"].iloc[2] > 3  # half the channels: about 4× fewer MACs
    original = load_checkpoint(run)
    pruned = load_checkpoint(out)
    assert report["test_acc"].iloc[0] == pytest.approx(original.meta["test_acc"])
    assert report["test_acc"].iloc[2] == pytest.approx(pruned.meta["test_acc"])
    assert pruned.spec.conv_widths == [8, 16, 32]
    assert pruned.spec.num_classes == original.spec.num_classes
    assert report["size_mb"].iloc[2] == pytest.approx((out / "checkpoint.pt").stat().st_size / 1e6)
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert "original" in (out / "report.md").read_text()
    assert not list(out.parent.glob(".pruned.partial*"))


def test_prune_in_steps_splits_the_fine_tuning(trained_run, tmp_path):
    run = trained_run[0]
    result = invoke(
        "prune", "--checkpoint", run, "--out", tmp_path / "steps", "--ratio", "0.5", "--steps", "2",
        "--round-to", "4", "--finetune-epochs", "3", "--bench-seconds", "0.05", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    history = pd.read_csv(tmp_path / "steps" / "history.csv")
    assert history["step"].tolist() == [1, 2, 2]
    assert history["epoch"].tolist() == [1, 2, 3]
    widths = load_checkpoint(tmp_path / "steps").spec.conv_widths
    assert all(w % 4 == 0 for w in widths)


def test_prune_with_one_given_ratio_per_layer(trained_run, tmp_path):
    """--layer-ratios prunes each conv layer by its own ratio (torch-pruning keeps int(w·(1−r)));
    a list of the wrong length, or one beside --allocate csi, is refused before anything is written."""
    run = trained_run[0]
    widths = load_checkpoint(run).spec.conv_widths
    ratios = [0.0] + [0.5] * (len(widths) - 2) + [0.75]
    given = ",".join(str(r) for r in ratios)
    result = invoke("prune", "--checkpoint", run, "--out", tmp_path / "given", "--layer-ratios", given,
                    "--finetune-epochs", "0", "--bench-seconds", "0.05", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    pruned = load_checkpoint(tmp_path / "given").spec.conv_widths
    assert pruned == [int(w * (1 - r)) for w, r in zip(widths, ratios, strict=True)]
    config = json.loads((tmp_path / "given" / "config.json").read_text())
    assert config["compression"]["layer_ratios"] == ratios
    for flags, words in ((["--layer-ratios", "0.5,0.5"], "one per layer"),
                         (["--layer-ratios", given, "--allocate", "csi"], "--allocate uniform")):  # fmt: skip
        result = invoke("prune", "--checkpoint", run, "--out", tmp_path / "bad", *flags, "--quiet")
        assert result.exit_code == 2 and "--layer-ratios" in result.stderr and words in result.stderr
        assert not (tmp_path / "bad").exists()


def test_report_compares_runs_and_draws_the_pareto_plot(pruned_run, tmp_path):
    run, out, _ = pruned_run
    result = invoke("report", run, out, "--out", tmp_path / "cmp", "--bench-seconds", "0.05", "--quiet")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "cmp" / "report.csv")
    assert table["model"].tolist() == [run.name, out.name]
    assert table["macs_reduction"].iloc[0] == 1.0
    assert table["macs_reduction"].iloc[1] > 3
    assert (tmp_path / "cmp" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "speed ×" in result.stdout


def test_sensitivity_scans_every_layer_at_every_ratio(trained_run):
    run = trained_run[0]
    result = invoke("sensitivity", "--checkpoint", run, "--ratios", "0.25,0.75", "--quiet")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(run / "sensitivity" / "sensitivity.csv")
    assert table["layer"].tolist() == ["block1", "block1", "block2", "block2", "block3", "block3"]
    assert table["ratio"].tolist() == [0.25, 0.75] * 3
    assert table["channels_kept"].tolist() == [12, 4, 24, 8, 48, 16]
    assert table["test_acc"].between(0, 1).all()
    assert (run / "sensitivity" / "sensitivity.png").is_file()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--ratio", "0"], "--ratio 0.0"),
        (["--ratio", "1"], "--ratio 1.0"),
        (["--importance", "taylor", "--calibration-samples", "0"], "--importance taylor needs calibration"),
        (["--allocate", "csi", "--calibration-samples", "0"], "--allocate csi needs calibration"),
        (["--importance", "magic"], "'magic' is not one of 'l1'"),
        (["--finetune-epochs", "-1"], "--finetune-epochs -1"),
    ],
)
def test_prune_bad_input(trained_run, tmp_path, args, fragment):
    result = invoke("prune", "--checkpoint", trained_run[0], "--out", tmp_path / "p", "--quiet", *args)
    _check_one_line_error(result, fragment)
    _no_run_left(tmp_path, "p")


def test_prune_refuses_missing_and_foreign_checkpoints(tmp_path):
    result = invoke("prune", "--checkpoint", tmp_path / "nope", "--out", tmp_path / "p")
    _check_one_line_error(result, "--checkpoint")
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    result = invoke("prune", "--checkpoint", tmp_path / "model.pt", "--out", tmp_path / "p")
    _check_one_line_error(result, "model.pt")
    _no_run_left(tmp_path, "p")


def test_prune_refuses_a_model_with_nothing_left(tmp_path):
    run = tmp_path / "tiny"
    trained = invoke("train", "--dataset", "synthetic", "--model", "cnn", "--width", "0.01",
                     "--epochs", "1", "--out", run, "--quiet")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    result = invoke("prune", "--checkpoint", run, "--out", tmp_path / "p", "--quiet")
    _check_one_line_error(result, "nothing left to prune")
    _no_run_left(tmp_path, "p")


def test_sensitivity_bad_ratios(trained_run):
    result = invoke("sensitivity", "--checkpoint", trained_run[0], "--ratios", "0.5,1.2")
    _check_one_line_error(result, "--ratios")
    result = invoke("sensitivity", "--checkpoint", trained_run[0], "--ratios", "half")
    _check_one_line_error(result, "--ratios 'half'")


# ----------------------------------------------------------------------------- lowrank, depth, lineage


@pytest.mark.slow
def test_depth_then_prune_then_lowrank_compose_and_carry_their_lineage(trained_run, tmp_path):
    run = trained_run[0]
    fast = ["--finetune-epochs", "1", "--bench-seconds", "0.05", "--quiet"]
    shallow, pruned, factored = tmp_path / "depth", tmp_path / "prune", tmp_path / "lowrank"
    result = invoke("depth", "--from", run, "--out", shallow, "--keep-blocks", "2", "--samples", "40", *fast)
    assert result.exit_code == 0, result.output
    depth_table = pd.read_csv(shallow / "depth.csv")
    assert depth_table["kept"].tolist() == [True, True, False]
    assert load_checkpoint(shallow).spec.conv_widths == [16, 32]
    result = invoke("prune", "--from", shallow, "--out", pruned, "--ratio", "0.5", *fast)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(pruned).spec.conv_widths == [8, 16]
    result = invoke("lowrank", "--from", pruned, "--out", factored, "--rank-ratio", "0.3", *fast)
    assert result.exit_code == 0, result.output
    final = load_checkpoint(factored)
    assert final.spec.conv_widths == [8, 16]
    ranks = pd.read_csv(factored / "ranks.csv")
    assert set(ranks["action"]) <= {"factorized", "kept: no MAC saving"}
    factorized = ranks[ranks["action"] == "factorized"]
    assert len(factorized) >= 1
    assert final.spec.conv_ranks is not None or final.spec.linear_ranks is not None
    lineage = final.meta["lineage"]
    assert len(lineage) == 4
    assert lineage[0].startswith("train cnn_bn")
    assert lineage[1].startswith("depth 2 blocks")
    assert lineage[2].startswith("prune l1 0.5")
    assert lineage[3].startswith("lowrank rank ratio 0.3")
    report = pd.read_csv(factored / "report.csv")
    assert report["lineage"].iloc[2] == " → ".join(lineage)
    assert report["lineage"].iloc[0] == " → ".join(lineage[:3])
    compare = invoke("report", run, shallow, pruned, factored, "--out", tmp_path / "cmp",
                     "--bench-seconds", "0.05", "--quiet")  # fmt: skip
    assert compare.exit_code == 0, compare.output
    table = pd.read_csv(tmp_path / "cmp" / "report.csv")
    assert table["lineage"].tolist() == [
        f"train cnn_bn ({run.name})",
        *(" → ".join(lineage[:i]) for i in (2, 3, 4)),
    ]
    assert table["macs"].is_monotonic_decreasing


@pytest.mark.parametrize(
    ("command", "args", "fragment"),
    [
        ("lowrank", ["--energy", "1.5"], "--energy must be in (0, 1]; got 1.5."),
        ("lowrank", ["--rank-ratio", "0"], "--rank-ratio must be in (0, 1]; got 0.0."),
        ("lowrank", ["--energy", "0.9", "--rank-ratio", "0.5"], "exactly one"),
        ("lowrank", ["--layers", "block1,block9"], "block9"),
        ("depth", ["--keep-blocks", "0"], "--keep-blocks 0"),
        (
            "depth",
            ["--keep-blocks", "7"],
            "--keep-blocks must be between 1 and the model's 3 conv blocks; got 7.",
        ),
        ("depth", ["--min-gain", "2"], "would remove every block"),
    ],
)
def test_lowrank_and_depth_bad_input(trained_run, tmp_path, command, args, fragment):
    extra = ["--samples", "40"] if command == "depth" else []
    out = tmp_path / "c"
    result = invoke(command, "--checkpoint", trained_run[0], "--out", out, "--quiet", *extra, *args)
    _check_one_line_error(result, fragment)
    _no_run_left(tmp_path, "c")


def test_evaluate_a_100_class_model_gives_top5_and_most_confused_pairs(tmp_path):
    """Was a matplotlib ValueError in the confusion plot, with no evaluation.json."""
    from tests.fakedata import write_cifar100

    write_cifar100(tmp_path / "c100", n_train=400, n_test=200)
    run = tmp_path / "run"
    trained = invoke("train", "--dataset", "cifar100", "--data-dir", tmp_path / "c100", "--no-download",
                     "--model", "cnn", "--width", "0.25", "--epochs", "1", "--val-fraction", "0",
                     "--out", run, "--quiet")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    result = invoke("evaluate", "--checkpoint", run, "--no-download")
    assert result.exit_code == 0, result.output
    evaluation = json.loads((run / "evaluation" / "evaluation.json").read_text())
    assert 0.0 <= evaluation["test_acc"] <= evaluation["test_top5_acc"] <= 1.0
    confused = pd.read_csv(run / "evaluation" / "most_confused.csv")
    assert list(confused.columns) == ["true", "predicted", "count", "share"]
    assert (confused["true"] != confused["predicted"]).all()
    assert (run / "evaluation" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- nothing a user owns is removed


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_report_refuses_an_out_that_holds_its_inputs(pruned_run, overwrite):
    """Was: `report runs/a --out runs` exited 0 and removed runs/ with the trained run in it."""
    run, out, _ = pruned_run
    parent = run.parent
    before = _snapshot(parent)
    result = invoke("report", run, out, "--out", parent, "--bench-seconds", "0.02", "--quiet", *overwrite)
    _check_one_line_error(result, f"--out {parent}")
    assert _snapshot(parent) == before


def test_report_replaces_only_its_own_earlier_report(pruned_run, tmp_path):
    run, out, _ = pruned_run
    args = ["report", run, out, "--bench-seconds", "0.02", "--quiet", "--out", tmp_path / "cmp"]
    assert invoke(*args).exit_code == 0
    (tmp_path / "cmp" / "notes.txt").write_text("mine")
    _check_one_line_error(invoke(*args), "--overwrite")
    assert (tmp_path / "cmp" / "notes.txt").read_text() == "mine"
    assert invoke(*args, "--overwrite").exit_code == 0
    assert sorted(os.listdir(tmp_path / "cmp")) == ["pareto.png", "report.csv", "report.md", "run.json"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    result = invoke(*args[:-1], foreign, "--overwrite")
    _check_one_line_error(result, "made by something other than compresskit")
    assert os.listdir(foreign) == ["thesis.tex"]


COMPRESS_ARGS = {
    "prune": ["--ratio", "0.5"],
    "lowrank": ["--rank-ratio", "0.3"],
    "depth": ["--keep-blocks", "2", "--samples", "40"],
}


@pytest.mark.parametrize("command", list(COMPRESS_ARGS))
def test_compression_out_must_be_new_or_its_own_earlier_output(trained_run, pruned_run, tmp_path, command):
    run = trained_run[0]
    args = [command, "--checkpoint", run, *COMPRESS_ARGS[command], "--finetune-epochs", "0",
            "--bench-seconds", "0.02", "--quiet"]  # fmt: skip
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("1,2,3")
    for extra in ([], ["--overwrite"]):
        _check_one_line_error(invoke(*args, "--out", foreign, *extra), f"--out {foreign}")
        assert os.listdir(foreign) == ["data.csv"]
        # the source run itself, a train output
        before = _snapshot(run)
        _check_one_line_error(invoke(*args, "--out", run, *extra), f"--out {run}")
        assert _snapshot(run) == before
    other = pruned_run[1] if command != "prune" else None
    if other is not None:  # another command's output, even with --overwrite
        before = _snapshot(other)
        _check_one_line_error(invoke(*args, "--out", other, "--overwrite"), "made by compresskit prune")
        assert _snapshot(other) == before
    mine = tmp_path / "mine"
    assert invoke(*args, "--out", mine).exit_code == 0
    _check_one_line_error(invoke(*args, "--out", mine), "--overwrite")
    again = invoke(*args, "--out", mine, "--overwrite")
    assert again.exit_code == 0, again.output
    # its own earlier output, but also this call's input: refused
    before = _snapshot(mine)
    chained = [command, "--checkpoint", mine, *COMPRESS_ARGS[command], "--finetune-epochs", "0", "--quiet"]
    _check_one_line_error(invoke(*chained, "--out", mine, "--overwrite"), "this command's inputs")
    assert _snapshot(mine) == before


@pytest.mark.parametrize(("command", "folder"), [("evaluate", "evaluation"), ("analyze", "analysis"),
                                                 ("sensitivity", "sensitivity")])  # fmt: skip
def test_run_subfolders_are_replaced_only_when_the_command_wrote_them(trained_run, tmp_path, command, folder):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(
        trained_run[0], run, ignore=shutil.ignore_patterns("evaluation", "analysis", "sensitivity")
    )
    extra = {"analyze": ["--samples", "40", "--metrics", "csi"], "sensitivity": ["--ratios", "0.5"]}
    args = [command, "--checkpoint", run, *extra.get(command, [])]
    (run / folder).mkdir()
    (run / folder / "my-notes.md").write_text("mine")
    _check_one_line_error(
        invoke(*args), f"{run / folder} exists and was not written by compresskit {command}"
    )
    assert os.listdir(run / folder) == ["my-notes.md"]
    (run / folder / "my-notes.md").unlink()
    assert invoke(*args).exit_code == 0  # an empty folder is filled
    marker = json.loads((run / folder / "run.json").read_text())
    assert (marker["command"], marker["state"]) == (command, "finished")
    assert invoke(*args).exit_code == 0  # its own output is replaced
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def test_fine_tuning_validates_on_the_training_runs_split_whatever_its_seed(trained_run, pruned_run):
    """Was: fine-tuning split train/validation with the compress command's --seed, so with another
    seed it validated on images the model had been trained on."""
    import torch

    from compresskit.data import load_dataset, stratified_split
    from compresskit.jobs.compress import JobOptions, open_job
    from compresskit.train import TrainConfig

    run = trained_run[0]  # trained with --seed 0
    data = load_dataset("synthetic")
    fitted, held = stratified_split(data.train.labels, 0.1, 0)
    assert set(held.tolist()) != set(stratified_split(data.train.labels, 0.1, 5)[1].tolist())
    job = open_job(run, TrainConfig(epochs=1, seed=5, device="cpu"), JobOptions())
    assert torch.equal(job.val.images.cpu(), data.train.images[held])
    assert torch.equal(job.train.images.cpu(), data.train.images[fitted])
    source, pruned = (json.loads((r / "config.json").read_text()) for r in (run, pruned_run[1]))
    assert pruned["data"]["split"] == source["data"]["split"]


# ----------------------------------------------------------------------------- help, version, choices


def test_fixed_choices_are_the_librarys_own():
    from compresskit import cli, data, models, train
    from compresskit.compress import prune

    assert [m.value for m in cli.ModelName] == list(models.MODEL_NAMES)
    assert [m.value for m in cli.DatasetName] == list(data.DATASET_NAMES)
    assert [m.value for m in cli.HeadName] == list(models.HEADS)
    assert [m.value for m in cli.OptimizerName] == list(train.OPTIMIZERS)
    assert [m.value for m in cli.ScheduleName] == list(train.SCHEDULES)
    assert [m.value for m in cli.TtaName] == list(train.TTA_MODES)
    assert [m.value for m in cli.PrecisionName] == list(train.PRECISIONS)
    assert [m.value for m in cli.PatienceMetric] == list(train.PATIENCE_METRICS)
    assert [m.value for m in cli.LabelSet] == list(data.LABEL_SETS)
    assert [m.value for m in cli.InitName] == list(models.INITS)
    assert [m.value for m in cli.ImportanceName] == list(prune.IMPORTANCES)
    no_data = [i for i in prune.IMPORTANCES if i not in prune.NEEDS_DATA]
    assert [m.value for m in cli.SensitivityImportance] == no_data


COMMANDS = ["train", "evaluate", "analyze", "prune", "lowrank", "depth", "report", "sensitivity"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_fits_80_columns_and_lists_every_allowed_value(command):
    from compresskit import cli

    result = CliRunner().invoke(app, [command, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    assert "…" not in result.stdout
    flat = " ".join(result.stdout.split())
    choices = {"train": [cli.ModelName, cli.DatasetName, cli.HeadName, cli.OptimizerName, cli.ScheduleName],
               "prune": [cli.ImportanceName, cli.ScopeName, cli.AllocateName], "evaluate": [cli.TtaName],
               "sensitivity": [cli.SensitivityImportance]}  # fmt: skip
    for enum in choices.get(command, []):
        for member in enum:
            assert member.value in flat, (enum.__name__, member.value)


def test_version_and_python_dash_m(tmp_path):
    from compresskit import __version__

    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"compresskit {__version__}"
    proc = subprocess.run([sys.executable, "-m", "compresskit", "--version"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"compresskit {__version__}"


def test_report_shows_progress_while_it_measures(pruned_run, tmp_path):
    run, out, _ = pruned_run
    result = invoke("report", run, out, "--out", tmp_path / "cmp", "--bench-seconds", "0.02")
    assert result.exit_code == 0, result.output
    assert f"measuring {run.name}" in result.stderr
    assert f"measuring {out.name}" in result.stderr


def test_cifar100_coarse_labels_train_evaluate_and_keep_their_label_set(tmp_path):
    from tests.fakedata import write_cifar100

    write_cifar100(tmp_path / "c100", n_train=200, n_test=100)
    run = tmp_path / "run"
    trained = invoke("train", "--dataset", "cifar100", "--data-dir", tmp_path / "c100", "--no-download",
                     "--labels", "coarse", "--model", "cnn", "--width", "0.25", "--epochs", "1",
                     "--val-fraction", "0", "--out", run, "--quiet")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert load_checkpoint(run).spec.num_classes == 20
    assert json.loads((run / "config.json").read_text())["data"]["labels"] == "coarse"
    result = invoke("evaluate", "--checkpoint", run, "--no-download")  # reloads the coarse labels
    assert result.exit_code == 0, result.output
    per_class = pd.read_csv(run / "evaluation" / "per_class.csv")
    assert len(per_class) == 20
    bad = invoke("train", "--dataset", "cifar10", "--labels", "coarse", "--out", tmp_path / "x")
    _check_one_line_error(bad, "--labels coarse is only available for cifar100")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_the_attention_cnn_goes_through_analyze_prune_and_report(tmp_path):
    run = tmp_path / "se"
    fast = ["--bench-seconds", "0.02", "--quiet"]
    trained = invoke("train", "--dataset", "synthetic", "--model", "cnn_se_bn", "--width", "0.5",
                     "--epochs", "1", "--out", run, "--quiet")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    analyzed = invoke("analyze", "--checkpoint", run, "--samples", "40", "--metrics", "csi", "--quiet")
    assert analyzed.exit_code == 0, analyzed.output
    blocks = [f"block{i}" for i in range(1, 7)]
    assert pd.read_csv(run / "analysis" / "layers.csv")["layer"].tolist() == [*blocks, "fc1"]
    pruned = tmp_path / "se-pruned"
    result = invoke(
        "prune", "--checkpoint", run, "--out", pruned, "--ratio", "0.5", "--finetune-epochs", "1", *fast
    )
    assert result.exit_code == 0, result.output
    assert load_checkpoint(pruned).spec.conv_widths == [8, 8, 16, 16, 32, 32]
    assert load_checkpoint(pruned).spec.se_reduction == 8
    compared = invoke("report", run, pruned, "--out", tmp_path / "cmp", *fast)
    assert compared.exit_code == 0, compared.output
    assert pd.read_csv(tmp_path / "cmp" / "report.csv")["macs_reduction"].iloc[1] > 3


def test_track_test_records_the_test_curve_and_the_best_epochs_test_accuracy(tmp_path):
    run = tmp_path / "run"
    result = invoke("train", "--dataset", "synthetic", "--model", "cnn_bn", "--width", "0.5", "--epochs", "3",
                    "--out", run, "--quiet", "--track-test")  # fmt: skip
    assert result.exit_code == 0, result.output
    history = pd.read_csv(run / "history.csv")
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["test_loss"].notna().all() and history["test_acc"].between(0, 1).all()
    summary = json.loads((run / "summary.json").read_text())
    best = history[history["epoch"] == summary["best_epoch"]].iloc[0]
    assert summary["test_acc"] == pytest.approx(best["test_acc"])  # the selected weights' test score
    assert json.loads((run / "config.json").read_text())["train"]["track_test"] is True
