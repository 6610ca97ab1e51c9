"""The CLI on models compresskit did not build: ``train --model torchvision:NAME`` → analyze → prune →
lowrank → report, ``import`` of a state dict trained elsewhere (then evaluate, prune --distill), and
the refusals (untrusted factory, depth, bad --model-kwargs, --cifar-stem without a stem).

Tiny on purpose: the synthetic set at 4×4 pixels, one epoch, fp32; latency is timed at batch 1 only
(`fast_latency`: batch 128 reuses it), since these tests check the plumbing and the MACs, not speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
from typer.testing import CliRunner

import compresskit.jobs.common as common
from compresskit.checkpoint import load_checkpoint
from compresskit.cli import app
from compresskit.data import Loader, load_dataset
from compresskit.model_io import load
from compresskit.train import evaluate, resolve_precision
from tests.fastlatency import batch_one_latency

pytestmark = pytest.mark.slow  # torchvision models through every CLI command

ROOT = Path(__file__).resolve().parents[1]
SIZE = 4  # --image-size: a 4×4 synthetic image still runs every layer of both models
FP32 = ("--precision", "fp32")
FAST = ("--bench-seconds", "0.001", "--quiet")


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args: object):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def refused(*args: object) -> str:
    """The one ``error:`` line of a refused command (exit 2, no traceback)."""
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


_record = common.EpochRecorder.__call__


def _stop_after_first(self, state):
    """`EpochRecorder.__call__` that interrupts the run (as Ctrl-C would) after recording epoch 1;
    patched over the class, since the job modules import the class itself."""
    _record(self, state)
    if state.epoch == 1:
        raise KeyboardInterrupt


@pytest.fixture(scope="module", autouse=True)
def fast_latency():
    with batch_one_latency():
        yield


def chain(folder: Path, model: str, *extra: str, lowrank_layers: str) -> dict[str, Path]:
    """train (1 epoch) → analyze → prune 0.5 (1 epoch) → lowrank of the pruned run → report."""
    runs = {name: folder / f"{model}-{name}" for name in ("train", "prune", "lowrank", "report")}
    ok("train", "--dataset", "synthetic", "--model", f"torchvision:{model}", *extra, "--image-size", SIZE,
       "--epochs", 1, "--batch-size", 64, *FP32, "--out", runs["train"], "--quiet")  # fmt: skip
    ok("analyze", "--checkpoint", runs["train"], "--samples", 16, "--layers", "stages", "--metrics", "csi",
       "--quiet")  # fmt: skip
    ok("prune", "--checkpoint", runs["train"], "--out", runs["prune"], "--ratio", 0.5, "--finetune-epochs", 1,
       *FP32, *FAST)  # fmt: skip
    ok("lowrank", "--checkpoint", runs["prune"], "--out", runs["lowrank"], "--rank-ratio", 0.25,
       "--layers", lowrank_layers, "--finetune-epochs", 1, *FP32, *FAST)  # fmt: skip
    ok("report", runs["train"], runs["prune"], runs["lowrank"], "--out", runs["report"], "--rounds", 1,
       *FAST)  # fmt: skip
    return runs


@pytest.fixture(scope="module")
def chains(tmp_path_factory) -> dict[str, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("any")
    return {
        "resnet18": chain(folder, "resnet18", "--cifar-stem", lowrank_layers="layer4.1.conv2,fc"),
        "mobilenet_v2": chain(folder, "mobilenet_v2", lowrank_layers="features.18.0,classifier.1"),
    }


def test_train_records_the_factory_and_writes_format_2(chains):
    run = chains["resnet18"]["train"]
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["architecture"] == {
        "factory": "compresskit.models:torchvision_model",
        "kwargs": {"name": "resnet18", "num_classes": 4, "in_channels": 3, "cifar_stem": True, "kwargs": {}},
    }
    for name in ("checkpoint.pt", "last.pt"):
        ckpt = load_checkpoint(run / name)
        assert ckpt.version == 2 and ckpt.factory == "compresskit.models:torchvision_model" and not ckpt.edits
    model = load(run)
    assert isinstance(model, torchvision.models.ResNet)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    layers = pd.read_csv(run / "analysis" / "layers.csv")
    assert layers["layer"].tolist() == ["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "layer4",
                                        "avgpool", "fc"]  # fmt: skip
    ok("analyze", "--checkpoint", run, "--samples", 16, "--layers", "layer1.0.conv1,fc", "--metrics", "csi",
       "--quiet")  # fmt: skip
    assert pd.read_csv(run / "analysis" / "layers.csv")["layer"].tolist() == ["layer1.0.conv1", "fc"]


def test_torchvision_factory_adapts_the_first_conv_to_grey_images():
    from compresskit.models import torchvision_model

    torch.manual_seed(0)
    grey = torchvision_model("mobilenet_v2", num_classes=3, in_channels=1)
    assert grey.features[0][0].in_channels == 1 and grey.features[0][0].out_channels == 32
    assert grey(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    stem = torchvision_model("resnet18", num_classes=3, in_channels=1, cifar_stem=True)
    assert stem.conv1.in_channels == 1 and stem.conv1.kernel_size == (3, 3)


@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v2"])
def test_compression_cuts_macs_and_saves_edits(chains, model):
    runs = chains[model]
    report = pd.read_csv(runs["report"] / "report.csv")
    macs = report["macs"].tolist()
    assert macs[0] > 2.5 * macs[1]  # pruning half the channels leaves about a quarter of the MACs
    assert macs[1] > macs[2]  # low-rank of the pruned model cuts more
    pruned, lowranked = load_checkpoint(runs["prune"]), load_checkpoint(runs["lowrank"])
    assert {e["module"] for e in pruned.edits} >= {"Conv2d", "BatchNorm2d"}
    kinds = {e["module"] for e in lowranked.edits}
    assert {"FactorizedConv2d", "FactorizedLinear"} <= kinds and "Conv2d" in kinds  # edits accumulate
    summary = json.loads((runs["prune"] / "summary.json").read_text())
    assert summary["macs_reduction"] > 2.5
    assert summary["test_acc"] == pruned.meta["test_acc"]


def test_results_reload_without_torch_pruning_and_give_the_same_outputs(chains, tmp_path):
    """One subprocess with torch_pruning blocked loads every checkpoint and evaluates it on the
    test split: the same logits as here, the same accuracy as the job recorded."""
    files = {f"{m}-{k}-{f}": runs[k] / f for m, runs in chains.items() for k, f in
             [("prune", "pruned.pt"), ("prune", "checkpoint.pt"), ("lowrank", "checkpoint.pt")]}  # fmt: skip
    x = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    (tmp_path / "files.json").write_text(json.dumps({k: str(v) for k, v in files.items()}))
    child = f"""
