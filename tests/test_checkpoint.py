"""Checkpoint files: round trip, atomic writes, and refusal of anything compresskit did not write."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from compresskit.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT,
    READABLE_VERSIONS,
    VERSION,
    load_checkpoint,
    save_checkpoint,
)
from compresskit.errors import CompresskitError
from compresskit.models import ModelSpec, build_model, make_spec


def _trained_like(spec: ModelSpec, seed: int = 0) -> torch.nn.Module:
    """A model whose weights and BN statistics are not the initial ones."""
    model = build_model(spec, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand(tensor.shape, generator=g) * 0.1)
    return model.eval()


def test_roundtrip(tmp_path):
    spec = ModelSpec("pruned", [6, "M", 3, 5, "M"], batch_norm=True, num_classes=4, head="mlp",
                     head_width=9)  # fmt: skip
    model = _trained_like(spec)
    meta = {"dataset": "synthetic", "epoch": 3, "val_acc": 0.5, "classes": ["a", "b"], "x": None}
    path = save_checkpoint(tmp_path / "run" / "model.pt", spec, model, meta)
    assert path == tmp_path / "run" / "model.pt"
    assert sorted(os.listdir(tmp_path / "run")) == ["model.pt"]  # no temporary file left
    ckpt = load_checkpoint(path)
    assert ckpt.spec == spec
    assert ckpt.meta == meta
    assert ckpt.path == path
    rebuilt = ckpt.build()
    assert not rebuilt.training
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt.state_dict[key], value)


def test_save_accepts_state_dict_and_run_directory_resolves(tmp_path):
    spec = make_spec("cnn", 10, width=0.25)
    model = _trained_like(spec, seed=1)
    save_checkpoint(tmp_path / CHECKPOINT_NAME, spec, model.state_dict())
    ckpt = load_checkpoint(tmp_path)  # a run directory means its checkpoint.pt
    assert ckpt.path == tmp_path / CHECKPOINT_NAME
    assert ckpt.meta == {}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ckpt.build()(x), model(x))


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    spec_a = make_spec("cnn", 10, width=0.25)
    spec_b = make_spec("cnn_bn", 3, width=0.5)
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, spec_a, build_model(spec_a, seed=0), {"n": 1})
    save_checkpoint(path, spec_b, build_model(spec_b, seed=0), {"n": 2})
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]
    ckpt = load_checkpoint(path)
    assert ckpt.spec == spec_b
    assert ckpt.meta == {"n": 2}


def test_meta_must_be_json(tmp_path):
    spec = make_spec("cnn", 10, width=0.25)
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "x.pt", spec, build_model(spec), {"bad": object()})
    assert os.listdir(tmp_path) == []


def test_weights_are_plain_cpu_tensors(tmp_path):
    spec = make_spec("cnn_bn", 10, width=0.25)
    path = save_checkpoint(tmp_path / "c.pt", spec, build_model(spec, seed=0))
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT
    assert payload["version"] == VERSION
    assert payload["spec"] == spec.to_dict()
    assert all(t.device.type == "cpu" for t in payload["state_dict"].values())


def _expect_refusal(path, *fragments: str) -> str:
    with pytest.raises(CompresskitError) as info:
        load_checkpoint(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    return message


def test_missing_path(tmp_path):
    assert _expect_refusal(tmp_path / "nope.pt", "nope.pt").startswith("path ")
    _expect_refusal(tmp_path, "path ", CHECKPOINT_NAME, "does not exist")  # a directory without one


def test_random_bytes(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(os.urandom(256))
    _expect_refusal(path, "random.pt", "not a compresskit checkpoint")


def test_dict_without_marker(tmp_path):
    spec = make_spec("cnn", 10, width=0.25)
    path = tmp_path / "plain.pt"
    torch.save(build_model(spec).state_dict(), path)
    _expect_refusal(path, "plain.pt", FORMAT)
    torch.save({"spec": spec.to_dict(), "state_dict": build_model(spec).state_dict()}, path)
    _expect_refusal(path, "plain.pt", FORMAT)


def test_whole_module_is_refused(tmp_path):
    # torch.save of an nn.Module pickles code; weights_only loading must refuse it.
    spec = make_spec("cnn", 10, width=0.25)
    path = tmp_path / "module.pt"
    torch.save(build_model(spec), path)
    _expect_refusal(path, "module.pt", "not a compresskit checkpoint", "could not be read")


class _SideEffect:
    """Unpickling this runs os.mkdir(target): proof that pickled code was executed."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_loading_never_runs_pickled_code(tmp_path):
    spec = make_spec("cnn", 10, width=0.25)
    marker = tmp_path / "code-was-run"
    path = tmp_path / "evil.pt"
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.to_dict(),
        "state_dict": build_model(spec).state_dict(),
        "meta": {"x": _SideEffect(str(marker))},
    }
    torch.save(payload, path)
    _expect_refusal(path, "evil.pt")
    assert not marker.exists()


