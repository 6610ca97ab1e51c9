"""The run directory: the one place that knows what a run directory holds and how it is written.

Every folder a compresskit command makes carries a ``run.json`` marker: which command made it, its
state (``running``, ``finished``, ``interrupted``, ``failed``) and when. The marker is how a later
command recognises its own output: ``--overwrite`` may replace a folder only when the marker says
the same command made it and the folder holds none of the command's inputs. Nothing else is ever
removed.

A training or compressed run also holds ``config.json``, a `RunConfig`: the model, the data (with
the train/validation split recorded as seed, counts and a hash of the validation indices, checked
whenever the split is rebuilt, and the normalisation statistics), the training or fine-tuning
settings, the compression settings and the lineage. `RunConfig` round-trips JSON; reading a folder
that lacks what a command needs is a `CompresskitError` naming the file, never a silent default.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import torch

from compresskit import __version__
from compresskit.data import stratified_split
from compresskit.errors import CompresskitError, ParameterError

RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
STATES = ("running", "finished", "interrupted", "failed")
RUN_COMMANDS = ("train", "prune", "lowrank", "depth", "import")


# --------------------------------------------------------------------------- small atomic writers


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and `os.replace`, with
    the permissions the process umask gives a new file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, data: dict) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- the run.json marker


@dataclass
class RunMarker:
    """The content of ``run.json``. Times are seconds since the epoch (UTC)."""

    command: str
    state: str
    compresskit: str = __version__
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    message: str = ""
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)  # the process that last set the state


def read_marker(folder: Path) -> RunMarker | None:
    """The marker of `folder`, or None when it has none (or one compresskit cannot read)."""
    try:
        data = json.loads((Path(folder) / RUN_FILE).read_text())
        optional = ("compresskit", "created", "updated", "message", "host", "pid")
        return RunMarker(data["command"], data["state"], **{k: data[k] for k in optional if k in data})
    except (OSError, ValueError, TypeError, KeyError):
        return None


def set_state(folder: Path, state: str, message: str = "") -> RunMarker:
    """Record `state` in `folder`'s marker (which must exist) and return it."""
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}; one of {STATES}")
    marker = read_marker(folder)
    if marker is None:
        raise CompresskitError(f"{folder} has no {RUN_FILE}; it is not a compresskit run directory.")
    marker.state, marker.updated, marker.message = state, time.time(), message
    marker.host, marker.pid = socket.gethostname(), os.getpid()
    write_json(Path(folder) / RUN_FILE, asdict(marker))
    return marker


def check_resumable(folder: Path, command: str) -> RunMarker:
    """The marker of `folder` if `command` may continue it: a `command` run that has not finished
    and whose process (when it says ``running`` on this host) is gone; else a clear error."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None or marker.command != command:
        made = f"no {RUN_FILE}" if marker is None else f"a {marker.command} run"
        raise ParameterError(f"{{0}} {folder} is not a compresskit {command} run directory ({made}).", "run")
    if marker.state == "finished":
        raise ParameterError(f"{{0}} {folder} has already finished; there is nothing to continue.", "run")
    if marker.state == "running" and marker.host == socket.gethostname() and _alive(marker.pid):
        raise ParameterError(f"{{0}} {folder} is still running (process {marker.pid}); stop it first.", "run")
    return marker


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this very process: an earlier call in it that did not finish
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_output(out: Path, command: str, *, overwrite: bool, inputs: Sequence[Path] = ()) -> None:
    """Refuse an output folder `command` may not write. Allowed: a path that does not exist, an
    empty folder, or, with `overwrite`, a folder whose marker says `command` made it and that holds
    none of `inputs` (nor is it, or a folder above, one of them). Nothing is touched here."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ParameterError(f"{{0}} {out} exists and is not a directory; choose a new folder.", "out")
    for given in inputs:
        if _inside(Path(given), out):
            raise ParameterError(
                f"{{0}} {out} holds or is one of this command's inputs ({given}); choose a new folder.", "out"
            )
    if not out.is_dir() or not any(out.iterdir()):
        return
    marker = read_marker(out)
    if marker is None or marker.command != command:
        made_by = "something other than compresskit" if marker is None else f"compresskit {marker.command}"
        raise ParameterError(
            f"{{0}} {out} already exists and was made by {made_by}; compresskit {command} only "
            "writes to a new folder (or, with {1}, replaces its own earlier output).",
            "out", "overwrite",
        )  # fmt: skip
    if not overwrite:
        raise ParameterError(
            f"{{0}} {out} already holds an earlier {command} output; choose a new folder, or replace it "
            "with {1}.",
            "out", "overwrite",
        )  # fmt: skip