import json, sys
sys.modules["torch_pruning"] = None
import torch
torch.set_num_threads(1)  # the same kernels as the parent's, for bit-identical outputs
from compresskit.checkpoint import load_checkpoint
from compresskit.data import Loader, load_dataset
from compresskit.model_io import load
from compresskit.train import evaluate, resolve_precision
folder = {str(tmp_path)!r}
x = torch.load(folder + "/x.pt", weights_only=True)
data = load_dataset("synthetic", image_size={SIZE})
out = {{}}
for name, path in json.load(open(folder + "/files.json")).items():
    meta = load_checkpoint(path).meta
    model = load(path)
    with torch.no_grad():
        out[name] = model(x)
    loader = Loader(data.test, 256, mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    fp32 = resolve_precision("fp32", torch.device("cpu"))
    out[name + ":acc"] = torch.tensor(evaluate(model, loader, precision=fp32)[1], dtype=torch.float64)
assert "torch_pruning" not in {{k for k, v in sys.modules.items() if v is not None}}
torch.save(out, folder + "/out.pt")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", child], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            here = {name: load(path)(x) for name, path in files.items()}
    finally:
        torch.set_num_threads(threads)
    for name, path in files.items():
        assert torch.equal(out[name], here[name]), name
        assert float(out[name + ":acc"]) == load_checkpoint(path).meta["test_acc"], name


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A torchvision MobileNetV3-small state dict saved under "state_dict", imported as a run."""
    folder = tmp_path_factory.mktemp("import")
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=4)
    weights = folder / "weights.pt"
    torch.save({"state_dict": net.state_dict()}, weights)
    run = folder / "imported"
    ok("import", "--factory", "torchvision.models:mobilenet_v3_small", "--factory-kwargs", KWARGS,
       "--weights", weights, "--dataset", "synthetic", "--image-size", SIZE, "--out", run)  # fmt: skip
    return run, net


KWARGS = '{"num_classes": 4}'


def test_import_of_a_torchvision_state_dict(imported, tmp_path):
    run, net = imported
    kwargs = KWARGS
    assert json.loads((run / "run.json").read_text())["command"] == "import"
    ckpt = load_checkpoint(run)
    assert ckpt.version == 2 and ckpt.factory == "torchvision.models:mobilenet_v3_small"
    data = load_dataset("synthetic", image_size=SIZE)
    loader = Loader(data.test, 256, mean=tuple(data.mean), std=tuple(data.std))
    expected = evaluate(net.eval(), loader, precision=resolve_precision("fp32", torch.device("cpu")))[1]
    assert ckpt.meta["test_acc"] == expected
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["split"]["val_count"] > 0
    ok("evaluate", "--checkpoint", run)
    assert json.loads((run / "evaluation" / "evaluation.json").read_text())["test_acc"] == expected
    distilled = tmp_path / "distilled"
    ok("prune", "--checkpoint", run, "--out", distilled, "--ratio", 0.25, "--finetune-epochs", 1, "--distill",
       *FP32, *FAST)  # fmt: skip
    config = json.loads((distilled / "config.json").read_text())
    assert config["compression"]["distill"]["teacher"] == str(run / "checkpoint.pt")
    assert load_checkpoint(distilled).version == 2

    # a state dict that does not fit: one sentence naming the file and the first key
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pt")
    line = refused("import", "--factory", "torchvision.models:mobilenet_v3_small", "--factory-kwargs", kwargs,
                   "--weights", tmp_path / "other.pt", "--dataset", "synthetic",
                   "--out", tmp_path / "bad")  # fmt: skip
    assert "other.pt" in line and "'features.0.0.weight'" in line
    assert not (tmp_path / "bad").exists()


def test_import_refuses_an_untrusted_factory_before_importing_it(tmp_path, monkeypatch):
    weights = tmp_path / "w.pt"
    torch.save({}, weights)
    (tmp_path / "untrusted_models.py").write_text(
        f"open({str(tmp_path / 'imported.txt')!r}, 'w').close()\ndef build(): pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    line = refused("import", "--factory", "untrusted_models:build", "--weights", weights,
                   "--dataset", "synthetic", "--out", out)  # fmt: skip
    assert "--trust-factory" in line
    assert not out.exists() and not (tmp_path / "imported.txt").exists()
    assert "untrusted_models" not in sys.modules


def test_a_run_of_an_untrusted_factory_needs_trust_factory_on_every_later_command(tmp_path, monkeypatch):
    """Imported with --trust-factory, the run still refuses evaluate, analyze, prune and report
    without the flag, before importing the module again; with it, each runs, and so does every run
    made from it."""
    (tmp_path / "own_models.py").write_text(
        "from torch import nn\n"
        "def small_net(num_classes=4):\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import own_models

    weights, run = tmp_path / "w.pt", tmp_path / "run"
    torch.save(own_models.small_net().state_dict(), weights)
    ok("import", "--factory", "own_models:small_net", "--trust-factory", "--weights", weights,
       "--dataset", "synthetic", "--image-size", SIZE, "--out", run)  # fmt: skip
    del sys.modules["own_models"]
    for command in (("evaluate", "--checkpoint", run), ("analyze", "--checkpoint", run, "--quiet"),
                    ("prune", "--checkpoint", run, "--out", tmp_path / "p", "--finetune-epochs", 1, *FAST),
                    ("report", run, "--out", tmp_path / "r", "--quiet")):  # fmt: skip
        line = refused(*command)
        assert "own_models:small_net" in line and "--trust-factory" in line
        assert "own_models" not in sys.modules
    assert not any((tmp_path / name).exists() for name in ("p", "r"))
    ok("evaluate", "--checkpoint", run, "--trust-factory")
    ok("prune", "--checkpoint", run, "--out", tmp_path / "p", "--ratio", 0.5, "--finetune-epochs", 1,
       "--batch-size", 64, *FP32, *FAST, "--trust-factory")  # fmt: skip
    assert load_checkpoint(tmp_path / "p").factory == "own_models:small_net"
    ok("report", run, tmp_path / "p", "--out", tmp_path / "r", "--bench-seconds", 0.001, "--rounds", 2,
       "--quiet", "--trust-factory")  # fmt: skip
    assert len(pd.read_csv(tmp_path / "r" / "report.csv")) == 2


def test_prune_of_a_factory_model_resumes_exactly(imported, tmp_path, monkeypatch):
    """Stopped after its first fine-tuning epoch, a resumed run reloads pruned.pt and ends with the
    weights of a run that never stopped."""
    run, _ = imported
    flags = ("--ratio", 0.25, "--finetune-epochs", 2, "--batch-size", 32, *FP32, *FAST)
    ok("prune", "--checkpoint", run, "--out", tmp_path / "whole", *flags)
    with monkeypatch.context() as patch:
        patch.setattr(common.EpochRecorder, "__call__", _stop_after_first)
        assert invoke("prune", "--checkpoint", run, "--out", tmp_path / "stopped", *flags).exit_code == 130
    assert json.loads((tmp_path / "stopped" / "run.json").read_text())["state"] == "interrupted"
    ok("prune", "--resume", tmp_path / "stopped", "--quiet")
    whole, resumed = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "stopped")
    assert resumed.version == 2 and resumed.edits == whole.edits
    for key, value in whole.state_dict.items():
        assert torch.equal(resumed.state_dict[key], value), key
    history = pd.read_csv(tmp_path / "stopped" / "history.csv")
    assert history["epoch"].tolist() == [1, 2]


def test_training_a_torchvision_model_resumes_exactly(tmp_path, monkeypatch):
    """`train --model torchvision:…` stopped after its first epoch and resumed from last.pt (format 2
    with the training state) ends with the weights and history of a run that never stopped."""
    flags = ("train", "--dataset", "synthetic", "--model", "torchvision:mobilenet_v2", "--image-size", SIZE,
             "--epochs", 2, "--batch-size", 64, *FP32, "--quiet")  # fmt: skip
    ok(*flags, "--out", tmp_path / "whole")
    with monkeypatch.context() as patch:
        patch.setattr(common.EpochRecorder, "__call__", _stop_after_first)
        assert invoke(*flags, "--out", tmp_path / "stopped").exit_code == 130
    ok("train", "--resume", tmp_path / "stopped", "--quiet")
    whole, resumed = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "stopped")
    assert resumed.version == 2 and resumed.factory == whole.factory
    for key, value in whole.state_dict.items():
        assert torch.equal(resumed.state_dict[key], value), key
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "stopped" / "history.csv").drop(columns="seconds"),
        pd.read_csv(tmp_path / "whole" / "history.csv").drop(columns="seconds"),
    )


def test_refusals_of_flags_that_do_not_fit_the_model(chains, tmp_path):
    run = chains["resnet18"]["train"]
    assert "ConvNet" in refused("depth", "--checkpoint", run, "--out", tmp_path / "d", "--keep-blocks", 1)
    assert not (tmp_path / "d").exists()
    base = ("train", "--dataset", "synthetic", "--epochs", 1, "--out", tmp_path / "t", "--quiet")
    assert "--model-kwargs" in refused(*base, "--model", "torchvision:resnet18", "--model-kwargs", "{bad")
    assert "--model-kwargs" in refused(*base, "--model", "torchvision:resnet18", "--model-kwargs", "[1]")
    assert "list_models" in refused(*base, "--model", "torchvision:resnet1000")
    assert "--cifar-stem" in refused(*base, "--model", "torchvision:mobilenet_v2", "--cifar-stem")
    assert "--cifar-stem" in refused(*base, "--model", "cnn", "--cifar-stem")
    assert "--width" in refused(*base, "--model", "torchvision:resnet18", "--width", 0.5)
    assert not (tmp_path / "t").exists()
