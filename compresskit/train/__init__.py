"""The one training loop: optimizer, LR schedule, label smoothing, mixed precision, early stop,
best-by-validation selection, per-epoch history and an exact resume from any finished epoch
(`TrainingState`). Fine-tuning and layer-wise training reuse it.

- `config`: `TrainConfig` (every flag checked by `validate`), `make_optimizer`, `lr_factor`.
- `precision`: `resolve_device`, `resolve_precision` (bf16 autocast where native,
  `cpu_supports_bf16`), `Precision`, `as_input` (channels_last batches).
- `inference`: `evaluate`, `predict` (with test-time augmentation, `tta_logits`).
- `state`: `TrainingState` and `capture_rng` / `restore_rng` (what a resume continues from),
  `FitResult`.
- `loop`: `fit`, the epoch loop.

A test that replaces a name (``monkeypatch.setattr``) patches the module that looks it up:
`resolve_precision` finds `cpu_supports_bf16` in `precision`, `fit` finds `evaluate` in `loop`.
"""

from compresskit.train.config import (
    OPTIMIZERS,
    PATIENCE_METRICS,
    SCHEDULES,
    TrainConfig,
    lr_factor,
    make_optimizer,
)
from compresskit.train.inference import TTA_MODES, check_tta, evaluate, predict, tta_logits
from compresskit.train.loop import HISTORY_COLUMNS, fit, format_epoch
from compresskit.train.precision import (
    PRECISIONS,
    Precision,
    as_input,
    cpu_supports_bf16,
    resolve_device,
    resolve_precision,
)
from compresskit.train.state import FitResult, TrainingState, capture_rng, restore_rng

__all__ = [
    "HISTORY_COLUMNS",
    "OPTIMIZERS",
    "PATIENCE_METRICS",
    "PRECISIONS",
    "SCHEDULES",
    "TTA_MODES",
    "FitResult",
    "Precision",
    "TrainConfig",
    "TrainingState",
    "as_input",
    "capture_rng",
    "check_tta",
    "cpu_supports_bf16",
    "evaluate",
    "fit",
    "format_epoch",
    "lr_factor",
    "make_optimizer",
    "predict",
    "resolve_device",
    "resolve_precision",
    "restore_rng",
    "tta_logits",
]