def create_output(out: Path, command: str, *, overwrite: bool, inputs: Sequence[Path] = ()) -> Path:
    """Make `out` for `command` (after `check_output`), replacing an earlier output of the same
    command when `overwrite`; write its marker with state ``running``."""
    out = Path(out)
    check_output(out, command, overwrite=overwrite, inputs=inputs)
    if out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)  # check_output proved it is this command's own earlier output
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RUN_FILE, asdict(RunMarker(command=command, state="running")))
    return out


def replace_own_folder(folder: Path, command: str, staging: Path) -> None:
    """Put the finished `staging` folder (with its marker) in place of `folder`, which must be
    absent, empty (then `staging`'s files move into it), or an earlier output of `command`
    (refused otherwise, before anything moves)."""
    folder = Path(folder)
    if folder.is_dir() and not any(folder.iterdir()):
        for item in staging.iterdir():
            item.rename(folder / item.name)
        staging.rmdir()
        return
    if folder.exists():
        marker = read_marker(folder)
        if not folder.is_dir() or marker is None or marker.command != command:
            raise CompresskitError(
                f"{folder} exists and is not an earlier output of compresskit {command}; "
                "move it away and run again."
            )
        shutil.rmtree(folder)  # proved above to be this command's own earlier output
    staging.rename(folder)


