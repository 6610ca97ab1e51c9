"""One `.pt` file per model: ``{format, version, spec, state_dict, meta}``.

Written atomically (temporary file in the same folder, then `os.replace`) with the permissions the
process umask gives any new file, read with ``torch.load(weights_only=True)``: a checkpoint holds
tensors and plain JSON-like values only, so loading it needs nothing but compresskit and never runs
pickled code.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from compresskit.errors import CompresskitError
from compresskit.models import ConvNet, ModelSpec

FORMAT = "compresskit.checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the spec to rebuild the model, its weights, and free-form metadata."""

    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    path: Path | None = None
    training: dict | None = None  # a `train.TrainingState` as a dict, in resumable ``last.pt`` files only

    def build(self, device: torch.device | str = "cpu") -> ConvNet:
        """The model with these weights, in eval mode, on `device`."""
        model = ConvNet(self.spec)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CompresskitError(
                f"{self.path} has weights that do not fit its own model spec ({first})."
            ) from None
        return model.to(device).eval()


def save_checkpoint(
    path: str | Path,
    spec: ModelSpec,
    weights: nn.Module | dict,
    meta: dict | None = None,
    *,
    training: dict | None = None,
) -> Path:
    """Write a checkpoint atomically; `weights` is a model or a state dict. `training` (tensors and
    plain values, e.g. `train.TrainingState.to_dict()`) makes it a point a run can resume from.
    Returns the path."""
    path = Path(path)
    meta = dict(meta or {})
    try:
        meta = json.loads(json.dumps(meta))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint meta must be JSON-serialisable: {exc}") from None
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in state.items()},
        "meta": meta,
    }
    if training is not None:
        payload["training"] = training
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty, uniquely named ``.NAME.*.tmp`` beside `path`, open for writing: (fd, its path).

    Created with mode 0o666 less the process umask, as ``open()`` creates files (tempfile.mkstemp
    would make it 0o600, and `os.replace` would carry that onto the checkpoint).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary file name beside {path} after 100 tries.")


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its ``checkpoint.pt``; a file means itself."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CompresskitError(
            f"--checkpoint {path} does not exist; give a run directory holding "
            f"{CHECKPOINT_NAME} or a .pt file that compresskit wrote."
        )
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a compresskit checkpoint (file or run directory) without executing pickled code."""
    path = resolve_checkpoint(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise CompresskitError(
            f"--checkpoint {path} is not a compresskit checkpoint (it could not be read as one)."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CompresskitError(f"--checkpoint {path} is not a compresskit checkpoint (no '{FORMAT}' marker).")
    if payload.get("version") != VERSION:
        raise CompresskitError(
            f"--checkpoint {path} has format version {payload.get('version')}; "
            f"this compresskit reads version {VERSION}."
        )
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CompresskitError(f"--checkpoint {path} has no state_dict of tensors.")
    try:
        spec = ModelSpec.from_dict(payload.get("spec"))
    except (CompresskitError, TypeError) as exc:
        raise CompresskitError(f"--checkpoint {path} has an invalid model spec: {exc}") from None
    training = payload.get("training")
    return Checkpoint(spec=spec, state_dict=state, meta=payload.get("meta") or {}, path=path,
                      training=training if isinstance(training, dict) else None)  # fmt: skip
