"""A run killed mid-epoch and resumed ends exactly as the run left alone; SIGINT and SIGTERM stop
cleanly after saving; --resume refuses flags that would change the run.

Each stopped run is a real `python` process that signals itself in the middle of an epoch (after a
fixed number of training batches), so the stop lands at the same place every time.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from compresskit.checkpoint import load_checkpoint
from compresskit.cli import app

pytestmark = pytest.mark.slow  # subprocess kill-and-resume runs

TRAIN = ["train", "--dataset", "synthetic", "--model", "cnn_bn", "--width", "0.5", "--batch-size", "32",
         "--dropout", "0.2", "--head", "mlp", "--quiet"]  # fmt: skip
BATCHES_PER_EPOCH = 6  # 172 synthetic training images in batches of 32
FINE_TUNING_BATCHES_PER_EPOCH = 2  # in the compression commands' batches of 128

STOPPER = textwrap.dedent("""
    import os, signal, sys
    from compresskit import data
    # A suite started in the background by a non-interactive shell inherits SIGINT ignored, and
    # Python then installs no Ctrl-C handler: give this process the one an interactive user has.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    kill_at, signum = int(sys.argv[1]), int(sys.argv[2])
    seen = 0
    original = data.Loader.__iter__

    def batches_then_signal(self):
        global seen
        for batch in original(self):
            if self.shuffle:  # the training loader
                seen += 1
                if seen == kill_at:
                    os.kill(os.getpid(), signum)
            yield batch

    data.Loader.__iter__ = batches_then_signal
    from compresskit.cli import main
    sys.argv = ["compresskit", *sys.argv[3:]]
    main()
