"""The precision a quoted test accuracy is computed in: `evaluate --precision` (fp32 by default,
recorded in evaluation.json) and the final test accuracy of train and prune (fp32 whatever the
training precision, recorded as ``test_precision``)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from compresskit.checkpoint import load_checkpoint
from compresskit.cli import app
from compresskit.errors import CompresskitError
from compresskit.jobs import evaluate as evaluate_job
from compresskit.jobs import evaluate_run
from compresskit.train import precision as precision_module

FP32 = "fp32 + channels_last"
BF16 = "bf16 + channels_last"


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend the CPU computes bf16 natively (on one that does not, bf16 is emulated: slow, but
    correct, and these models are tiny)."""
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: True)


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory) -> Path:
    """A one-epoch run trained in bf16 autocast, its job's own evaluations spied on."""
    run = tmp_path_factory.mktemp("precision") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision_module, "cpu_supports_bf16", lambda: True)
        result = invoke("train", "--dataset", "synthetic", "--model", "cnn_bn", "--width", "0.25",
                        "--epochs", "1", "--precision", "bf16", "--out", run, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    return run


class AutocastSpy:
    """Wraps `predict` in the evaluate job: records, for every forward pass, whether CPU autocast
    was on and in which dtype."""

    def __init__(self, monkeypatch) -> None:
        self.seen: list[tuple[bool, torch.dtype]] = []
        real = evaluate_job.predict

        def predict(model, *args, **kwargs):
            hook = model.register_forward_pre_hook(lambda *_: self._record())
            try:
                return real(model, *args, **kwargs)
            finally:
                hook.remove()

        monkeypatch.setattr(evaluate_job, "predict", predict)

    def _record(self) -> None:
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))


def test_training_in_bf16_quotes_its_final_test_accuracy_in_fp32(bf16_run):
    config = json.loads((bf16_run / "config.json").read_text())
    assert config["precision"] == BF16  # trained in bf16 …
    summary = json.loads((bf16_run / "summary.json").read_text())
    assert summary["test_precision"] == FP32  # … tested in fp32
    assert load_checkpoint(bf16_run).meta["test_precision"] == FP32
    assert load_checkpoint(bf16_run / "last.pt").meta["test_precision"] == FP32


def test_evaluate_defaults_to_fp32_and_reproduces_the_runs_own_accuracy(bf16_run, monkeypatch):
    spy = AutocastSpy(monkeypatch)
    result = evaluate_run(bf16_run)
    assert spy.seen and not any(enabled for enabled, _ in spy.seen)
    recorded = json.loads((bf16_run / "evaluation" / "evaluation.json").read_text())
    assert recorded["precision"] == FP32
    assert recorded["device"] == "cpu" and recorded["device_name"]
    # both fp32: the same number, not one in bf16 and one in fp32
    summary = json.loads((bf16_run / "summary.json").read_text())
    assert recorded["test_acc"] == summary["test_acc"]
    assert result["precision"] == FP32


def test_evaluate_honours_a_bf16_request(bf16_run, monkeypatch, native_bf16):
    spy = AutocastSpy(monkeypatch)
    evaluate_run(bf16_run, precision="bf16")
    assert spy.seen and all(enabled and dtype == torch.bfloat16 for enabled, dtype in spy.seen)
    assert json.loads((bf16_run / "evaluation" / "evaluation.json").read_text())["precision"] == BF16
    spy.seen.clear()
    evaluate_run(bf16_run, precision="auto")  # auto: bf16 where the CPU has it natively, as in training
    assert spy.seen and all(enabled for enabled, _ in spy.seen)
    assert json.loads((bf16_run / "evaluation" / "evaluation.json").read_text())["precision"] == BF16


def test_bf16_is_refused_where_it_would_be_emulated_and_auto_is_fp32(bf16_run, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: False)
    before = (
        (bf16_run / "evaluation" / "evaluation.json").read_bytes()
        if (bf16_run / "evaluation").exists()
        else None
    )
    with pytest.raises(CompresskitError, match=r"^precision bf16: this CPU has no native bf16"):
        evaluate_run(bf16_run, precision="bf16")
    after = (
        (bf16_run / "evaluation" / "evaluation.json").read_bytes()
        if (bf16_run / "evaluation").exists()
        else None
    )
    assert after == before  # refused before anything was written
    evaluate_run(bf16_run, precision="auto")
    assert json.loads((bf16_run / "evaluation" / "evaluation.json").read_text())["precision"] == FP32


def test_cli_evaluate_precision_flag(bf16_run):
    result = invoke("evaluate", "--checkpoint", bf16_run, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert "fp32 + channels_last" in result.stdout
    bad = invoke("evaluate", "--checkpoint", bf16_run, "--precision", "fp16")
    assert bad.exit_code == 2
    assert "'fp16' is not one of 'auto', 'fp32', 'bf16'" in bad.output
    with pytest.raises(CompresskitError, match=r"^precision must be one of: auto, fp32, bf16; got 'fp16'"):
        evaluate_run(bf16_run, precision="fp16")


def test_prune_fine_tuned_in_bf16_quotes_fp32_accuracies_and_paired_speedups(bf16_run, tmp_path, native_bf16):
    from compresskit.jobs.compress import base as compress_job  # CompressionJob.accuracy's evaluate

    seen = []
    real = compress_job.evaluate

    def evaluate(model, loader, device=None, *, precision=None):
        seen.append(precision.name)
        return real(model, loader, device, precision=precision)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compress_job, "evaluate", evaluate)
        out = tmp_path / "pruned"
        result = invoke("prune", "--checkpoint", bf16_run, "--out", out, "--ratio", "0.5",
                        "--finetune-epochs", "1", "--precision", "bf16", "--bench-seconds", "0.02",
                        "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen and set(seen) == {"fp32"}  # original, pruned, last and best: every quoted accuracy
    assert json.loads((out / "config.json").read_text())["precision"] == BF16
    assert json.loads((out / "summary.json").read_text())["test_precision"] == FP32
    for name in ("checkpoint.pt", "pruned.pt", "last.pt"):
        assert load_checkpoint(out / name).meta["test_precision"] == FP32, name
    report = pd.read_csv(out / "report.csv")
    for column in ("speedup_b1", "speedup_b1_spread", "speedup_b128", "speedup_b128_spread",
                   "latency_reduction_b1", "latency_b128_ms"):  # fmt: skip
        assert report[column].notna().all(), column
    assert report["speedup_b1"].iloc[0] == 1.0
    assert "interleaved rounds" in (out / "report.md").read_text()

    compared = invoke("report", bf16_run, out, "--out", tmp_path / "cmp", "--bench-seconds", "0.02",
                      "--rounds", "3", "--quiet")  # fmt: skip
    assert compared.exit_code == 0, compared.output
    table = pd.read_csv(tmp_path / "cmp" / "report.csv")
    assert table["rounds"].tolist() == [3, 3]
    assert table["test_precision"].tolist() == [FP32, FP32]
    assert table["speedup_b128"].iloc[0] == 1.0 and table["speedup_b128"].iloc[1] > 0
    notes = (tmp_path / "cmp" / "report.md").read_text()
    assert "3 interleaved rounds" in notes and "median over rounds of baseline time / model time" in notes
    bad = invoke("report", bf16_run, "--out", tmp_path / "bad", "--rounds", "0", "--quiet")
    assert bad.exit_code == 2 and "--rounds 0 must be a positive integer" in bad.output
