"""``--dataset folder:PATH``: image folders decoded with Pillow, their val/ split, and a run on one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from compresskit.checkpoint import load_checkpoint
from compresskit.cli import app
from compresskit.data import image_folder, load_dataset
from compresskit.errors import CompresskitError
from compresskit.jobs.common import data_loaders, run_dataset, validation_split
from compresskit.rundir import read_config
from tests.fakedata import write_image, write_image_folder

CLASSES = ["dog", "cat", "eel"]  # sorted: cat, dog, eel


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def _folder(tmp_path: Path, *, val: bool = False, size=(16, 16), suffix=".png") -> tuple[Path, dict]:
    counts = {"train": 4, "test": 2, **({"val": 2} if val else {})}
    root = tmp_path / "images"
    return root, write_image_folder(root, CLASSES, counts, size=size, suffix=suffix)


def test_loads_classes_in_sorted_order_and_pixels_exactly(tmp_path):
    root, written = _folder(tmp_path)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")  # other files are ignored
    write_image(root / "train" / ".hidden" / "x.png", np.zeros((4, 4, 3)))  # so are hidden folders
    data = load_dataset(f"folder:{root}", image_size=16)
    assert data.classes == ["cat", "dog", "eel"]
    assert data.name == f"folder:{root.resolve()}"
    assert data.val is None and data.image_size == 16 and data.channels == 3
    for split, rows in (("train", written["train"]), ("test", written["test"])):
        loaded = getattr(data, split)
        assert loaded.images.dtype == torch.uint8 and loaded.images.shape == (len(rows), 3, 16, 16)
        assert loaded.labels.tolist() == [label for _, _, label in rows]
        want = np.stack([array.transpose(2, 0, 1) for _, array, _ in rows])
        np.testing.assert_array_equal(loaded.images.numpy(), want)  # PNG is lossless, no resize
    pixels = data.train.images.double() / 255
    assert data.mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist())


def test_mixed_sizes_and_formats_are_resized_to_the_image_size(tmp_path):
    root, _ = _folder(tmp_path)
    rng = np.random.default_rng(1)
    odd = rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)  # shrunk, not square
    write_image(root / "train" / "cat" / "z_big.png", odd)
    gray = np.full((9, 11), 77, dtype=np.uint8)  # grayscale: three equal channels
    write_image(root / "train" / "dog" / "z_gray.png", gray)
    write_image(root / "train" / "eel" / "z_photo.jpg", np.full((20, 20, 3), (200, 30, 90)), quality=95)
    rgba = np.dstack([np.full((8, 8, 3), 10), np.full((8, 8), 0)])  # alpha is dropped, not composited
    write_image(root / "test" / "cat" / "z_alpha.png", rgba.astype(np.uint8))
    data = load_dataset(f"folder:{root}", image_size=12)
    assert data.train.images.shape == (15, 3, 12, 12) and data.test.images.shape == (7, 3, 12, 12)
    big = data.train.images[4].double()  # cat: four images, then z_big
    # Pillow's bilinear shrink antialiases like torch's antialiased bilinear (up to rounding)
    reference = F.interpolate(
        torch.from_numpy(odd).permute(2, 0, 1)[None].double(), size=(12, 12), mode="bilinear", antialias=True
    )[0]
    assert (big - reference).abs().max() <= 2
    assert data.train.images[9].eq(77).all()  # dog: four, then z_gray
    photo = data.train.images[14].double()  # eel: four, then z_photo (JPEG, lossy)
    assert (photo - torch.tensor([200.0, 30, 90])[:, None, None]).abs().max() <= 6
    assert data.test.images[2].eq(10).all()  # cat's two test images, then z_alpha


def test_a_corrupt_image_is_named_not_skipped(tmp_path):
    root, _ = _folder(tmp_path)
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(CompresskitError, match=r"broken\.png") as info:
        load_dataset(f"folder:{root}")
    assert str(bad) in str(info.value)


def test_a_truncated_image_is_named(tmp_path):
    root, written = _folder(tmp_path, size=(64, 64))
    path = written["test"][3][0]
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CompresskitError, match=path.name):
        load_dataset(f"folder:{root}")


def test_a_file_pillow_would_give_to_another_program_is_refused(tmp_path):
    root, _ = _folder(tmp_path)
    eps = root / "train" / "cat" / "vector.png"  # an EPS (Ghostscript) in disguise
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    with pytest.raises(CompresskitError, match=r"vector\.png"):
        load_dataset(f"folder:{root}")


def test_layout_errors(tmp_path):
    root, _ = _folder(tmp_path)
    (root / "test" / "owl").mkdir()
    with pytest.raises(CompresskitError, match=r"not in train/: owl"):
        load_dataset(f"folder:{root}")
    (root / "test" / "owl").rmdir()
    (root / "train" / "owl").mkdir()
    with pytest.raises(CompresskitError, match=r"missing: owl"):
        load_dataset(f"folder:{root}")
    write_image(root / "test" / "owl" / "a.png", np.zeros((4, 4, 3)))
    with pytest.raises(CompresskitError, match=r"owl holds no images"):
        load_dataset(f"folder:{root}")
    (root / "test").rename(root / "testing")
    with pytest.raises(CompresskitError, match="has no test/ folder"):
        load_dataset(f"folder:{root}")
    with pytest.raises(CompresskitError, match="not a directory"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}")


def test_a_set_over_the_memory_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    root, _ = _folder(tmp_path)
    monkeypatch.setattr(image_folder, "memory_budget", lambda: 2**20)

    def never(*args):
        raise AssertionError("decoded although refused")

    monkeypatch.setattr(image_folder, "decode_image", never)
    with pytest.raises(CompresskitError) as info:
        load_dataset(f"folder:{root}", image_size=256)
    message = str(info.value)
    # 18 images × 3 × 256 × 256 bytes = 3,538,944 bytes, over 1 MiB
    assert "18 images" in message and "0.0033 GiB" in message and "budget of 0.000977 GiB" in message
    assert "use a smaller image_size or fewer images" in message


def test_the_budget_also_bounds_resized_named_datasets(monkeypatch):
    monkeypatch.setattr(image_folder, "memory_budget", lambda: 2**20)
    with pytest.raises(CompresskitError, match=r"^dataset digits holds 1,797 images"):
        load_dataset("digits", image_size=64)


def test_the_val_folder_is_the_validation_split_and_is_checked(tmp_path):
    root, written = _folder(tmp_path, val=True)
    data = load_dataset(f"folder:{root}")
    assert data.val is not None and data.val.labels.tolist() == [label for _, _, label in written["val"]]
    assert len(data.train) == 12  # nothing of train/ is held out


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A vgg11_bn trained for one epoch through the CLI on a 64×64 image folder with val/."""
    tmp_path = tmp_path_factory.mktemp("folder_run")
    root = tmp_path / "images"
    write_image_folder(root, CLASSES, {"train": 4, "val": 2, "test": 2}, size=(70, 60))
    write_image(root / "train" / "cat" / "z.jpg", np.full((50, 90, 3), 128), quality=90)
    run = tmp_path / "run"
    result = invoke("train", "--dataset", f"folder:{root}", "--image-size", 64, "--model", "vgg11_bn",
                    "--width", 0.0625, "--epochs", 1, "--batch-size", 8, "--out", run, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    return root, run


def test_train_and_evaluate_through_the_cli(folder_run):
    root, run = folder_run
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["dataset"] == f"folder:{root.resolve()}"
    assert config["data"]["image_size"] == 64 and config["model"]["spec"]["input_size"] == 64
    assert config["data"]["classes"] == ["cat", "dog", "eel"]
    assert config["data"]["val_folder"]["count"] == 6
    assert config["data"]["split"]["val_count"] == 0 and config["data"]["split"]["train_count"] == 13
    result = invoke("evaluate", "--checkpoint", run)
    assert result.exit_code == 0, result.output
    report = json.loads((run / "evaluation" / "evaluation.json").read_text())
    assert report["test_samples"] == 6
    # the same test images as training saw: the accuracy it recorded is reproduced
    assert report["test_acc"] == pytest.approx(load_checkpoint(run / "checkpoint.pt").meta["test_acc"])


def test_a_reloaded_run_validates_on_the_same_val_folder(folder_run):
    _, run = folder_run
    config = read_config(run)
    data = run_dataset(config, None, download=False, where="test")
    assert data.image_size == 64
    train, val, test = data_loaders(data, config.data, batch_size=4, seed=0, device=torch.device("cpu"))
    assert (train.num_samples, val.num_samples, test.num_samples) == (13, 6, 6)
    assert torch.equal(validation_split(data, config.data).images, data.val.images)
    moved = data.val.labels.flip(0)
    data.val.labels = moved  # another val/ than the run's: refused, not silently used
    with pytest.raises(CompresskitError, match="val/"):
        validation_split(data, config.data, "the run")


def test_cli_names_a_corrupt_file_with_exit_2(tmp_path):
    root, _ = _folder(tmp_path)
    bad = root / "test" / "eel" / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "run"
    result = invoke("train", "--dataset", f"folder:{root}", "--model", "cnn", "--epochs", 1, "--out", out)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "corrupt.jpg" in result.stderr and result.stderr.startswith("error:")
    assert not out.exists()


def test_cli_refuses_data_dir_with_a_folder_and_bad_image_sizes(tmp_path):
    root, _ = _folder(tmp_path)
    result = invoke("train", "--dataset", f"folder:{root}", "--data-dir", tmp_path, "--out", tmp_path / "r")
    assert result.exit_code == 2 and "--data-dir" in result.stderr
    result = invoke("train", "--dataset", "synthetic", "--image-size", 0, "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert "--image-size must be a positive whole number of pixels; got 0" in result.stderr
    result = invoke("train", "--dataset", "folder:", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "folder:PATH" in result.stderr
    # vgg11's five pools need at least 32 pixels
    result = invoke("train", "--dataset", "synthetic", "--model", "vgg11", "--image-size", 16,
                    "--out", tmp_path / "r")  # fmt: skip
    assert result.exit_code == 2 and "16-pixel" in result.stderr
    assert not (tmp_path / "r").exists()


def test_early_stopping_uses_the_val_folder_and_needs_one(tmp_path):
    """--val-fraction 0 with a val/ folder still validates, so --patience is allowed; without val/
    it is refused before anything is written."""
    with_val, _ = _folder(tmp_path / "a", val=True)
    flags = ("--model", "cnn", "--epochs", 2, "--batch-size", 4, "--val-fraction", 0, "--patience", 1,
             "--quiet")  # fmt: skip
    result = invoke("train", "--dataset", f"folder:{with_val}", *flags, "--out", tmp_path / "ok")
    assert result.exit_code == 0, result.output
    history = pd.read_csv(tmp_path / "ok" / "history.csv")
    assert history["val_acc"].notna().all()
    without, _ = _folder(tmp_path / "b")
    result = invoke("train", "--dataset", f"folder:{without}", *flags, "--out", tmp_path / "no")
    assert result.exit_code == 2 and "val/" in result.stderr and "--patience" in result.stderr
    assert not (tmp_path / "no").exists()
