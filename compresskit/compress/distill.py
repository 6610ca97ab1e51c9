"""Knowledge distillation for fine-tuning a compressed model: the student learns from the labels
and from a teacher's softened outputs (Hinton et al., 2015).

    loss = (1 − w) · CE(student, y; label smoothing)
           + w · T² · KL(softmax(teacher / T) ‖ softmax(student / T))

with the KL divergence summed over classes and averaged over the batch (``batchmean``), in nats.
The T² keeps the soft term's gradient on the scale of the hard term's as T changes.
`Distillation` is what `train.fit` takes: the teacher runs in eval mode, without gradients, on the
same (augmented) batch and in the same autocast precision as the student.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compresskit.errors import ParameterError

DEFAULT_TEMPERATURE = 4.0
DEFAULT_WEIGHT = 0.9


def check_distill(temperature: float, weight: float) -> None:
    """Raise `ParameterError` naming the parameter when `temperature` ≤ 0 or `weight` ∉ [0, 1]."""
    if not temperature > 0:
        raise ParameterError(f"{{0}} must be a positive number, e.g. 4; got {temperature}.", "temperature")
    if not 0 <= weight <= 1:
        raise ParameterError(f"{{0}} must be in [0, 1]; got {weight}.", "weight")


def soft_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(softmax(teacher / T) ‖ softmax(student / T)) in nats, summed over classes and averaged
    over the batch; both logits B×classes, computed in float32."""
    return F.kl_div(
        F.log_softmax(student_logits.float() / temperature, dim=1),
        F.log_softmax(teacher_logits.float() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    weight: float = DEFAULT_WEIGHT,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The scalar loss above for logits B×classes and labels B (class indices), float32."""
    hard = F.cross_entropy(student_logits.float(), labels, label_smoothing=label_smoothing)
    soft = soft_kl(student_logits, teacher_logits, temperature)
    return (1 - weight) * hard + weight * temperature**2 * soft


@dataclass
class Distillation:
    """A teacher model (on the student's device) and the loss's temperature T and weight w."""

    teacher: nn.Module
    temperature: float = DEFAULT_TEMPERATURE
    weight: float = DEFAULT_WEIGHT

    def __post_init__(self) -> None:
        check_distill(self.temperature, self.weight)

    def prepare(self, *, channels_last: bool) -> None:
        """Eval mode (batch norm's running statistics, no dropout), in the student's memory format."""
        self.teacher.eval()
        if channels_last:
            self.teacher.to(memory_format=torch.channels_last)

    def loss(
        self,
        student_logits: torch.Tensor,
        x: torch.Tensor,
        labels: torch.Tensor,
        *,
        label_smoothing: float = 0.0,
    ) -> torch.Tensor:
        """`distillation_loss` of the student's logits on batch `x`, the teacher's computed here
        without gradients (under the caller's autocast)."""
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return distillation_loss(
            student_logits,
            teacher_logits,
            labels,
            temperature=self.temperature,
            weight=self.weight,
            label_smoothing=label_smoothing,
        )