def test_wrapped_module_with_marker_is_refused(tmp_path):
    spec = make_spec("cnn", 10, width=0.25)
    path = tmp_path / "sneaky.pt"
    payload = {"format": FORMAT, "version": VERSION, "spec": spec.to_dict(),
               "state_dict": build_model(spec), "meta": {}}  # fmt: skip
    torch.save(payload, path)
    _expect_refusal(path, "sneaky.pt")


def test_other_version_is_refused(tmp_path):
    spec = make_spec("cnn", 10, width=0.25)
    path = tmp_path / "future.pt"
    payload = {"format": FORMAT, "version": max(READABLE_VERSIONS) + 1, "spec": spec.to_dict(),
               "state_dict": build_model(spec).state_dict(), "meta": {}}  # fmt: skip
    torch.save(payload, path)
    _expect_refusal(path, "future.pt", "version")


def test_invalid_spec_is_refused(tmp_path):
    spec = make_spec("cnn", 10, width=0.25)
    path = tmp_path / "badspec.pt"
    payload = {"format": FORMAT, "version": VERSION, "spec": {**spec.to_dict(), "layers": [0]},
               "state_dict": build_model(spec).state_dict(), "meta": {}}  # fmt: skip
    torch.save(payload, path)
    _expect_refusal(path, "badspec.pt", "spec")
    payload["spec"] = {"name": "x"}  # missing the required 'layers'
    torch.save(payload, path)
    _expect_refusal(path, "badspec.pt", "spec")


def test_state_dict_that_does_not_fit_its_spec(tmp_path):
    small = make_spec("cnn", 10, width=0.25)
    large = make_spec("cnn", 10, width=0.5)
    path = save_checkpoint(tmp_path / "mismatch.pt", small, build_model(large))
    ckpt = load_checkpoint(path)  # loading alone does not build the model
    with pytest.raises(CompresskitError) as info:
        ckpt.build()
    assert "mismatch.pt" in str(info.value)
    partial = {k: v for k, v in build_model(small).state_dict().items() if "head" not in k}
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "partial.pt", small, partial))
    with pytest.raises(CompresskitError, match=r"partial\.pt"):
        ckpt.build()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_follows_the_umask(tmp_path, umask, mode):
    spec = make_spec("cnn", 10, width=0.25)
    path = tmp_path / CHECKPOINT_NAME
    previous = os.umask(umask)
    try:
        save_checkpoint(path, spec, build_model(spec), {"n": 1})
        first = stat.S_IMODE(path.stat().st_mode)
        (tmp_path / "plain.txt").write_text("x")  # what any other file gets
        plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
        save_checkpoint(path, spec, build_model(spec), {"n": 2})  # replacing one, too
        second = stat.S_IMODE(path.stat().st_mode)
    finally:
        os.umask(previous)
    assert first == second == plain == mode
    assert sorted(os.listdir(tmp_path)) == [CHECKPOINT_NAME, "plain.txt"]
    assert load_checkpoint(path).meta == {"n": 2}


def test_failed_write_leaves_no_temporary(tmp_path, monkeypatch):
    spec = make_spec("cnn", 10, width=0.25)
    save_checkpoint(tmp_path / CHECKPOINT_NAME, spec, build_model(spec), {"n": 1})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / CHECKPOINT_NAME, spec, build_model(spec), {"n": 2})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]
    assert load_checkpoint(tmp_path).meta == {"n": 1}  # the old checkpoint is untouched
