"""Data-parallel training under torchrun: 2 CPU processes (gloo, one thread each) against one.

Why two processes do not reproduce one process bit for bit, and what is compared instead:

* The gradient is averaged by an all-reduce over the ranks: the global batch's mean gradient is
  summed in a different order than one process sums it, so float32 results differ in the last
  bits, and these differences grow a little over the steps. Without batch norm (``cnn``) the loss
  per epoch agrees to ``NO_BN_RTOL`` (relative).
* Batch norm normalises each rank's share of the batch with that share's own statistics (unless
  ``--sync-bn``, which torch supports on CUDA only), which is a different function of the data
  than one process's statistics over the whole batch: ``cnn_bn`` agrees only to ``BN_RTOL``.

Everything else (the shuffled order, the shards, the augmentation's random numbers, the weights
at the start) is the same, which the loader tests below check exactly. Two runs with the same
number of processes are deterministic, so a run interrupted and resumed under torchrun must
equal the run left alone exactly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from compresskit import distributed
from compresskit.checkpoint import load_checkpoint
from compresskit.cli import app
from compresskit.data import Augmentation, ImageSplit, Loader
from compresskit.models import build_model, make_spec

pytestmark = pytest.mark.slow  # torchrun processes

NO_BN_RTOL = 1e-4
BN_RTOL = 0.1
# fp32 on every CPU: on one with native bf16, `--precision auto` would add bf16 autocast, whose
# rounding differs far more between the two summation orders than float32's does.
COMMON = ["--dataset", "synthetic", "--width", "0.5", "--batch-size", "32", "--epochs", "2",
          "--lr", "0.01", "--precision", "fp32", "--quiet"]  # fmt: skip
PLAIN = ["train", "--model", "cnn", *COMMON]
WITH_BN = ["train", "--model", "cnn_bn", "--dropout", "0.2", "--head", "mlp", *COMMON]
STEPS_PER_EPOCH = 6  # 172 synthetic training images in global batches of 32
RUN_FILES = {
    "run.json",
    "config.json",
    "last.pt",
    "history.csv",
    "curves.png",
    "checkpoint.pt",
    "summary.json",
}

# Runs the CLI in one torchrun worker. A rank other than 0 records every write it makes under
# the test's folder (an audit hook sees each open for writing, rename and mkdir) into
# writes-RANK.json; with KILL_AT > 0 every rank sends itself SIGINT before its training batch
# KILL_AT (counted over the run), as Ctrl-C in a terminal reaches every process of the group.
WORKER = textwrap.dedent("""
    import json, os, signal, sys
    watched, kill_at = os.path.abspath(sys.argv[1]), int(sys.argv[2])
    rank = int(os.environ["RANK"])
    writes, recording = [], [True]

    def audit(event, args):
        if not recording[0] or event not in ("open", "os.rename", "os.mkdir", "os.remove"):
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if not writing or not isinstance(path, (str, bytes, os.PathLike)):
                return
        else:
            path = args[0]
        path = os.path.abspath(os.fsdecode(path))
        if path.startswith(watched):
            writes.append([event, path])

    if rank:
        sys.addaudithook(audit)
    if kill_at:
        from compresskit import data
        original, seen = data.Loader.__iter__, [0]

        def batches_then_signal(self):
            for batch in original(self):
                if self.shuffle:
                    seen[0] += 1
                    if seen[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGINT)
                yield batch

        data.Loader.__iter__ = batches_then_signal
    from compresskit.cli import main
    sys.argv = ["compresskit", *sys.argv[3:]]
    try:
        main()
    finally:
        recording[0] = False
        if rank:
            with open(os.path.join(watched, f"writes-{rank}.json"), "w") as f:
                json.dump(writes, f)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_thread_env(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", **extra}


def torchrun(folder: Path, args: list, *, kill_at: int = 0) -> subprocess.CompletedProcess:
    """`compresskit ARGS` in 2 processes on 127.0.0.1 (a free port), each through `WORKER`."""
    script = folder / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               str(script), str(folder), str(kill_at), *map(str, args)]  # fmt: skip
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=folder, env=one_thread_env()
    )


def history(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "history.csv").drop(columns="seconds")


def rank1_writes(folder: Path) -> list:
    return json.loads((folder / "writes-1.json").read_text())