""")


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def run_and_signal(args: list, kill_at: int, signum: int, cwd: Path) -> subprocess.CompletedProcess:
    """Run `compresskit ARGS` in a new process that sends itself `signum` during training batch
    number `kill_at` (counted over the whole run)."""
    return subprocess.run(
        [sys.executable, "-c", STOPPER, str(kill_at), str(int(signum)), *map(str, args)],
        capture_output=True, text=True, timeout=600, cwd=cwd,
    )  # fmt: skip


def run_cli(args: list, cwd: Path) -> subprocess.CompletedProcess:
    """`compresskit ARGS` in a fresh process, like every stopped run here. A long-lived process
    (this test session) may compute a few kernels differently in the last bits (oneDNN's
    channels_last convolutions, LAPACK's SVD), which is not what these tests are about."""
    return run_and_signal(args, 10**9, signal.SIGKILL, cwd)


def same_history(a: Path, b: Path) -> None:
    left = pd.read_csv(a / "history.csv").drop(columns="seconds")
    right = pd.read_csv(b / "history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(left, right, check_exact=True)


def same_weights(a: Path, b: Path) -> None:
    left, right = load_checkpoint(a).state_dict, load_checkpoint(b).state_dict
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


def state(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["state"]


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> Path:
    """The reference: 4 epochs, never stopped."""
    run = tmp_path_factory.mktemp("alone") / "run"
    result = run_cli([*TRAIN, "--epochs", "4", "--out", run], run.parent)
    assert result.returncode == 0, result.stderr
    return run


def test_sigkill_mid_epoch_then_resume_matches_the_run_left_alone(alone, tmp_path):
    run = tmp_path / "run"
    killed = run_and_signal([*TRAIN, "--epochs", "4", "--out", run], 2 * BATCHES_PER_EPOCH + 3,
                            signal.SIGKILL, tmp_path)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert state(run) == "running"  # nobody could record the kill
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [1, 2]
    assert load_checkpoint(run / "last.pt").training["epoch"] == 2
    assert not (run / "checkpoint.pt").exists()
    resumed = run_cli(["train", "--resume", run, "--quiet"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert state(run) == "finished"
    same_history(run, alone)
    same_weights(run, alone)
    same_weights(run / "last.pt", alone / "last.pt")
    mine, theirs = (json.loads((r / "summary.json").read_text()) for r in (run, alone))
    assert mine["test_acc"] == theirs["test_acc"]
    assert mine["best_epoch"] == theirs["best_epoch"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_stop_after_saving_and_mark_the_run_interrupted(alone, tmp_path, signum):
    run = tmp_path / "run"
    stopped = run_and_signal([*TRAIN, "--epochs", "4", "--out", run], BATCHES_PER_EPOCH + 2, signum, tmp_path)
    assert stopped.returncode == 130, stopped.stderr
    lines = [line for line in stopped.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("stopped: "), stopped.stderr
    assert f"--resume {run}" in lines[0]
    assert "Traceback" not in stopped.stderr
    assert state(run) == "interrupted"
    assert load_checkpoint(run / "last.pt").training["epoch"] == 1
    resumed = run_cli(["train", "--resume", run, "--quiet"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    same_history(run, alone)
    same_weights(run, alone)


def test_layerwise_run_resumes_inside_a_stage(tmp_path):
    args = [*TRAIN, "--layerwise", "--stage-epochs", "2"]
    alone = tmp_path / "alone"
    assert run_cli([*args, "--out", alone], tmp_path).returncode == 0
    run = tmp_path / "run"
    killed = run_and_signal([*args, "--out", run], 2 * BATCHES_PER_EPOCH + 4, signal.SIGKILL, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (run / "stages" / "01" / "stage.pt").is_file()
    assert not (run / "stages" / "02").exists()
    resumed = run_cli(["train", "--resume", run, "--quiet"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    same_history(run, alone)
    same_weights(run, alone)
    for stage in ("01", "02", "03"):
        pd.testing.assert_frame_equal(
            pd.read_csv(run / "stages" / stage / "history.csv").drop(columns="seconds"),
            pd.read_csv(alone / "stages" / stage / "history.csv").drop(columns="seconds"),
        )


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("prune", ["--ratio", "0.5", "--steps", "2", "--finetune-epochs", "4"]),
        ("lowrank", ["--rank-ratio", "0.3", "--finetune-epochs", "3"]),
        ("depth", ["--keep-blocks", "2", "--samples", "40", "--finetune-epochs", "3"]),
    ],
)
def test_compression_fine_tuning_resumes_exactly(alone, tmp_path, command, args):
    common = [command, "--checkpoint", alone, *args, "--seed", "3", "--bench-seconds", "0.02", "--quiet"]
    reference = tmp_path / "reference"
    alone_run = run_cli([*common, "--out", reference], tmp_path)
    assert alone_run.returncode == 0, alone_run.stderr
    run = tmp_path / "run"
    mid_epoch_3 = 2 * FINE_TUNING_BATCHES_PER_EPOCH + 1
    killed = run_and_signal([*common, "--out", run], mid_epoch_3, signal.SIGKILL, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert state(run) == "running"
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [1, 2]
    resumed = run_cli([command, "--resume", run, "--quiet", "--bench-seconds", "0.02"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert state(run) == "finished"
    same_history(run, reference)
    same_weights(run, reference)
    mine, theirs = (json.loads((r / "summary.json").read_text()) for r in (run, reference))
    assert mine["test_acc"] == theirs["test_acc"]
    assert mine["conv_widths"] == theirs["conv_widths"]


def test_resume_refuses_flags_that_would_change_the_run(alone, tmp_path):
    result = invoke("train", "--resume", alone, "--epochs", "9", "--lr", "0.1")
    assert result.exit_code == 2
    assert "drop --epochs, --lr" in result.stderr
    result = invoke("prune", "--resume", alone, "--ratio", "0.2")
    assert result.exit_code == 2
    assert "drop --ratio" in result.stderr


def test_resume_refuses_what_it_cannot_continue(alone, tmp_path):
    finished = invoke("train", "--resume", alone, "--quiet")
    assert finished.exit_code == 2
    assert "already finished" in finished.stderr
    not_a_run = tmp_path / "folder"
    not_a_run.mkdir()
    result = invoke("train", "--resume", not_a_run)
    assert result.exit_code == 2
    assert "not a compresskit train run directory" in result.stderr
    result = invoke("lowrank", "--resume", alone)
    assert result.exit_code == 2
    assert "not a compresskit lowrank run directory (a train run)" in result.stderr


def test_resume_refuses_a_run_whose_process_is_still_alive(alone, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(alone, run)
    marker = json.loads((run / "run.json").read_text())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "run.json").write_text(json.dumps({**marker, "state": "running", "pid": sleeper.pid}))
        result = invoke("train", "--resume", run, "--quiet")
        assert result.exit_code == 2
        assert f"still running (process {sleeper.pid})" in result.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
    result = run_cli(["train", "--resume", run, "--quiet"], tmp_path)  # its process is gone: a crash
    assert result.returncode == 0, result.stderr
    assert state(run) == "finished"
    same_history(run, alone)
