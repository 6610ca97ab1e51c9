"""Datasets from files the tests write themselves, the split, augmentation and the Loader."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from compresskit.data import (
    LABEL_SETS,
    Augmentation,
    ImageSplit,
    Loader,
    channel_stats,
    check_labels,
    load_dataset,
    random_crop,
    random_cutout,
    random_flip,
    random_jitter,
    random_rotate,
    read_idx,
    rotate_batch,
    rotation_angles,
    stratified_split,
)
from compresskit.errors import CompresskitError
from tests.fakedata import (
    CIFAR10_FOLDER,
    CIFAR100_COARSE_NAMES,
    CIFAR100_FINE_TO_COARSE,
    CIFAR100_FOLDER,
    idx_bytes,
    write_cifar10,
    write_cifar100,
    write_idx,
    write_idx_dataset,
    write_pickle,
)

# --------------------------------------------------------------------------- CIFAR


def _check_cifar_layout(images: torch.Tensor, data: np.ndarray) -> None:
    """Row r holds image r as 1024 red, then 1024 green, then 1024 blue bytes, each row-major."""
    assert images.shape == (len(data), 3, 32, 32)
    for r in range(len(data)):
        for c in range(3):
            plane = data[r, c * 1024 : (c + 1) * 1024]
            for y in (0, 1, 17, 31):
                expected_row = plane[y * 32 : (y + 1) * 32]
                assert images[r, c, y].tolist() == expected_row.tolist()
    # One pixel spelled out: channel 2, row 3, column 5 of image 1.
    assert int(images[1, 2, 3, 5]) == int(data[1, 2 * 1024 + 3 * 32 + 5])


def test_cifar10_loads_official_layout(cifar10_dir):
    root, fake = cifar10_dir
    ds = load_dataset("cifar10", root, download=False)
    assert ds.train.images.dtype == torch.uint8
    assert ds.test.images.dtype == torch.uint8
    assert ds.train.images.shape == (30, 3, 32, 32)
    assert ds.test.images.shape == (6, 3, 32, 32)
    assert ds.train.labels.dtype == torch.int64
    assert ds.train.labels.tolist() == fake.train_labels.tolist()
    assert ds.test.labels.tolist() == fake.test_labels.tolist()
    assert ds.classes == fake.classes
    assert ds.num_classes == 10
    assert ds.channels == 3
    _check_cifar_layout(ds.train.images, fake.train_data)  # batches 1..5 in order
    _check_cifar_layout(ds.test.images, fake.test_data)


def test_cifar10_folder_itself_as_data_dir(cifar10_dir):
    root, fake = cifar10_dir
    ds = load_dataset("cifar10", root / CIFAR10_FOLDER, download=False)
    assert ds.train.labels.tolist() == fake.train_labels.tolist()
    _check_cifar_layout(ds.test.images, fake.test_data)


def test_cifar10_statistics_match_the_written_pixels(cifar10_dir):
    root, fake = cifar10_dir
    ds = load_dataset("cifar10", root, download=False)
    x = fake.train_data.reshape(-1, 3, 1024).astype(np.float64) / 255.0
    np.testing.assert_allclose(ds.mean, x.mean(axis=(0, 2)), rtol=1e-9)
    np.testing.assert_allclose(ds.std, x.std(axis=(0, 2)), rtol=1e-9)


def test_cifar100_loads_fine_labels(tmp_path):
    fake = write_cifar100(tmp_path)
    for data_dir in (tmp_path, tmp_path / CIFAR100_FOLDER):
        ds = load_dataset("cifar100", data_dir, download=False)
        assert ds.train.images.dtype == torch.uint8
        assert ds.train.images.shape == (8, 3, 32, 32)
        assert ds.test.images.shape == (4, 3, 32, 32)
        assert ds.train.labels.tolist() == fake.train_labels.tolist()
        assert ds.test.labels.tolist() == fake.test_labels.tolist()
        assert ds.classes == fake.classes
        assert ds.num_classes == 100
        _check_cifar_layout(ds.train.images, fake.train_data)
        _check_cifar_layout(ds.test.images, fake.test_data)


def test_cifar100_coarse_labels(tmp_path):
    fake = write_cifar100(tmp_path, n_train=40, n_test=12, seed=3)
    fine = load_dataset("cifar100", tmp_path, download=False, labels="fine")
    ds = load_dataset("cifar100", tmp_path, download=False, labels="coarse")
    assert fine.label_set == "fine" and ds.label_set == "coarse"
    assert ds.classes == CIFAR100_COARSE_NAMES == fake.coarse_classes
    assert ds.num_classes == 20
    assert ds.train.labels.dtype == torch.int64
    # the superclass of each sample is the fake data's mapping of its fine class
    assert ds.train.labels.tolist() == CIFAR100_FINE_TO_COARSE[fake.train_labels].tolist()
    assert ds.test.labels.tolist() == CIFAR100_FINE_TO_COARSE[fake.test_labels].tolist()
    assert ds.train.labels.tolist() == fake.coarse_train_labels.tolist()
    assert ds.test.labels.tolist() == fake.coarse_test_labels.tolist()
    assert not torch.equal(ds.train.labels, fine.train.labels // 5)
    # images, their order and the statistics do not depend on the label set
    assert torch.equal(ds.train.images, fine.train.images)
    assert torch.equal(ds.test.images, fine.test.images)
    assert (ds.mean, ds.std) == (fine.mean, fine.std)
    assert fine.train.labels.tolist() == fake.train_labels.tolist()
    assert fine.num_classes == 100


def test_fake_cifar100_mapping_is_official_shaped():
    # like the official mapping: every superclass holds exactly five fine classes
    assert np.bincount(CIFAR100_FINE_TO_COARSE, minlength=20).tolist() == [5] * 20
    assert len(CIFAR100_COARSE_NAMES) == 20


@pytest.mark.parametrize("labels", ["medium", "Coarse", "", "superclass"])
def test_unknown_label_set_is_refused(tmp_path, labels):
    write_cifar100(tmp_path)
    with pytest.raises(CompresskitError) as info:
        load_dataset("cifar100", tmp_path, download=False, labels=labels)
    message = str(info.value)
    assert message.startswith("labels must be one of: ") and message.endswith(f"; got '{labels}'.")
    assert "fine, coarse" in message
    assert LABEL_SETS == ("fine", "coarse")


@pytest.mark.parametrize("name", ["cifar10", "fashion-mnist", "mnist", "digits", "synthetic"])
def test_coarse_labels_refused_for_datasets_without_them(tmp_path, name):
    # refused from the name alone, before any file is looked for (the folder does not exist)
    with pytest.raises(CompresskitError) as info:
        load_dataset(name, tmp_path / "nowhere", download=False, labels="coarse")
    message = str(info.value)
    assert message.startswith("labels coarse is only available for cifar100")
    assert name in message
    with pytest.raises(CompresskitError, match=r"^labels coarse is only available"):
        check_labels(name, "coarse")
    check_labels(name, "fine")
    check_labels("cifar100", "coarse")


def test_cifar100_copy_without_coarse_labels(tmp_path):
    fake = write_cifar100(tmp_path, coarse=False)
    assert fake.coarse_train_labels is None and fake.coarse_classes is None
    ds = load_dataset("cifar100", tmp_path, download=False)  # fine labels still load
    assert ds.train.labels.tolist() == fake.train_labels.tolist()
    with pytest.raises(CompresskitError) as info:
        load_dataset("cifar100", tmp_path, download=False, labels="coarse")
    message = str(info.value)
    assert str(fake.folder / "train") in message
    assert "'coarse_labels'" in message and "needed by the coarse labels" in message


def test_cifar100_meta_without_coarse_names(tmp_path):
    fake = write_cifar100(tmp_path)
    write_pickle(fake.folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})
    with pytest.raises(CompresskitError) as info:
        load_dataset("cifar100", tmp_path, download=False, labels="coarse")
    message = str(info.value)
    assert "meta" in message and "'coarse_label_names'" in message and "20 class names" in message


def test_cifar100_coarse_label_out_of_range(tmp_path):
    fake = write_cifar100(tmp_path)
    data = np.zeros((2, 3072), dtype=np.uint8)
    write_pickle(fake.folder / "test", {"data": data, "fine_labels": [0, 99], "coarse_labels": [0, 20]})
    load_dataset("cifar100", tmp_path, download=False)  # the fine labels are fine
    with pytest.raises(CompresskitError, match=r"test is not a CIFAR-100 file: labels must lie in 0\.\.19"):
        load_dataset("cifar100", tmp_path, download=False, labels="coarse")


def _drop_data_key(folder: Path) -> str:
    write_pickle(folder / "data_batch_3", {"labels": [0, 1]})
    return "data_batch_3"


def _wrong_row_length(folder: Path) -> str:
    data = np.zeros((2, 3000), dtype=np.uint8)
    write_pickle(folder / "data_batch_2", {"data": data, "labels": [0, 1]})
    return "data_batch_2"


def _label_out_of_range(folder: Path) -> str:
    data = np.zeros((2, 3072), dtype=np.uint8)
    write_pickle(folder / "test_batch", {"data": data, "labels": [3, 10]})
    return "test_batch"


def _negative_label(folder: Path) -> str:
    data = np.zeros((2, 3072), dtype=np.uint8)
    write_pickle(folder / "data_batch_1", {"data": data, "labels": [-1, 0]})
    return "data_batch_1"


def _not_a_pickle(folder: Path) -> str:
    (folder / "data_batch_4").write_bytes(os.urandom(64) + b"this is not a pickle")
    return "data_batch_4"


def _missing_batch(folder: Path) -> str:
    (folder / "data_batch_5").unlink()
    return "data_batch_5"


def _bad_meta(folder: Path) -> str:
    write_pickle(folder / "batches.meta", {"label_names": ["only", "three", "names"]})
    return "batches.meta"


@pytest.mark.parametrize(
    "corrupt",
    [
        _drop_data_key,
        _wrong_row_length,
        _label_out_of_range,
        _negative_label,
        _not_a_pickle,
        _missing_batch,
        _bad_meta,
    ],
)
def test_malformed_cifar10_names_the_file(cifar10_dir, corrupt):
    root, fake = cifar10_dir
    bad_file = corrupt(fake.folder)
    with pytest.raises(CompresskitError) as info:
        load_dataset("cifar10", root, download=False)
    assert bad_file in str(info.value)


def test_malformed_cifar100_names_the_file(tmp_path):
    fake = write_cifar100(tmp_path)
    data = np.zeros((2, 3072), dtype=np.uint8)
    write_pickle(fake.folder / "train", {"data": data, "fine_labels": [0, 100]})
    with pytest.raises(CompresskitError, match=r"train"):
        load_dataset("cifar100", tmp_path, download=False)


@pytest.mark.parametrize(
    ("name", "folder", "url"),
    [
        ("cifar10", CIFAR10_FOLDER, "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
        ("cifar100", CIFAR100_FOLDER, "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    ],
)
def test_missing_cifar_folder_without_download(tmp_path, name, folder, url):
    with pytest.raises(CompresskitError) as info:
        load_dataset(name, tmp_path, download=False)
    message = str(info.value)
    assert folder in message
    assert url in message
    assert not (tmp_path / folder).exists()


def test_missing_data_dir_is_refused(tmp_path):
    with pytest.raises(CompresskitError, match=r"^data_dir .*nowhere is not a directory"):
        load_dataset("cifar10", tmp_path / "nowhere", download=False)


def test_failed_cifar_download_is_a_clean_error(tmp_path, monkeypatch):
    calls = []

    def failing_download(url, root, **kwargs):
        calls.append((url, kwargs))
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", failing_download)
    with pytest.raises(CompresskitError) as info:
        load_dataset("cifar10", tmp_path, download=True)
    message = str(info.value)
    assert "download failed" in message
    assert "network is unreachable" in message
    # torchvision fetches and md5-checks the archive; it never unpickles the batches itself
    assert calls == [
        (
            torchvision.datasets.CIFAR10.url,
            {"filename": "cifar-10-python.tar.gz", "md5": torchvision.datasets.CIFAR10.tgz_md5},
        )
    ]


def test_downloaded_cifar_is_read_by_compresskit(tmp_path, monkeypatch):
    def fake_download(url, root, **kwargs):
        write_cifar10(Path(root))  # what extracting the archive leaves behind

    class Unusable(torchvision.datasets.CIFAR10):
        def __init__(self, *args, **kwargs):
            raise AssertionError("torchvision's CIFAR10 would read the batches with pickle.load")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_download)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Unusable)
    data = load_dataset("cifar10", tmp_path, download=True)
    assert data.train.images.shape == (30, 3, 32, 32)


def test_unknown_dataset_is_refused():
    with pytest.raises(CompresskitError, match=r"^dataset must be one of: .*; got 'imagenet'"):
        load_dataset("imagenet", download=False)


def _halve_reference(plane: np.ndarray) -> np.ndarray:
    """A 2× antialiased bilinear shrink spelled out: output pixel i averages input pixels
    2i-1, 2i, 2i+1, 2i+2 with triangle weights 1, 3, 3, 1 (the tent filter widened by the scale),
    renormalised where the window leaves the image; rows, then columns."""

    def halve(rows: np.ndarray) -> np.ndarray:
        n = rows.shape[0]
        out = np.zeros((n // 2, *rows.shape[1:]))
        for i in range(n // 2):
            taps = [
                (j, w) for j, w in zip(range(2 * i - 1, 2 * i + 3), (1, 3, 3, 1), strict=True) if 0 <= j < n
            ]
            out[i] = sum(w * rows[j] for j, w in taps) / sum(w for _, w in taps)
        return out

    return halve(halve(plane.astype(np.float64)).T).T


def test_image_size_shrinks_cifar_with_antialiasing(tmp_path):
    fake = write_cifar10(tmp_path)
    data = load_dataset("cifar10", tmp_path, download=False, image_size=16)
    assert data.image_size == 16 and data.train.images.shape == (30, 3, 16, 16)
    full = fake.train_data.reshape(-1, 3, 32, 32)
    for r in (0, 7, 29):
        for c in range(3):
            want = np.round(_halve_reference(full[r, c]))
            assert np.abs(data.train.images[r, c].numpy() - want).max() <= 1  # float rounding only


def test_image_size_enlarges_the_small_datasets():
    digits = load_dataset("digits", image_size=64)
    assert digits.train.images.shape[1:] == (1, 64, 64)
    synthetic = load_dataset("synthetic", image_size=48)
    assert synthetic.train.images.shape[1:] == (3, 48, 48) and synthetic.image_size == 48
    for bad in (0, -3):
        message = rf"^image_size must be a positive whole number of pixels; got {bad}\."
        with pytest.raises(CompresskitError, match=message):
            load_dataset("synthetic", image_size=bad)


# --------------------------------------------------------------------------- IDX


def _reference_resize(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = F.interpolate(x.float(), size=(32, 32), mode="bilinear")
    return y.round().clamp(0, 255).byte()


def _check_idx_dataset(ds, written) -> None:
    for split_name, split in (("train", ds.train), ("test", ds.test)):
        images, labels = written[split_name]
        assert split.images.dtype == torch.uint8
        assert split.images.shape == (len(images), 1, 32, 32)
        assert torch.equal(split.images, _reference_resize(images))
        assert split.labels.tolist() == labels.tolist()
    assert ds.channels == 1
    assert ds.num_classes == 10


def test_fashion_mnist_gzipped_flat_folder(tmp_path):
    written = write_idx_dataset(tmp_path, gz=True)
    assert (tmp_path / "train-images-idx3-ubyte.gz").is_file()
    ds = load_dataset("fashion-mnist", tmp_path)
    _check_idx_dataset(ds, written)
    assert ds.classes[0] == "T-shirt/top"
    assert ds.classes[9] == "Ankle boot"


def test_fashion_mnist_torchvision_layout(tmp_path):
    written = write_idx_dataset(tmp_path / "FashionMNIST" / "raw", gz=False, seed=1)
    ds = load_dataset("fashion-mnist", tmp_path)
    _check_idx_dataset(ds, written)


def test_mnist_torchvision_layout(tmp_path):
    written = write_idx_dataset(tmp_path / "MNIST" / "raw", gz=False, seed=2)
    ds = load_dataset("mnist", tmp_path)
    _check_idx_dataset(ds, written)
    assert ds.classes == [str(i) for i in range(10)]


def test_missing_idx_files_are_reported(tmp_path):
    with pytest.raises(CompresskitError, match="train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", tmp_path)


def test_idx_label_count_mismatch(tmp_path):
    write_idx_dataset(tmp_path, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(2, dtype=np.uint8))
    with pytest.raises(CompresskitError, match="t10k-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", tmp_path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_equals_numpy(tmp_path, suffix):
    rng = np.random.default_rng(5)
    array = rng.integers(0, 256, size=(4, 7, 3), dtype=np.uint8)
    path = write_idx(tmp_path / f"arr-idx3-ubyte{suffix}", array)
    out = read_idx(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)
    vector = rng.integers(0, 256, size=11, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / f"v{suffix}", vector)), vector)


def test_read_idx_header_layout(tmp_path):
    # Independent of the helper: the IDX header spelled out byte by byte.
    path = tmp_path / "tiny"
    path.write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]))
    np.testing.assert_array_equal(read_idx(path), [[1, 2, 3], [4, 5, 6]])


def _bad_magic(path: Path) -> None:
    raw = bytearray(idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8)))
    raw[0] = 0x1F
    path.write_bytes(bytes(raw))


def _wrong_type_code(path: Path) -> None:
    raw = bytearray(idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8)))
    raw[2] = 0x0D  # float
    path.write_bytes(bytes(raw))


def _truncated_data(path: Path) -> None:
    path.write_bytes(idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8))[:-5])


def _truncated_header(path: Path) -> None:
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2]))


def _too_short(path: Path) -> None:
    path.write_bytes(b"\x00\x00")


def _trailing_bytes(path: Path) -> None:
    path.write_bytes(idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8)) + b"extra")


@pytest.mark.parametrize(
    "damage",
    [_bad_magic, _wrong_type_code, _truncated_data, _truncated_header, _too_short, _trailing_bytes],
)
def test_read_idx_rejects_bad_files(tmp_path, damage):
    path = tmp_path / "broken-idx3-ubyte"
    damage(path)
    with pytest.raises(CompresskitError) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def _truncated_gzip(compressed: bytes) -> bytes:
    return compressed[: len(compressed) // 2]


def _corrupted_gzip(compressed: bytes) -> bytes:
    """Flip bytes inside the deflate stream (zlib.error on these bytes)."""
    body = bytearray(compressed)
    for i in range(20, 60):
        body[i] ^= 0xFF
    return bytes(body)


def _not_gzip(compressed: bytes) -> bytes:
    return b"plain bytes, no gzip header at all"


@pytest.mark.parametrize("damage", [_truncated_gzip, _corrupted_gzip, _not_gzip])
def test_read_idx_rejects_broken_gzip(tmp_path, damage):
    path = tmp_path / "broken-idx3-ubyte.gz"
    values = np.random.default_rng(0).integers(0, 8, size=4000).astype(np.uint8)
    compressed = gzip.compress(idx_bytes(values))
    path.write_bytes(damage(compressed))
    with pytest.raises(CompresskitError) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_bad_idx_file_in_dataset_names_the_file(tmp_path):
    write_idx_dataset(tmp_path, gz=False)
    _truncated_data(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(CompresskitError, match="train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", tmp_path)


# --------------------------------------------------------------------------- embedded data


def test_digits_split():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    assert len(ds.train) + len(ds.test) == 1797
    assert ds.train.images.shape[1:] == (1, 32, 32)
    assert ds.test.images.shape[1:] == (1, 32, 32)
    assert ds.train.images.dtype == torch.uint8
    assert ds.classes == [str(i) for i in range(10)]
    per_class = np.bincount(load_digits().target, minlength=10)
    test_counts = torch.bincount(ds.test.labels, minlength=10).tolist()
    train_counts = torch.bincount(ds.train.labels, minlength=10).tolist()
    for c in range(10):
        assert test_counts[c] == round(per_class[c] * 0.2)
        assert train_counts[c] + test_counts[c] == per_class[c]
    # the 0..16 grey levels are stretched to the full byte range
    assert int(ds.train.images.max()) == 255


def test_synthetic_dataset_shapes():
    ds = load_dataset("synthetic")
    assert ds.train.images.shape[1:] == (3, 32, 32)
    assert ds.train.images.dtype == torch.uint8
    assert ds.num_classes == 4
    assert len(ds.test) > 0


def test_channel_stats_matches_numpy():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(17, 3, 5, 7), dtype=np.uint8)
    mean, std = channel_stats(torch.from_numpy(images))
    x = images.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-8)
    assert len(mean) == len(std) == 3


# --------------------------------------------------------------------------- split


def _labels(counts: dict[int, int]) -> torch.Tensor:
    labels = [c for c, n in counts.items() for _ in range(n)]
    perm = np.random.default_rng(0).permutation(len(labels))
    return torch.tensor(labels)[torch.from_numpy(perm)]


def test_stratified_split_counts_per_class():
    labels = _labels({0: 10, 1: 7, 2: 3, 3: 2, 4: 1})
    keep, held = stratified_split(labels, 0.3, seed=0)
    assert set(keep.tolist()).isdisjoint(held.tolist())
    assert sorted(keep.tolist() + held.tolist()) == list(range(len(labels)))
    assert keep.tolist() == sorted(keep.tolist())
    assert held.tolist() == sorted(held.tolist())
    held_counts = torch.bincount(labels[held], minlength=5).tolist()
    # round(10*.3)=3, round(7*.3)=round(2.1)=2, round(3*.3)=round(0.9)=1,
    # round(2*.3)=round(0.6)=1, one sample: round(0.3)=0 (no minimum below two samples)
    assert held_counts == [3, 2, 1, 1, 0]


def test_stratified_split_minimum_one_each_side():
    labels = _labels({0: 20, 1: 2, 2: 3})
    _, held = stratified_split(labels, 0.05, seed=1)
    # round(20*.05)=1; round(0.1)=0 -> at least 1; round(0.15)=0 -> at least 1
    assert torch.bincount(labels[held], minlength=3).tolist() == [1, 1, 1]
    keep, held = stratified_split(labels, 0.9, seed=1)
    # round(18)=18; the two- and three-sample classes keep at least one sample each
    assert torch.bincount(labels[held], minlength=3).tolist() == [18, 1, 2]
    assert torch.bincount(labels[keep], minlength=3).tolist() == [2, 1, 1]


def test_stratified_split_seeds():
    labels = _labels({0: 30, 1: 30, 2: 30})
    a = stratified_split(labels, 0.2, seed=7)
    b = stratified_split(labels, 0.2, seed=7)
    c = stratified_split(labels, 0.2, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_stratified_split_fraction_zero():
    labels = _labels({0: 4, 1: 3})
    keep, held = stratified_split(labels, 0.0, seed=0)
    assert held.numel() == 0
    assert keep.tolist() == list(range(7))


@pytest.mark.parametrize("fraction", [1.0, 1.5, -0.1])
def test_stratified_split_bad_fraction(fraction):
    with pytest.raises(CompresskitError, match=rf"^val_fraction must be in \[0, 1\); got {fraction}"):
        stratified_split(torch.tensor([0, 1, 0, 1]), fraction, seed=0)


# --------------------------------------------------------------------------- Loader + augmentation


def _random_split(n: int = 20, channels: int = 3, seed: int = 0) -> ImageSplit:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, 32, 32), generator=g, dtype=torch.uint8)
    return ImageSplit(images, torch.arange(n))  # label i identifies sample i


MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)
FULL = Augmentation(crop_padding=4, flip=True, cutout=8, jitter=0.3, rotate=10)


def _epochs(loader: Loader, n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for _ in range(n) for x, y in loader]


def test_loader_same_seed_same_batches():
    split = _random_split()

    def make(seed: int) -> Loader:
        return Loader(split, 6, mean=MEAN, std=STD, augment=FULL, shuffle=True, seed=seed)

    a, b, c = _epochs(make(3)), _epochs(make(3)), _epochs(make(4))
    assert len(a) == 2 * 4
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb)
        assert torch.equal(ya, yb)
    assert any(not torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c, strict=True))
    # the two epochs of one loader are shuffled differently
    first = torch.cat([y for _, y in a[:4]])
    second = torch.cat([y for _, y in a[4:]])
    assert not torch.equal(first, second)


def test_loader_without_augmentation_normalises_in_order():
    split = _random_split(n=10)
    loader = Loader(split, 4, mean=MEAN, std=STD)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32
    assert y.tolist() == list(range(10))
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    expected = (split.images.float() / 255 - mean) / std
    torch.testing.assert_close(x, expected)


def test_loader_shuffle_covers_each_sample_once():
    split = _random_split(n=11)
    loader = Loader(split, 4, mean=MEAN, std=STD, shuffle=True, seed=1)
    for _ in range(2):
        xs, ys = zip(*loader, strict=True)
        y = torch.cat(ys)
        assert sorted(y.tolist()) == list(range(11))
        assert y.tolist() != list(range(11))
        x = torch.cat(xs)
        mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        std = torch.tensor(STD).view(1, 3, 1, 1)
        torch.testing.assert_close(x, (split.images[y].float() / 255 - mean) / std)


def test_loader_drop_last():
    loader = Loader(_random_split(n=10), 4, mean=MEAN, std=STD, drop_last=True)
    assert len(loader) == 2
    assert sum(len(y) for _, y in loader) == 8


def test_loader_rejects_bad_batch_size():
    with pytest.raises(CompresskitError, match=r"^batch_size must be a positive integer; got 0"):
        Loader(_random_split(n=4), 0, mean=MEAN, std=STD)


def _windows(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every H×W window of the zero-padded image, built slowly by hand."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=image.dtype)
    padded[:, padding : padding + h, padding : padding + w] = image
    return [
        padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
    ]


def _window_index(out: torch.Tensor, image: torch.Tensor, padding: int) -> int:
    matches = [i for i, win in enumerate(_windows(image, padding)) if torch.equal(win, out)]
    assert matches, "crop output is not a window of the padded input"
    return matches[0]


def test_random_crop_is_a_window_of_the_padded_image():
    split = _random_split(n=24)
    out = random_crop(split.images, 3, torch.Generator().manual_seed(0))
    assert out.shape == split.images.shape
    assert out.dtype == torch.uint8
    offsets = [divmod(_window_index(out[i], split.images[i], 3), 7) for i in range(24)]
    # every sample gets its own vertical and horizontal offset
    assert len({dy for dy, _ in offsets}) > 1
    assert len({dx for _, dx in offsets}) > 1


def test_random_crop_reproducible_with_same_generator():
    images = _random_split(n=8).images
    a = random_crop(images, 2, torch.Generator().manual_seed(5))
    b = random_crop(images, 2, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def _asymmetric_batch(n: int = 64, channels: int = 3) -> torch.Tensor:
    image = torch.arange(channels * 32 * 32, dtype=torch.float32).view(channels, 32, 32)
    image = (image * 7 % 251).to(torch.uint8)  # no mirror or shift symmetry
    assert not torch.equal(image, image.flip(-1))
    return image.expand(n, -1, -1, -1).contiguous()


def test_random_crop_is_per_sample():
    batch = _asymmetric_batch()
    out = random_crop(batch, 4, torch.Generator().manual_seed(0))
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 1
    for o in out[:8]:
        _window_index(o, batch[0], 4)


def test_random_flip_is_per_sample():
    batch = _asymmetric_batch().float()
    out = random_flip(batch, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, batch[0].flip(-1)) for o in out]
    unflipped = [torch.equal(o, batch[0]) for o in out]
    assert all(f or u for f, u in zip(flipped, unflipped, strict=True))
    assert any(flipped)
    assert any(unflipped)


def test_loader_flip_and_crop_are_per_sample():
    batch = _asymmetric_batch()
    split = ImageSplit(batch, torch.zeros(64, dtype=torch.long))
    unit = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    x, _ = next(iter(Loader(split, 64, augment=Augmentation(flip=True), **unit)))
    ref = batch[0].float() / 255
    flips = [torch.allclose(o, ref.flip(-1)) for o in x]
    plain = [torch.allclose(o, ref) for o in x]
    assert all(f or p for f, p in zip(flips, plain, strict=True))
    assert any(flips) and any(plain)
    x, _ = next(iter(Loader(split, 64, augment=Augmentation(crop_padding=4), **unit)))
    assert len({tuple(o.flatten().tolist()) for o in x}) > 1


@pytest.mark.parametrize("size", [1, 8, 12])
def test_random_cutout_zeroes_one_square(size):
    images = torch.ones(32, 3, 32, 32)
    out = random_cutout(images, size, torch.Generator().manual_seed(size))
    zeros = out == 0
    counts = zeros.sum(dim=(2, 3))  # per image and channel
    assert counts.min() >= 1
    assert counts.max() <= size * size
    # the same square in every channel; everything outside it untouched
    assert torch.equal(zeros[:, :1].expand_as(zeros), zeros)
    assert torch.all(out[~zeros] == 1)
    for mask in zeros[:, 0]:
        rows = mask.any(dim=1).nonzero().flatten()
        cols = mask.any(dim=0).nonzero().flatten()
        assert rows.max() - rows.min() + 1 <= size
        assert cols.max() - cols.min() + 1 <= size
        assert mask.sum() == len(rows) * len(cols)  # a (clipped) rectangle


def test_random_jitter_stays_in_unit_range():
    g = torch.Generator().manual_seed(0)
    for channels in (1, 3):
        images = torch.rand(32, channels, 32, 32, generator=g)
        out = random_jitter(images, 0.9, g)
        assert out.shape == images.shape
        assert out.min() >= 0.0
        assert out.max() <= 1.0
        assert not torch.equal(out, images)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("crop,flip", Augmentation(crop_padding=4, flip=True)),
        ("crop=2,cutout=12", Augmentation(crop_padding=2, cutout=12)),
        ("none", Augmentation()),
        ("jitter=0.2", Augmentation(jitter=0.2)),
        (" flip , crop=3 ", Augmentation(crop_padding=3, flip=True)),
        ("crop,flip,rotate=10", Augmentation(crop_padding=4, flip=True, rotate=10)),
        ("rotate", Augmentation(rotate=15)),
        ("rotate=7.5,cutout=4", Augmentation(cutout=4, rotate=7.5)),
        ("rotate=180", Augmentation(rotate=180)),
        ("rotate=0.123456789", Augmentation(rotate=0.123456789)),
        ("rotate=0,flip", Augmentation(flip=True)),
    ],
)
def test_augmentation_parse(text, expected):
    parsed = Augmentation.parse(text)
    assert parsed == expected
    assert Augmentation.parse(parsed.describe()) == parsed


def test_augmentation_describe_with_rotation():
    assert Augmentation.parse("crop,flip,rotate=10").describe() == "crop=4,flip,rotate=10"
    assert Augmentation.parse("rotate").describe() == "rotate=15"
    assert Augmentation(rotate=0.1).describe() == "rotate=0.1"
    assert Augmentation.parse("rotate").active


@pytest.mark.parametrize(
    "text", ["shear", "crop=x", "jitter=1.5", "crop=-1", "flip,shear=3", "crop=2.7", "flip=0.3", "crop=nan"]
)
def test_augmentation_parse_rejects(text):
    with pytest.raises(CompresskitError, match=r"^augment "):
        Augmentation.parse(text)


@pytest.mark.parametrize("text", ["rotate=-5", "rotate=200", "rotate=abc", "rotate=nan", "rotate=inf"])
def test_augmentation_parse_rejects_bad_rotation(text):
    with pytest.raises(CompresskitError) as info:
        Augmentation.parse(text)
    message = str(info.value)
    assert message.startswith(f"augment '{text}'")
    assert "rotate takes a number of degrees from 0 to 180" in message


# --------------------------------------------------------------------------- rotation


def _smooth_asymmetric_image(channels: int = 3) -> torch.Tensor:
    """A smooth 32×32 image with no rotational symmetry, values in 0..255 (float32)."""
    g = torch.Generator().manual_seed(11)
    coarse = torch.rand(1, channels, 5, 5, generator=g)
    image = F.interpolate(coarse, size=(32, 32), mode="bicubic", align_corners=False)[0]
    image[:, 4:10, 20:27] += 1.0  # an off-centre block
    return (image.clamp(0, 2) * 120).float()


def test_rotate_batch_by_zero_is_identity():
    images = _asymmetric_batch(n=4)
    assert torch.equal(rotate_batch(images, torch.zeros(4)), images)  # uint8 in, uint8 out
    floats = images.float() / 255
    out = rotate_batch(floats, torch.zeros(4))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, floats, atol=1e-5, rtol=0)
    # a tiny angle moves no pixel by more than a sliver of its neighbours' difference
    tiny = rotate_batch(floats, torch.full((4,), 1e-4))
    torch.testing.assert_close(tiny, floats, atol=1e-4, rtol=0)


def test_rotate_batch_quarter_turns_equal_rot90():
    image = _asymmetric_batch(n=1)[0]
    assert not torch.equal(image, torch.rot90(image, 1, dims=(-2, -1)))
    angles = torch.tensor([90.0, -90.0, 180.0, 270.0, 0.0])
    expected = torch.stack([torch.rot90(image, k, dims=(-2, -1)) for k in (1, -1, 2, 3, 0)])
    batch = image.expand(5, -1, -1, -1)
    assert torch.equal(rotate_batch(batch, angles), expected)  # each sample its own angle
    out = rotate_batch(batch.float(), angles)
    torch.testing.assert_close(out, expected.float(), atol=1e-3, rtol=0)
    # a small grayscale image, not 32×32: 8×8 one channel
    small = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    torch.testing.assert_close(
        rotate_batch(small, torch.tensor([90.0])), torch.rot90(small, 1, dims=(-2, -1)), atol=1e-4, rtol=0
    )


def test_rotate_batch_fills_corners_with_zero():
    ones = torch.ones(1, 1, 32, 32)
    out = rotate_batch(ones, torch.tensor([45.0]))
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 31, 31] == 0  # corners come from outside: zero
    assert out[0, 0, 16, 16] == pytest.approx(1.0)
    assert out.min() >= 0 and out.max() <= 1 + 1e-6


def test_rotation_angles_are_per_sample_and_within_bounds():
    angles = rotation_angles(1000, 12.5, torch.Generator().manual_seed(0))
    assert angles.shape == (1000,)
    assert angles.abs().max() <= 12.5
    assert angles.min() < -12 and angles.max() > 12  # the whole range is used
    assert len(set(angles.tolist())) == 1000
    assert abs(float(angles.mean())) < 1.0


def test_loader_rotates_each_sample_by_its_own_bounded_angle():
    """Recover each sample's angle from the Loader's output by fitting against rotate_batch."""
    image = _smooth_asymmetric_image()
    n, degrees = 24, 10.0
    images = image.round().to(torch.uint8).expand(n, -1, -1, -1).contiguous()
    split = ImageSplit(images, torch.zeros(n, dtype=torch.long))
    unit = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    loader = Loader(split, n, augment=Augmentation(rotate=degrees), seed=5, **unit)
    x, _ = next(iter(loader))
    candidates = torch.arange(-20.0, 20.0 + 1e-9, 0.25)
    references = rotate_batch(split.images[:1].float().expand(len(candidates), -1, -1, -1), candidates) / 255
    errors = ((x[:, None] - references[None]) ** 2).mean(dim=(2, 3, 4))  # n × candidates
    fitted = candidates[errors.argmin(dim=1)]
    assert fitted.abs().max() <= degrees + 0.25
    assert len(set(fitted.tolist())) > n // 2  # angles differ per sample
    assert fitted.min() < -degrees / 2 and fitted.max() > degrees / 2
    # they are the angles drawn from the loader's generator (nothing else drew from it here)
    drawn = rotation_angles(n, degrees, torch.Generator().manual_seed(5))
    assert (fitted - drawn).abs().max() <= 0.125 + 1e-6


def test_random_rotate_same_seed_same_batch_and_only_its_generator():
    images = _asymmetric_batch(n=16).float()
    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    g1, g2, g3 = (torch.Generator().manual_seed(s) for s in (4, 4, 5))
    a, b, c = random_rotate(images, 15, g1), random_rotate(images, 15, g2), random_rotate(images, 15, g3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), global_state)  # the global generator is untouched
    # exactly one number per image was drawn, so what follows in the loader stays reproducible
    reference = torch.Generator().manual_seed(4)
    torch.rand(16, generator=reference)
    assert torch.equal(g1.get_state(), reference.get_state())


def test_loader_with_rotation_resumes_from_the_generator_state():
    split = _random_split(n=12)
    aug = Augmentation(crop_padding=2, flip=True, rotate=20)
    loader = Loader(split, 4, mean=MEAN, std=STD, augment=aug, shuffle=True, seed=9)
    list(loader)  # one epoch
    state = loader.generator.get_state()
    second = _epochs(loader, 1)
    resumed = Loader(split, 4, mean=MEAN, std=STD, augment=aug, shuffle=True, seed=0)
    resumed.generator.set_state(state)
    for (xa, ya), (xb, yb) in zip(second, _epochs(resumed, 1), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_rotation_off_leaves_the_loader_unchanged():
    split = _random_split(n=12)
    base = Augmentation(crop_padding=4, flip=True, cutout=8)
    with_zero = Augmentation.parse("crop,flip,cutout,rotate=0")
    assert with_zero == base
    a = _epochs(Loader(split, 4, mean=MEAN, std=STD, augment=base, shuffle=True, seed=2), 1)
    b = _epochs(Loader(split, 4, mean=MEAN, std=STD, augment=with_zero, shuffle=True, seed=2), 1)
    for (xa, _), (xb, _) in zip(a, b, strict=True):
        assert torch.equal(xa, xb)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rotation_runs_on_the_batch_device():
    images = _asymmetric_batch(n=8)
    angles = torch.linspace(-30, 30, 8)
    on_gpu = rotate_batch(images.cuda(), angles)
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.uint8
    assert (on_gpu.cpu().int() - rotate_batch(images, angles).int()).abs().max() <= 1
    split = ImageSplit(images, torch.arange(8))
    aug = Augmentation(crop_padding=4, flip=True, rotate=15)
    x_gpu, _ = next(iter(Loader(split, 8, mean=MEAN, std=STD, augment=aug, seed=1, device="cuda")))
    x_cpu, _ = next(iter(Loader(split, 8, mean=MEAN, std=STD, augment=aug, seed=1)))
    assert x_gpu.device.type == "cuda"
    torch.testing.assert_close(x_gpu.cpu(), x_cpu, atol=1e-3, rtol=0)


def test_default_augmentation_inactive_is_none():
    assert not Augmentation().active
    assert Augmentation.parse("none").describe() == "none"
    assert Augmentation.parse("flip").active


def test_unpickle_of_non_dict(tmp_path):
    fake = write_cifar10(tmp_path)
    with open(fake.folder / "data_batch_1", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(CompresskitError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path, download=False)