@pytest.fixture(scope="module")
def plain_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(one process, two processes, the two-process test folder): ``cnn`` without batch norm."""
    folder = tmp_path_factory.mktemp("plain")
    single = folder / "single"
    assert CliRunner().invoke(app, [*PLAIN, "--out", str(single)]).exit_code == 0
    result = torchrun(folder, [*PLAIN, "--out", folder / "ddp"])
    assert result.returncode == 0, result.stderr[-3000:]
    return single, folder / "ddp", folder


def test_two_processes_match_one_process_up_to_summation_order(plain_runs):
    single, ddp, _ = plain_runs
    one, two = history(single), history(ddp)
    assert list(one["epoch"]) == list(two["epoch"]) == [1, 2]
    for column in ("train_loss", "val_loss"):
        assert two[column].to_numpy() == pytest.approx(one[column].to_numpy(), rel=NO_BN_RTOL), column
    # accuracies count whole images: the same images, so the same counts
    for column in ("train_acc", "val_acc"):
        assert two[column].to_numpy() == pytest.approx(one[column].to_numpy(), abs=1e-6), column
    test_one = json.loads((single / "summary.json").read_text())
    test_two = json.loads((ddp / "summary.json").read_text())
    assert test_two["test_loss"] == pytest.approx(test_one["test_loss"], rel=NO_BN_RTOL)
    assert test_two["world_size"] == 2
    assert json.loads((ddp / "config.json").read_text())["world_size"] == 2


def test_only_rank_0_writes_the_run_directory(plain_runs):
    _, ddp, folder = plain_runs
    assert {p.name for p in ddp.iterdir()} == RUN_FILES
    assert rank1_writes(folder) == []
    marker = json.loads((ddp / "run.json").read_text())
    assert marker["state"] == "finished"


def test_two_processes_resume_after_an_interruption_exactly(tmp_path):
    alone, stopped = tmp_path / "alone", tmp_path / "stopped"
    result = torchrun(tmp_path, [*WITH_BN, "--out", alone])
    assert result.returncode == 0, result.stderr[-3000:]
    assert rank1_writes(tmp_path) == []
    result = torchrun(tmp_path, [*WITH_BN, "--out", stopped], kill_at=STEPS_PER_EPOCH + 2)
    assert result.returncode != 0
    assert json.loads((stopped / "run.json").read_text())["state"] == "interrupted"
    last = load_checkpoint(stopped / "last.pt")
    assert last.meta["epoch"] == 1 and len(last.training["rng"]["ranks"]) == 2
    assert not (stopped / "summary.json").exists()
    result = torchrun(tmp_path, ["train", "--resume", stopped])
    assert result.returncode == 0, result.stderr[-3000:]
    assert rank1_writes(tmp_path) == []
    pd.testing.assert_frame_equal(history(stopped), history(alone), check_exact=True)
    for name in ("checkpoint.pt", "last.pt"):
        left, right = load_checkpoint(stopped / name).state_dict, load_checkpoint(alone / name).state_dict
        assert all(torch.equal(left[k], right[k]) for k in left), name
    # with batch norm per shard the run still follows one process's closely
    single = tmp_path / "single"
    assert CliRunner().invoke(app, [*WITH_BN, "--out", str(single)]).exit_code == 0
    one, two = history(single), history(alone)
    assert two["train_loss"].to_numpy() == pytest.approx(one["train_loss"].to_numpy(), rel=BN_RTOL)


def run_as_rank_0_of_2(args: list, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI as torchrun's rank 0 of 2 would start it; every check here comes before joining the
    process group, so no other rank is needed."""
    env = one_thread_env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                         MASTER_PORT=str(free_port()))  # fmt: skip
    command = [sys.executable, "-m", "compresskit", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_a_batch_size_the_processes_cannot_split_is_refused(tmp_path):
    result = run_as_rank_0_of_2([*PLAIN, "--batch-size", "33", "--out", tmp_path / "run"], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "--batch-size 33 is not divisible by the 2 processes" in lines[0]
    assert not (tmp_path / "run").exists()


def test_sync_bn_is_refused_without_torchrun_and_on_the_cpu(tmp_path):
    alone = CliRunner().invoke(app, [*WITH_BN, "--sync-bn", "--out", str(tmp_path / "a")])
    assert alone.exit_code == 2 and "--sync-bn" in alone.output and "torchrun" in alone.output
    on_cpu = run_as_rank_0_of_2([*WITH_BN, "--sync-bn", "--device", "cpu", "--out", tmp_path / "b"], tmp_path)
    assert on_cpu.returncode == 2 and len(on_cpu.stderr.strip().splitlines()) == 1
    assert "--sync-bn needs CUDA" in on_cpu.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- in one process


def images(n: int) -> ImageSplit:
    g = torch.Generator().manual_seed(3)
    return ImageSplit(
        torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(n) % 4
    )


@pytest.mark.parametrize("n", [70, 64, 65])
def test_sharded_loaders_cut_the_single_loaders_batches(n):
    """Every global batch (order and augmentation) is one loader's batch; shards are disjoint and
    cover it; the generators stay in step on every rank."""
    split = images(n)
    augment = Augmentation(crop_padding=4, flip=True, cutout=8, jitter=0.4, rotate=15)
    kwargs = {"mean": (0.5,) * 3, "std": (0.25,) * 3, "augment": augment, "shuffle": True, "seed": 7}
    one = Loader(split, 16, **kwargs)
    ranks = [Loader(split, 16, **kwargs, rank=r, world_size=3) for r in range(3)]
    # a last global batch smaller than the number of ranks is dropped by every rank alike (and
    # its augmentation not drawn: one process's next epoch is then shuffled differently)
    dropped = bool(n % 16) and n % 16 < 3
    assert len(ranks[0]) == len(one) - dropped
    for _ in range(1 if dropped else 2):  # two epochs: reshuffled alike
        whole = list(one)
        parts = [list(loader) for loader in ranks]
        assert len(parts[0]) == len(parts[1]) == len(parts[2]) == len(ranks[0])
        for i, shares in enumerate(zip(*parts, strict=True)):
            x = torch.cat([s[0] for s in shares])
            y = torch.cat([s[1] for s in shares])
            assert torch.equal(y, whole[i][1]) and torch.allclose(x, whole[i][0], atol=1e-4)
            assert [len(s[1]) for s in shares] == [
                len(whole[i][1][distributed.shard(len(y), r, 3)]) for r in range(3)
            ]
    states = [loader.generator.get_state() for loader in ranks]
    assert all(torch.equal(states[0], s) for s in states)


def test_sharded_evaluation_loaders_keep_every_image_once():
    split = images(37)
    loaders = [Loader(split, 16, mean=(0.5,) * 3, std=(0.25,) * 3, rank=r, world_size=4) for r in range(4)]
    labels = torch.cat([y for loader in loaders for _, y in loader])
    assert sorted(labels.tolist()) == sorted(split.labels.tolist()) and len(labels) == 37


@pytest.mark.parametrize("n,parts", [(10, 3), (2, 4), (0, 2), (16, 2)])
def test_shards_are_disjoint_even_and_complete(n, parts):
    slices = [distributed.shard(n, r, parts) for r in range(parts)]
    covered = [i for s in slices for i in range(n)[s]]
    assert covered == list(range(n))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1


def test_sync_batchnorm_conversion_round_trips_the_same_tensors():
    model = build_model(make_spec("cnn_bn", 4, in_channels=3, width=0.25), seed=0)
    before = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    distributed.to_sync_batchnorm(model)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    distributed.from_sync_batchnorm(model)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    after = model.state_dict(keep_vars=True)
    assert before.keys() == after.keys() and all(before[k] is after[k] for k in before)


def test_without_torchrun_everything_is_one_process(monkeypatch):
    for name in distributed.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.init_from_env(torch.device("cpu")) is False
    t = torch.ones(3)
    assert torch.equal(distributed.all_reduce_sum(t), torch.ones(3))
    distributed.check_batch_size(33)  # anything goes in one process


def test_compression_fine_tunes_under_torchrun_and_only_rank_0_writes(plain_runs):
    single, _, folder = plain_runs
    out = folder / "lowrank"
    args = ["lowrank", "--checkpoint", single, "--out", out, "--finetune-epochs", "2",
            "--bench-seconds", "0.01", "--quiet"]  # fmt: skip
    result = torchrun(folder, args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert rank1_writes(folder) == []
    assert json.loads((out / "run.json").read_text())["state"] == "finished"
    assert len(history(out)) == 2 and (out / "report.md").is_file() and (out / "factorized.pt").is_file()
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
