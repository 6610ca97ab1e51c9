"""The README's notebook snippet runs as written, top to bottom, on a run made by README command 1."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from compresskit.cli import app
from compresskit.evaluation import ClassificationReport
from tests.fastlatency import batch_one_latency

pytestmark = pytest.mark.slow  # runs README's commands end to end

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "Everything the CLI does is a library call away in a notebook"


def notebook_snippet() -> str:
    """The first ```python block after the marker sentence, with only prose between the two."""
    text = README.read_text(encoding="utf-8")
    assert MARKER in text, f"README.md lost the sentence {MARKER!r} that introduces the notebook snippet"
    after = text[text.index(MARKER) :]
    match = re.search(r"^```python\n(.*?)^```$", after, flags=re.DOTALL | re.MULTILINE)
    assert match is not None, "no ```python block follows the notebook sentence in README.md"
    assert "```" not in after[: match.start()], "a code block comes between the sentence and the snippet"
    return match.group(1)


def test_notebook_snippet_runs_on_a_demo_run(tmp_path, monkeypatch, capsys):
    snippet = notebook_snippet()
    assert 'load_checkpoint("runs/demo")' in snippet
    monkeypatch.chdir(tmp_path)
    command = "train --dataset digits --model vgg11_bn --width 0.25 --epochs 1 --out runs/demo --quiet"
    result = CliRunner().invoke(app, shlex.split(command))  # README command 1, one epoch
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "demo" / "checkpoint.pt").is_file()

    namespace: dict = {"__name__": "readme_snippet"}
    exec(compile(snippet, str(README), "exec"), namespace)

    x, y, outputs, model = namespace["x"], namespace["y"], namespace["outputs"], namespace["model"]
    assert x.shape == (200, 1, 32, 32) and x.dtype == torch.float32
    assert torch.bincount(y, minlength=10).tolist() == [20] * 10  # class-balanced, as it says
    assert list(outputs)[:2] == ["block1", "block2"] and "block8" in outputs
    with torch.no_grad():
        logits = model(x)
    last = outputs[namespace["layers"][-1].name]
    torch.testing.assert_close(last, logits)  # the last captured layer is the model's output
    assert 0.0 <= namespace["csi"] <= 1.0
    assert 0.0 <= namespace["si"] <= 1.0
    report = namespace["report"]
    assert isinstance(report, ClassificationReport)
    assert report.num_samples == 200
    assert report.per_class["support"].tolist() == [20] * 10
    assert report.accuracy == float((logits.argmax(1) == y).double().mean())
    assert 0.0 <= report.macro_f1 <= 1.0
    printed = capsys.readouterr().out
    assert f"CSI {namespace['csi']:.3f}" in printed
    assert "precision" in printed and "share" in printed


BYOM = "### Bring your own model"


def byom_blocks() -> tuple[str, list[str]]:
    """The python block and the ``compresskit …`` lines of the bash block in "Bring your own model"."""
    text = README.read_text(encoding="utf-8")
    assert BYOM in text, f"README.md lost its {BYOM!r} section"
    section = text[text.index(BYOM) :].split("\n### ", 1)[0]
    python = re.search(r"^```python\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)
    bash = re.search(r"^```bash\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)
    assert python is not None and bash is not None, "the section lost its python or bash block"
    commands = [line for line in bash.group(1).splitlines() if line.startswith("compresskit ")]
    return python.group(1), commands


def test_bring_your_own_model_snippet_runs(tmp_path, monkeypatch):
    from compresskit.measure import count_macs

    monkeypatch.chdir(tmp_path)
    snippet, _ = byom_blocks()
    namespace: dict = {"__name__": "readme_byom"}
    exec(compile(snippet, str(README), "exec"), namespace)
    table, model, small, same = (namespace[k] for k in ("table", "model", "small", "same"))
    assert table["layer"].tolist()[0] == "conv1" and table["layer"].tolist()[-1] == "fc"
    shape = (3, 32, 32)
    assert count_macs(namespace["pruned"], shape) < 0.4 * count_macs(model, shape)
    assert count_macs(small, shape) < count_macs(namespace["pruned"], shape)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(same(x), small.eval()(x))


def test_bring_your_own_model_commands_run(tmp_path, monkeypatch):
    """The README's commands with substitutions for a test: the synthetic set at 4×4 pixels, one
    epoch, no fine-tuning, the low-rank of one layer, short timing, 4 classes for the import."""
    import torchvision

    _, commands = byom_blocks()
    assert [c.split()[1] for c in commands] == ["train", "analyze", "prune", "lowrank", "report", "import"]
    monkeypatch.chdir(tmp_path)
    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), tmp_path / "resnet18.pt")
    substitutions = {
        "--dataset cifar10 --epochs 30": "--dataset synthetic --image-size 4 --epochs 1 --precision fp32",
        "--dataset cifar10": "--dataset synthetic --image-size 4",
        '"num_classes": 10': '"num_classes": 4',
        "--energy 0.9": "--energy 0.5 --layers layer4.1.conv2",
    }
    fast = {"prune": "--finetune-epochs 0 --bench-seconds 0.001", "lowrank": "--finetune-epochs 0 "
            "--bench-seconds 0.001", "report": "--bench-seconds 0.001 --rounds 1"}  # fmt: skip
    for command in commands:
        for old, new in substitutions.items():  # in order: the train line's first
            command = command.replace(old, new)
        args = shlex.split(command)[1:]
        args += shlex.split(fast.get(args[0], "")) + ([] if args[0] == "import" else ["--quiet"])
        with batch_one_latency():
            result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (command, result.output)
    for run in ("r18", "r18-pruned", "r18-lowrank", "imported"):
        assert (tmp_path / "runs" / run / "checkpoint.pt").is_file(), run
    assert (tmp_path / "runs" / "r18-report" / "report.csv").is_file()
