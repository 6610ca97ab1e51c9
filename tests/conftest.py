"""Shared fixtures. The fake-data writers live in tests/fakedata.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fakedata import FakeCifar, write_cifar10

# The models in these tests are tiny: one intra-op thread is as fast as several, and it avoids
# the large slowdowns of spinning worker threads on a machine whose cores are busy elsewhere.
torch.set_num_threads(1)


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> tuple[Path, FakeCifar]:
    root = tmp_path / "cifar10"
    return root, write_cifar10(root)
