"""The job side of ``--distill`` for ``prune``, ``lowrank`` and ``depth``: load and check the
teacher (``--teacher``, by default the source checkpoint being compressed), record the choice in
the compressed run's ``config.json`` (``compression.distill``), and read it back for ``--resume``
so a resumed run distils from the same teacher with the same temperature and weight."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from compresskit.checkpoint import Checkpoint, load_checkpoint
from compresskit.compress.distill import Distillation
from compresskit.errors import CompresskitError, ParameterError
from compresskit.jobs.anymodel import checkpoint_input_shape, is_convnet, output_count
from compresskit.rundir import RunConfig


@dataclass
class Teacher:
    """The model a compressed run distils from, the checkpoint file it came from, and the loss's
    settings (`Distillation`: the teacher on the job's device)."""

    path: Path
    distillation: Distillation

    def record(self) -> dict:
        """What ``config.json`` keeps (``compression.distill``) for a resume."""
        return {
            "teacher": str(self.path),
            "temperature": self.distillation.temperature,
            "weight": self.distillation.weight,
        }


def open_teacher(
    teacher: str | Path | None,
    *,
    temperature: float,
    weight: float,
    source: Checkpoint,
    source_config: RunConfig,
    device: torch.device,
) -> Teacher:
    """The teacher named by `teacher` (a run directory or .pt; None: the `source` checkpoint),
    built on `device` in eval mode, after checking it fits the source's data: the same outputs,
    input shape, classes and normalisation. Errors name ``--teacher``."""
    if teacher is None:
        ckpt = source
    else:
        try:
            ckpt = load_checkpoint(teacher)
        except ParameterError as exc:  # the loader names its `path`: here that is `teacher`
            names = ("teacher" if name == "path" else name for name in exc.parameters)
            raise ParameterError(exc.template, *names) from None
    where = f"--teacher {ckpt.path}"
    model = ckpt.build(device)
    if is_convnet(ckpt) and is_convnet(source):
        _same_spec_shape(ckpt, source, where)
    else:  # any other model shows its outputs by running on the source's inputs
        want = checkpoint_input_shape(source)
        outputs = output_count(model, want, device, where)
        if outputs != len(source_config.data.classes):
            raise CompresskitError(
                f"{where} has {outputs} outputs for {want[0]}×{want[1]}×{want[2]} inputs, but the model "
                f"being compressed has {len(source_config.data.classes)}."
            )
    record = source_config.data
    for key, expected in (("classes", record.classes), ("mean", record.mean), ("std", record.std)):
        found = ckpt.meta.get(key)
        if found is not None and list(found) != list(expected):
            raise CompresskitError(
                f"{where} was trained with other {key} ({found}) than the source run ({expected}); "
                "give a teacher trained on the same data."
            )
    return Teacher(ckpt.path, Distillation(model, temperature=temperature, weight=weight))


def _same_spec_shape(ckpt: Checkpoint, source: Checkpoint, where: str) -> None:
    spec, want = ckpt.spec, source.spec
    assert spec is not None and want is not None
    shape, wanted_shape = (spec.in_channels, spec.input_size), (want.in_channels, want.input_size)
    if spec.num_classes != want.num_classes or shape != wanted_shape:
        raise CompresskitError(
            f"{where} has {spec.num_classes} outputs for {spec.in_channels}×{spec.input_size}² inputs, but "
            f"the model being compressed has {want.num_classes} for {want.in_channels}×{want.input_size}²."
        )


def recorded_options(config: RunConfig) -> dict:
    """The `JobOptions` distillation fields a compressed run recorded (none when it did not
    distil, or was made before distillation existed)."""
    record = (config.compression or {}).get("distill")
    if not record:
        return {}
    return {
        "distill": True,
        "teacher": record["teacher"],
        "distill_temperature": float(record["temperature"]),
        "distill_weight": float(record["weight"]),
    }
