"""Checkpoint format 2 (`compresskit.model_io`, `compresskit.edits`, `compresskit.architecture`):
any model saved against its factory or spec plus the edits compression made, loaded in a fresh
process without torch-pruning; untrusted factories refused before import; format-1 files as before."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from compresskit.architecture import is_trusted
from compresskit.checkpoint import ARCHITECTURE_VERSION, FORMAT, load_checkpoint
from compresskit.compress.lowrank_any import lowrank_model
from compresskit.compress.prune_any import prune_model
from compresskit.edits import recorded_edits
from compresskit.errors import CompresskitError
from compresskit.model_io import load, save
from compresskit.models import ConvNet, build_model, make_spec

ROOT = Path(__file__).resolve().parent.parent
X = torch.zeros(1, 3, 32, 32)
RESNET = {"factory": "torchvision.models:resnet18", "factory_kwargs": {"num_classes": 10}}
LOW_RANK_LAYERS = ["layer1.0.conv1", "layer2.1.conv2", "layer3.0.downsample.0", "fc"]


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights and batch-norm statistics away from their initial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand(tensor.shape, generator=g) * 0.1)
    return model.eval()


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return _trained_like(torchvision.models.resnet18(num_classes=10))


CHILD = """
import sys
sys.modules["torch_pruning"] = None  # any import of it now fails
import torch
torch.set_num_threads(1)
import compresskit as ck
folder, names = sys.argv[1], sys.argv[2:]
x = torch.load(f"{folder}/x.pt", weights_only=True)
with torch.no_grad():
    outputs = {name: ck.load(f"{folder}/{name}.pt")(x) for name in names}
