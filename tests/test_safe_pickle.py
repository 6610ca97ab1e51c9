"""Data pickles load through an allow-list: numpy arrays and plain data in, never code."""

from __future__ import annotations

import builtins
import os
import pathlib
import pickle
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from compresskit.cli import app
from compresskit.data import load_dataset
from compresskit.data.safe_pickle import load_pickle
from compresskit.errors import CompresskitError
from tests.fakedata import write_cifar10, write_pickle


def _plain_data() -> dict:
    return {
        "data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 251,
        "fortran": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        "strided": np.arange(20, dtype=np.int16)[::3],
        "structured": np.array([(1, 2.5), (3, -1.0)], dtype=[("a", "<i4"), ("b", "<f8")]),
        "big_endian": np.arange(4, dtype=">u4"),
        "scalars": [np.int64(7), np.float32(0.5), np.uint8(255), np.bool_(True)],
        "labels": [0, 1],
        "names": ["plane", "car", b"raw bytes", "ünïcode"],
        "others": ({1, 2}, frozenset({"x"}), bytearray(b"ab"), None, True, 2.5, 2**70),
    }


def _assert_same(got: object, want: object) -> None:
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys()
        for key in want:
            _assert_same(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            _assert_same(a, b)
    else:
        assert type(got) is type(want) and got == want


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_numpy_arrays_and_plain_data_load_in_every_protocol(tmp_path, protocol):
    """What the allow-list reads equals what plain pickle reads (numpy itself turns a big-endian
    dtype native below protocol 5, so plain pickle is the reference, not the original object)."""
    raw = pickle.dumps(_plain_data(), protocol=protocol)
    path = tmp_path / "batch"
    path.write_bytes(raw)
    _assert_same(load_pickle(path), pickle.loads(raw, encoding="latin1"))
    np.testing.assert_array_equal(load_pickle(path)["big_endian"], np.arange(4))


class _Payload:
    """Unpickling this calls `call(*args)`: what a crafted data file would do."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _payloads(marker: Path) -> dict[str, _Payload]:
    return {
        "os.system": _Payload(os.system, (f"touch '{marker}'",)),
        "Path.touch": _Payload(pathlib.Path.touch, (pathlib.Path(marker),)),
        "builtins.exec": _Payload(builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
    }


@pytest.mark.parametrize("payload", ["os.system", "Path.touch", "builtins.exec"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_a_crafted_cifar_batch_is_refused_without_running(tmp_path, payload, protocol):
    fake = write_cifar10(tmp_path)
    marker = tmp_path / "payload-ran"
    crafted = {"data": _payloads(marker)[payload], "labels": [0]}
    (fake.folder / "data_batch_1").write_bytes(pickle.dumps(crafted, protocol=protocol))
    with pytest.raises(CompresskitError) as info:
        load_dataset("cifar10", tmp_path, download=False)
    message = str(info.value)
    assert str(fake.folder / "data_batch_1") in message
    assert "global" in message and "\n" not in message
    assert not marker.exists()
    # the file really is dangerous: a plain pickle.load runs it
    with open(fake.folder / "data_batch_1", "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_the_refusal_names_the_global(tmp_path):
    path = tmp_path / "meta"
    path.write_bytes(pickle.dumps(_Payload(os.system, ("true",)), protocol=2))
    with pytest.raises(CompresskitError, match=rf"{os.name}\.system"):
        load_pickle(path, "CIFAR-10 meta")


def test_codecs_encode_is_latin1_only(tmp_path):
    # protocol 2 spells b"x" as _codecs.encode("x", "latin1"); any other codec is refused
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(CompresskitError, match="rot13"):
        load_pickle(path)
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x06\x00\x00\x00latin1\x86R.")
    assert load_pickle(path) == b"x"


def test_cli_refuses_a_crafted_batch_with_exit_2(tmp_path):
    fake = write_cifar10(tmp_path / "data")
    marker = tmp_path / "payload-ran"
    write_pickle(fake.folder / "data_batch_1", {"data": _payloads(marker)["os.system"], "labels": [0]})
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--no-download",
         "--model", "cnn", "--width", "0.25", "--epochs", "1", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:")
    assert "data_batch_1" in result.stderr and "system" in result.stderr
    assert not marker.exists()
    assert not out.exists()