@contextmanager
def staged_output(folder: Path, command: str) -> Iterator[Path]:
    """Yield a new hidden staging folder beside `folder`; when the body succeeds, mark it as
    `command`'s finished output and put it in place of `folder` (`replace_own_folder`); on any
    error remove the staging folder, so `folder` is never half-written."""
    folder = Path(folder)
    check_derived_folder(folder, command)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        write_json(staging / RUN_FILE, asdict(RunMarker(command=command, state="finished")))
        replace_own_folder(folder, command, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_derived_folder(folder: Path, command: str) -> None:
    """Refuse early when `folder` (e.g. ``RUN/analysis``) exists but is not `command`'s output."""
    if folder.exists() and (
        not folder.is_dir()
        or (any(folder.iterdir()) and getattr(read_marker(folder), "command", None) != command)
    ):
        raise CompresskitError(
            f"{folder} exists and was not written by compresskit {command}; move it away and run again."
        )


# --------------------------------------------------------------------------- the typed config


@dataclass
class SplitRecord:
    """The train/validation split of a run: rebuilt from `seed` and `val_fraction` by
    `data.stratified_split`, and checked against the counts and the SHA-256 of the validation
    indices (int64, little-endian, sorted) recorded when the run was made."""

    val_fraction: float
    seed: int
    train_count: int
    val_count: int
    val_hash: str

    @classmethod
    def make(cls, labels: torch.Tensor, val_fraction: float, seed: int) -> SplitRecord:
        keep, held = stratified_split(labels, val_fraction, seed)
        return cls(val_fraction, seed, len(keep), len(held), _hash(held))

    def indices(self, labels: torch.Tensor, where: str = "the run") -> tuple[torch.Tensor, torch.Tensor]:
        """(train, validation) indices into `labels`, rebuilt and checked against the record."""
        keep, held = stratified_split(labels, self.val_fraction, self.seed)
        if (len(keep), len(held)) != (self.train_count, self.val_count) or _hash(held) != self.val_hash:
            raise ParameterError(
                f"{where} records a {self.train_count}/{self.val_count} train/validation split that the "
                f"dataset found now does not reproduce (got {len(keep)}/{len(held)}, or other images); "
                "point {0} at the data the run was trained on.",
                "data_dir",
            )
        return keep, held


def _hash(indices: torch.Tensor) -> str:
    array = indices.to(torch.int64).sort().values.numpy().astype("<i8")
    return hashlib.sha256(array.tobytes()).hexdigest()


@dataclass
class DataRecord:
    """Which data a run used: dataset name and folder, the training augmentation (its
    `Augmentation.describe()` text), the split, class names, and the per-channel mean/std
    (fractions of 255) that normalise every batch.

    `image_size` is the side (pixels) every image was resized to. `val_folder` is None when the
    validation images are held out of train (`split`); for a dataset with its own validation
    split (an image folder's ``val/``) it records that split as ``{"count": N, "labels_sha256":
    hex}`` (SHA-256 of its labels, int64 little-endian, in file order) and `split` holds nothing
    out (``val_fraction`` 0)."""

    dataset: str
    data_dir: str | None
    augment: str
    split: SplitRecord
    classes: list[str]
    mean: list[float]
    std: list[float]
    test_count: int
    labels: str = "fine"  # the label set (`data.LABEL_SETS`): CIFAR-100's coarse superclasses or fine
    image_size: int = 32
    val_folder: dict | None = None


@dataclass
class ModelRecord:
    """How the model was asked for (name, width, head, dropout, global pool) and the exact spec
    (`ModelSpec.to_dict()`) it ended up with; for any other model (``train --model torchvision:NAME``,
    ``import``) the factory it is built by (`architecture`)."""

    name: str
    width: float
    head: str
    dropout: float
    global_pool: bool
    spec: dict
    parameters: int
    init: str = "kaiming"  # how the weights were initialised (`models.INITS`)
    # A model compresskit's ConvNet is not: its `architecture.Architecture.to_dict()` ({factory,
    # kwargs}), `spec` then empty; None for a ConvNet, which `spec` describes.
    architecture: dict | None = None


@dataclass
class RunConfig:
    """``config.json`` of a training (``command="train"``) or compressed run (prune, lowrank,
    depth). For a compressed run `data` is copied from its source, so the fine-tuning validates on
    exactly the images the source held out; `train` holds the fine-tuning settings, `compression`
    the method's own, `source` the checkpoint it started from and `lineage` every step so far."""

    command: str
    model: ModelRecord
    data: DataRecord
    train: dict
    layerwise: dict | None = None
    compression: dict | None = None
    source: str | None = None
    lineage: list[str] = field(default_factory=list)
    device: str = "cpu"
    precision: str = "fp32"  # what --precision resolved to on `device` (`train.Precision.describe`)
    tensorboard: bool = False  # TensorBoard event files in RUN/tensorboard/
    threads: int = 1
    versions: dict = field(default_factory=dict)
    world_size: int = 1  # processes that trained it (torchrun), each with its share of every batch

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, where: str = "config.json") -> RunConfig:
        if not isinstance(data, dict):
            raise CompresskitError(f"{where} is not a JSON object.")
        try:
            values = _typed(cls, data, where)
            values["model"] = ModelRecord(**_typed(ModelRecord, data["model"], f"{where} (model)"))
            record = _typed(DataRecord, data["data"], f"{where} (data)")
            record["split"] = SplitRecord(**_typed(SplitRecord, record["split"], f"{where} (data.split)"))
            values["data"] = DataRecord(**record)
        except TypeError as exc:
            raise CompresskitError(f"{where} is not a compresskit run configuration ({exc}).") from None
        if values["command"] not in RUN_COMMANDS:
            raise CompresskitError(
                f"{where} names command {values['command']!r}; expected one of {', '.join(RUN_COMMANDS)}."
            )
        return cls(**values)


def _typed(cls: type, data: object, where: str) -> dict:
    if not isinstance(data, dict):
        raise CompresskitError(f"{where} is not a JSON object.")
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise CompresskitError(
            f"{where} lacks {', '.join(missing)}; it was not written by this compresskit version "
            "(re-create the run, or upgrade it with experiments/migrate_results.py)."
        )
    return {k: v for k, v in data.items() if k in names}


def write_config(folder: Path, config: RunConfig) -> Path:
    return write_json(Path(folder) / CONFIG_FILE, config.to_dict())


def read_config(folder: Path) -> RunConfig:
    """The `RunConfig` of run directory `folder`; a clear error when it has none."""
    path = Path(folder) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CompresskitError(
            f"{folder} has no {CONFIG_FILE}; give a run directory made by compresskit train, prune, "
            "lowrank or depth (or a checkpoint inside one)."
        ) from None
    except (OSError, ValueError) as exc:
        raise CompresskitError(f"{path} could not be read as JSON ({exc}).") from None
    return RunConfig.from_dict(data, str(path))


def read_summary(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