assert sys.modules["torch_pruning"] is None
assert not [m for m in sys.modules if m.startswith("compresskit.compress")]
torch.save(outputs, f"{folder}/outputs.pt")
"""


@pytest.mark.slow
def test_compressed_models_load_in_a_process_without_torch_pruning(tmp_path):
    model = _resnet18()
    pruned = prune_model(model, X, 0.5)
    lowranked, _ = lowrank_model(model, rank_ratio=0.5, layers=LOW_RANK_LAYERS)
    pruned_lowranked, _ = lowrank_model(pruned, rank_ratio=0.5, layers=LOW_RANK_LAYERS)
    lowranked_pruned = prune_model(lowranked, X, 0.3)
    torch.manual_seed(1)
    mobilenet = prune_model(_trained_like(torchvision.models.mobilenet_v2(num_classes=10)), X, 0.5)
    models = {
        "pruned": (pruned, RESNET),
        "lowranked": (lowranked, RESNET),
        "pruned_lowranked": (pruned_lowranked, RESNET),
        "lowranked_pruned": (lowranked_pruned, RESNET),
        "mobilenet": (
            mobilenet,
            {"factory": "torchvision.models:mobilenet_v2", "factory_kwargs": {"num_classes": 10}},
        ),
    }
    kinds = {name: {e["module"] for e in recorded_edits(m)} for name, (m, _) in models.items()}
    assert kinds["pruned"] == kinds["mobilenet"] == {"Conv2d", "BatchNorm2d", "Linear"}
    assert kinds["lowranked"] == {"FactorizedConv2d", "FactorizedLinear"}
    both = {"Conv2d", "BatchNorm2d", "FactorizedConv2d", "FactorizedLinear"}  # fc is factorized
    assert kinds["pruned_lowranked"] == kinds["lowranked_pruned"] == both
    x = torch.randn(3, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    expected = {}
    for name, (m, where) in models.items():
        save(m, tmp_path / f"{name}.pt", **where, meta={"name": name})
        with torch.no_grad():
            expected[name] = m.eval()(x)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(script), str(tmp_path), *models], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = torch.load(tmp_path / "outputs.pt", weights_only=True)
    for name in models:
        assert torch.equal(outputs[name], expected[name]), name
    assert load_checkpoint(tmp_path / "pruned.pt").meta == {"name": "pruned"}


def test_loaded_model_saves_again_and_accumulates_edits(tmp_path):
    model = _resnet18()
    path = save(prune_model(model, X, 0.5), tmp_path / "a.pt", **RESNET)
    loaded = load(path)
    assert not loaded.training
    twice, _ = lowrank_model(copy.deepcopy(loaded), rank_ratio=0.5, layers=["layer1.0.conv1"])
    again = save(twice, tmp_path / "b.pt")  # the architecture is remembered from the file
    ckpt = load_checkpoint(again)
    assert (ckpt.version, ckpt.factory, ckpt.factory_kwargs) == (ARCHITECTURE_VERSION, *RESNET.values())
    edits = {e["path"]: e for e in ckpt.edits}
    assert edits["layer1.0.conv1"]["module"] == "FactorizedConv2d"
    assert (
        edits["layer1.0.conv1"]["kwargs"]["in_channels"] == 32
        and edits["layer2.0.conv1"]["module"] == "Conv2d"
    )
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load(again)(x), twice.eval()(x))


def test_convnet_pruned_generically_saves_with_its_spec(tmp_path):
    spec = make_spec("cnn_se_bn", 10, width=0.25)
    model = _trained_like(build_model(spec, seed=0))
    pruned = prune_model(model, X, 0.5)
    path = save(pruned, tmp_path / "p.pt")  # a ConvNet knows its spec
    ckpt = load_checkpoint(path)
    assert ckpt.spec == spec and ckpt.factory is None
    assert {e["module"] for e in ckpt.edits} == {"Conv2d", "BatchNorm2d", "Linear"}  # SE gates: Linear
    back = load(path)
    assert isinstance(back, ConvNet)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), pruned.eval()(x))


@pytest.mark.parametrize(
    "run", ["prune-csi-l1-r0.5-lowrank-e0.9", "prune-csi-separation-r0.5", "cifar10-e30-vgg11_bn-w0.25"]
)
def test_format_1_checkpoints_from_results_load_as_before(tmp_path, run):
    path = ROOT / "results" / run / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    assert ckpt.version == 1 and ckpt.edits == [] and ckpt.factory is None
    built = ckpt.build()
    loaded = load(path)
    assert isinstance(built, ConvNet) and isinstance(loaded, ConvNet) and loaded.spec == ckpt.spec
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), built(x))
        resaved = load(save(loaded, tmp_path / "v2.pt"))  # written again as format 2, from its spec
        assert torch.equal(resaved(x), built(x))
    assert torch.load(tmp_path / "v2.pt", weights_only=True)["edits"] == []


def test_untrusted_factory_is_refused_without_importing_it(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_mod.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "import torch\n\ndef f():\n    return torch.nn.Linear(2, 3)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_mod", raising=False)
    path = tmp_path / "evil.pt"
    architecture = {"factory": "evil_mod:f", "kwargs": {}}
    payload = {"format": FORMAT, "version": ARCHITECTURE_VERSION, "architecture": architecture, "edits": [],
               "state_dict": nn.Linear(2, 3).state_dict(), "meta": {}}  # fmt: skip
    torch.save(payload, path)
    assert load_checkpoint(path).factory == "evil_mod:f"  # reading the file imports nothing
    for trust in (None, "evil_mod:g", ["other:f"]):
        with pytest.raises(CompresskitError, match="evil_mod:f") as info:
            load(path, trust_factory=trust)
        assert "trust_factory" in str(info.value)
    assert not marker.exists() and "evil_mod" not in sys.modules
    model = load(path, trust_factory=["evil_mod:f"])  # named by the caller: imported and called
    assert marker.exists() and isinstance(model, nn.Linear)
    assert not is_trusted("torchvision.models_evil:f") and not is_trusted("timmy:f")
    assert is_trusted("torchvision.models.resnet:resnet18") and is_trusted("timm:create_model")


def test_tampered_edits_and_architectures_are_refused(tmp_path):
    good = save(prune_model(_resnet18(), X, 0.5), tmp_path / "good.pt", **RESNET)
    payload = torch.load(good, weights_only=True)
    conv = payload["edits"][0]
    assert conv["path"] == "conv1" and conv["module"] == "Conv2d"
    cases = [
        ({"edits": [{**conv, "module": "Sequential"}]}, "allowed kinds"),
        ({"edits": [{**conv, "path": "conv1; import os"}]}, "dotted module path"),
        ({"edits": [{**conv, "path": "fc.__class__"}]}, "not a module"),
        ({"edits": [{**conv, "kwargs": {**conv["kwargs"], "device": "meta"}}]}, "needs exactly"),
        ({"edits": [{**conv, "kwargs": {**conv["kwargs"], "out_channels": "64"}}]}, "must be an integer"),
        ({"edits": [{**conv, "kwargs": {**conv["kwargs"], "padding_mode": "evil"}}]}, "padding_mode"),
        ({"edits": payload["edits"][1:]}, "do not fit"),  # conv1's edit missing: weights do not fit
        ({"architecture": {"factory": "torchvision.models:resnet18", "kwargs": {"weights": "IMAGENET1K_V1"}}},
         "downloads weights"),
        ({"architecture": {"factory": "../evil:f", "kwargs": {}}}, "not of the form"),
        ({"architecture": {"spec": {"name": "x"}, "factory": "a:b"}}, "architecture record"),
    ]  # fmt: skip
    for changes, message in cases:
        torch.save({**payload, **changes}, tmp_path / "bad.pt")
        with pytest.raises(CompresskitError, match=message):
            load(tmp_path / "bad.pt")


def test_save_refuses_what_it_cannot_rebuild(tmp_path):
    model = _resnet18()
    with pytest.raises(CompresskitError, match="factory="):
        save(model, tmp_path / "a.pt")
    with pytest.raises(CompresskitError, match="not both"):
        save(model, tmp_path / "a.pt", spec=make_spec("cnn", 10), **RESNET)
    with pytest.raises(CompresskitError, match="downloads weights"):
        save(
            model,
            tmp_path / "a.pt",
            factory="torchvision.models:resnet18",
            factory_kwargs={"pretrained": True},
        )
    model.fc = nn.Linear(512, 7)  # changed by hand, not by compresskit: no edit records it
    with pytest.raises(CompresskitError, match=r"'fc\.(bias|weight)'"):
        save(model, tmp_path / "a.pt", **RESNET)
    with pytest.raises(CompresskitError, match=r"'fc\.(bias|weight)'"):
        save(_resnet18(), tmp_path / "a.pt", factory="torchvision.models:resnet18")  # 1000 classes
    assert os.listdir(tmp_path) == []
    pruned = copy.deepcopy(prune_model(_resnet18(), X, 0.5))  # the edit marks survive a deep copy
    assert recorded_edits(pruned) and save(pruned, tmp_path / "b.pt", **RESNET).is_file()
