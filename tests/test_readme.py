"""The README's notebook snippet runs as written, top to bottom, on a run made by README command 1."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import torch
from typer.testing import CliRunner

from compresskit.cli import app
from compresskit.evaluation import ClassificationReport

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
