"""--distill: the loss against a hand-computed reference, a student that distils approaches its
teacher faster than one that only sees labels, the flags' validation, and a compressed run that
distils from a chosen teacher resuming exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from compresskit.checkpoint import load_checkpoint
from compresskit.cli import app
from compresskit.compress.distill import Distillation, distillation_loss, soft_kl
from compresskit.data import Loader, load_dataset, stratified_split
from compresskit.errors import CompresskitError
from compresskit.jobs import (
    DataOptions,
    JobOptions,
    ModelOptions,
    RunInterrupted,
    depth_run,
    resume_compress_run,
    train_run,
)
from compresskit.models import build_model, make_spec
from compresskit.train import TrainConfig, fit, predict, resolve_precision
from tests.fakedata import stopping_after_epoch


def _reference_loss(student, teacher, labels, temperature, weight, smoothing) -> float:
    """The formula with loops and float64: (1 − w)·CE + w·T²·KL, KL averaged over the batch."""
    total_ce = total_kl = 0.0
    classes = len(student[0])
    for s, t, y in zip(student.tolist(), teacher.tolist(), labels.tolist(), strict=True):
        log_z = math.log(sum(math.exp(v) for v in s))
        log_p = [v - log_z for v in s]
        target = [(1 - smoothing) * (c == y) + smoothing / classes for c in range(classes)]
        total_ce -= sum(q * lp for q, lp in zip(target, log_p, strict=True))
        log_zs = math.log(sum(math.exp(v / temperature) for v in s))
        log_zt = math.log(sum(math.exp(v / temperature) for v in t))
        for a, b in zip(s, t, strict=True):
            log_ps, log_pt = a / temperature - log_zs, b / temperature - log_zt
            total_kl += math.exp(log_pt) * (log_pt - log_ps)
    n = len(labels)
    return (1 - weight) * total_ce / n + weight * temperature**2 * total_kl / n


@pytest.mark.parametrize(
    ("temperature", "weight", "smoothing"),
    [(4.0, 0.9, 0.0), (1.0, 0.5, 0.1), (2.5, 0.0, 0.2), (0.7, 1.0, 0.0)],
)
def test_loss_matches_the_formula_computed_by_hand(temperature, weight, smoothing):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    labels = torch.randint(0, 5, (6,), generator=g)
    loss = distillation_loss(student, teacher, labels, temperature=temperature, weight=weight,
                             label_smoothing=smoothing)  # fmt: skip
    expected = _reference_loss(student.double(), teacher.double(), labels, temperature, weight, smoothing)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_loss_edges_and_the_teacher_runs_without_gradients_in_eval_mode():
    g = torch.Generator().manual_seed(1)
    student = torch.randn(4, 3, generator=g, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 1])
    assert soft_kl(student, student.detach(), 3.0).item() == pytest.approx(0.0, abs=1e-7)
    plain = F.cross_entropy(student, labels)
    assert distillation_loss(student, student.detach() * 2, labels, weight=0.0).item() == pytest.approx(
        plain.item()
    )
    teacher = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5))
    distill = Distillation(teacher, temperature=2.0, weight=1.0)
    distill.prepare(channels_last=False)
    assert not teacher.training
    x = torch.randn(4, 3, generator=g)
    loss = distill.loss(student, x, labels)
    loss.backward()
    assert student.grad is not None and all(p.grad is None for p in teacher.parameters())
    assert loss.item() == pytest.approx(4.0 * soft_kl(student, teacher(x), 2.0).item(), rel=1e-6)


@pytest.mark.parametrize(
    ("make", "flag"),
    [
        # the library names its parameters; the jobs' options name their flags
        (lambda: Distillation(torch.nn.Identity(), temperature=0.0), "temperature must be a positive number"),
        (lambda: Distillation(torch.nn.Identity(), temperature=-1.0), "temperature must be a positive"),
        (lambda: Distillation(torch.nn.Identity(), weight=1.5), "weight must be"),
        (lambda: JobOptions(distill=True, distill_weight=-0.1).validate(), "weight must be in [0, 1]"),
        (lambda: JobOptions(teacher="big.pt").validate(), "--teacher big.pt"),
    ],
)
def test_bad_distillation_settings_name_their_parameter_or_flag(make, flag):
    with pytest.raises(CompresskitError) as info:
        make()
    assert str(info.value).startswith(flag)


# --------------------------------------------------------------------------- learning from a teacher


def test_a_distilled_student_approaches_its_teacher_faster_than_one_taught_by_labels():
    data = load_dataset("synthetic")
    keep, held = stratified_split(data.train.labels, 0.25, seed=0)
    stats = {"mean": data.mean, "std": data.std}
    held_out = Loader(data.train.subset(held), 256, **stats)
    fp32 = resolve_precision("fp32", torch.device("cpu"))

    def train(model, epochs: int, distill: Distillation | None = None, seed: int = 0):
        loader = Loader(data.train.subset(keep), 32, shuffle=True, seed=seed, **stats)
        cfg = TrainConfig(epochs=epochs, batch_size=32, lr=0.05, schedule="cosine", seed=seed, device="cpu",
                          precision="fp32")  # fmt: skip
        fit(model, loader, None, cfg, distill=distill)
        return model

    teacher = train(build_model(make_spec("cnn_bn", 4, width=0.5), seed=1), epochs=3)
    teacher_logits, _ = predict(teacher, held_out, precision=fp32)

    def kl_to_teacher(student) -> float:
        return soft_kl(predict(student, held_out, precision=fp32)[0], teacher_logits).item()

    student_spec = make_spec("cnn", 4, width=0.25)
    start = kl_to_teacher(build_model(student_spec, seed=2))
    plain = kl_to_teacher(train(build_model(student_spec, seed=2), epochs=1, seed=3))
    distilled = kl_to_teacher(
        train(build_model(student_spec, seed=2), epochs=1, seed=3, distill=Distillation(teacher, 4.0, 0.9))
    )
    assert distilled < plain < start
    assert distilled < 0.75 * plain


# --------------------------------------------------------------------------- the compression jobs


def _cfg(**changes) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 32, "lr": 0.05, "device": "cpu", "precision": "fp32",
                          "seed": 0, **changes})  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """A source run to compress and a second, different run to distil from."""
    root = tmp_path_factory.mktemp("distill")
    data = DataOptions(dataset="synthetic", val_fraction=0.1)
    train_run(root / "source", ModelOptions(name="cnn_bn", width=0.5), data, _cfg())
    train_run(
        root / "teacher", ModelOptions(name="cnn_bn", width=0.5, head="mlp"), data, _cfg(seed=0, lr=0.1)
    )
    return root / "source", root / "teacher"


FINE_TUNE = _cfg(epochs=3, lr=0.01, batch_size=64)  # 3 batches an epoch
QUICK = {"bench_seconds": 0.01, "threads": 1}


def _depth(source: Path, out: Path, **distill) -> dict:
    return depth_run(
        source, out, FINE_TUNE, keep_blocks=2, samples=40, options=JobOptions(**QUICK, **distill)
    )


@pytest.mark.slow
def test_a_distilling_compressed_run_resumes_with_its_recorded_teacher(runs, tmp_path, monkeypatch):
    import compresskit.jobs.common as common_job
    import compresskit.jobs.compress.finetune as compress_job  # fine_tune's EpochRecorder

    # the curves (every epoch's and the end of run's, both drawn in jobs/common.py) are half of
    # these runs' time
    monkeypatch.setattr(common_job, "plot_training_curves", lambda *args, **kwargs: None)
    source, teacher = runs
    chosen = {"distill": True, "teacher": str(teacher), "distill_temperature": 3.0, "distill_weight": 0.7}
    alone = _run(source, tmp_path / "alone", **chosen)
    record = json.loads((alone / "config.json").read_text())["compression"]["distill"]
    assert record == {"teacher": str(teacher / "checkpoint.pt"), "temperature": 3.0, "weight": 0.7}

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(compress_job, "EpochRecorder", stopping_after_epoch(compress_job.EpochRecorder, 2))
        with pytest.raises(RunInterrupted):
            _run(source, run, **chosen)
    assert len(_history(run)) == 2
    resume_compress_run(run, "depth", **QUICK)
    pd.testing.assert_frame_equal(_history(run), _history(alone), check_exact=True)
    mine, theirs = load_checkpoint(run).state_dict, load_checkpoint(alone).state_dict
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    # the teacher mattered: the default one, the source, trains the student differently
    by_source = _run(
        source, tmp_path / "by_source", distill=True, distill_temperature=3.0, distill_weight=0.7
    )
    record = json.loads((by_source / "config.json").read_text())["compression"]["distill"]
    assert record["teacher"] == str(source / "checkpoint.pt")
    assert not _history(by_source).equals(_history(alone))


def _run(source: Path, out: Path, **distill) -> Path:
    _depth(source, out, **distill)
    return out


def _history(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "history.csv").drop(columns="seconds")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["--distill", "--distill-temperature", "0"],
            "--distill-temperature must be a positive number, e.g. 4; got 0.0",
        ),
        (["--distill", "--distill-weight", "1.2"], "--distill-weight must be in [0, 1]; got 1.2"),
        (["--distill", "--teacher", "nowhere.pt"], "--teacher nowhere.pt does not exist"),
        (["--teacher", "nowhere.pt"], "--teacher nowhere.pt names a model to distill from; add --distill"),
    ],
)
def test_the_commands_refuse_bad_distillation_flags_in_one_line(runs, tmp_path, args, fragment):
    source, _ = runs
    for command, extra in (("depth", ["--keep-blocks", "2"]), ("lowrank", []), ("prune", [])):
        out = tmp_path / command
        result = CliRunner().invoke(app, [command, "--checkpoint", str(source), "--out", str(out), *extra,
                                          *args, "--quiet"])  # fmt: skip
        assert result.exit_code == 2, (command, result.output)
        assert fragment in result.output, (command, result.output)
        assert not out.exists()


def test_a_teacher_for_other_classes_is_refused(runs, tmp_path):
    source, _ = runs
    other = tmp_path / "other"
    train_run(other, ModelOptions(name="cnn", width=0.25), DataOptions(dataset="digits", val_fraction=0.1),
              _cfg(epochs=1))  # fmt: skip
    with pytest.raises(CompresskitError, match=r"^--teacher .*checkpoint\.pt has 10 outputs"):
        _depth(source, tmp_path / "out", distill=True, teacher=str(other))
    assert not (tmp_path / "out").exists()
