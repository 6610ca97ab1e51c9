"""One `.pt` file per model, in one of two formats.

* Version 1 (`save_checkpoint`, what every run writes): ``{format, version, spec, state_dict, meta
  [, training]}``; the model is ``ConvNet(spec)``.
* Version 2 (`save_model_checkpoint`, behind `compresskit.model_io.save`): ``{format, version,
  architecture, edits, state_dict, meta[, training]}``; ``architecture`` is ``{spec}`` or
  ``{factory, kwargs}`` (`compresskit.architecture`), ``edits`` the modules compression rebuilt
  (`compresskit.edits`). The model is the architecture with every edit applied; a factory is
  imported only from a trusted module or when the caller names it (``trust_factory``).

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

from compresskit.architecture import Architecture, Trust
from compresskit.edits import apply_edits, check_edits
from compresskit.errors import CompresskitError, ParameterError
from compresskit.models import ConvNet, ModelSpec

FORMAT = "compresskit.checkpoint"
VERSION = 1  # written by save_checkpoint: a ConvNet spec
ARCHITECTURE_VERSION = 2  # written by save_model_checkpoint: a spec or factory, plus edits
READABLE_VERSIONS = (VERSION, ARCHITECTURE_VERSION)
CHECKPOINT_NAME = "checkpoint.pt"
ARCHITECTURE_ATTR = "_compresskit_architecture"  # on a model built from a version-2 checkpoint


@dataclass
class Checkpoint:
    """A loaded checkpoint: the spec to rebuild the model, its weights, and free-form metadata.

    A version-2 checkpoint built by a factory has no `spec` but a `factory` and `factory_kwargs`;
    `edits` (version 2 only) are the modules compression rebuilt, replayed by `build`."""

    spec: ModelSpec | None
    state_dict: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    path: Path | None = None
    training: dict | None = None  # a `train.TrainingState` as a dict, in resumable ``last.pt`` files only
    factory: str | None = None
    factory_kwargs: dict = field(default_factory=dict)
    edits: list[dict] = field(default_factory=list)
    version: int = VERSION

    @property
    def architecture(self) -> Architecture:
        return Architecture(spec=self.spec, factory=self.factory, kwargs=self.factory_kwargs)

    def build(self, device: torch.device | str = "cpu", *, trust_factory: Trust = None) -> nn.Module:
        """The model with these weights, in eval mode, on `device`: ``ConvNet(spec)``, or for version 2
        the architecture (a factory outside the trusted modules only when named in `trust_factory`)
        with every edit applied. Modules rebuilt by an edit are marked as edited and the model
        remembers its architecture, so `compresskit.model_io.save` can write it again as it is."""
        if self.version == VERSION:
            model: nn.Module = ConvNet(self.spec)  # type: ignore[arg-type]
        else:
            where = f"checkpoint {self.path}"
            model = self.architecture.build(trust_factory=trust_factory, where=where)
            apply_edits(model, self.edits, where)
            model.__dict__[ARCHITECTURE_ATTR] = self.architecture
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            what = "its own model spec" if self.version == VERSION else "its architecture and edits"
            raise CompresskitError(f"{self.path} has weights that do not fit {what} ({first}).") from None
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
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.to_dict(),
        "state_dict": _cpu_state(weights),
        "meta": _json_meta(meta),
    }
    if training is not None:
        payload["training"] = training
    return _write(Path(path), payload)


def save_model_checkpoint(
    path: str | Path,
    architecture: Architecture,
    edits: list[dict],
    weights: nn.Module | dict,
    meta: dict | None = None,
    *,
    training: dict | None = None,
) -> Path:
    """Write a version-2 checkpoint atomically: `architecture` (spec or factory), the `edits` that
    turn it into the saved model (`compresskit.edits.recorded_edits`), its weights and JSON `meta`;
    `training` as for `save_checkpoint` (a resumable ``last.pt``). Checks nothing about the model;
    `compresskit.model_io.save` does. Returns the path."""
    payload = {
        "format": FORMAT,
        "version": ARCHITECTURE_VERSION,
        "architecture": architecture.to_dict(),
        "edits": json.loads(json.dumps(edits)),
        "state_dict": _cpu_state(weights),
        "meta": _json_meta(meta),
    }
    if training is not None:
        payload["training"] = training
    return _write(Path(path), payload)


def _json_meta(meta: dict | None) -> dict:
    try:
        return json.loads(json.dumps(dict(meta or {})))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint meta must be JSON-serialisable: {exc}") from None


def _cpu_state(weights: nn.Module | dict) -> dict[str, torch.Tensor]:
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _write(path: Path, payload: dict) -> Path:
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
        raise ParameterError(
            f"{{0}} {path} does not exist; give a run directory holding "
            f"{CHECKPOINT_NAME} or a .pt file that compresskit wrote.",
            "path",
        )
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a compresskit checkpoint (file or run directory) without executing pickled code."""
    path = resolve_checkpoint(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise ParameterError(
            f"{{0}} {path} is not a compresskit checkpoint (it could not be read as one).", "path"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ParameterError(f"{{0}} {path} is not a compresskit checkpoint (no '{FORMAT}' marker).", "path")
    version = payload.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ParameterError(
            f"{{0}} {path} has format version {version}; "
            f"this compresskit reads versions {', '.join(map(str, READABLE_VERSIONS))}.",
            "path",
        )
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise ParameterError(f"{{0}} {path} has no state_dict of tensors.", "path")
    if version == ARCHITECTURE_VERSION:
        try:  # the records' errors start with `where`: the file, named as the parameter `path`
            where = f"{{0}} {path}"
            arch = Architecture.from_dict(payload.get("architecture"), where)
            edits = check_edits(payload.get("edits"), where)
        except CompresskitError as exc:
            raise ParameterError(str(exc), "path") from None
        training = payload.get("training")
        return Checkpoint(spec=arch.spec, state_dict=state, meta=payload.get("meta") or {}, path=path,
                          factory=arch.factory, factory_kwargs=arch.kwargs, edits=edits,
                          version=ARCHITECTURE_VERSION,
                          training=training if isinstance(training, dict) else None)  # fmt: skip
    try:
        spec = ModelSpec.from_dict(payload.get("spec"))
    except (CompresskitError, TypeError) as exc:
        raise ParameterError(f"{{0}} {path} has an invalid model spec: {exc}", "path") from None
    training = payload.get("training")
    return Checkpoint(spec=spec, state_dict=state, meta=payload.get("meta") or {}, path=path,
                      training=training if isinstance(training, dict) else None)  # fmt: skip
