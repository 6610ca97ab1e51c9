"""What training leaves behind: `TrainingState`, everything `fit` needs to continue after a
finished epoch (with the random states of `capture_rng` / `restore_rng`), and `FitResult`, what a
finished `fit` returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class FitResult:
    """What `fit` returns: the per-epoch history and the best weights (on CPU)."""

    history: list[dict]
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_acc: float | None
    stop_reason: str  # "epochs", "target" or "patience"
    seconds: float = 0.0
    averaged: dict[str, torch.Tensor] | None = None  # with cfg.ema: the last epoch's average (CPU)


@dataclass
class TrainingState:
    """Everything `fit` needs to continue after its last finished epoch, exactly as if it had not
    stopped: the epochs done and their history rows, optimizer and LR-schedule state, the best
    weights so far with their epoch and score, the early-stop counter, the seconds spent, and every
    random state (torch's global generator, numpy's, and the training loader's). All values are
    tensors or plain Python values, so `torch.load(weights_only=True)` reads them back."""

    epoch: int
    history: list[dict]
    optimizer: dict
    schedule: dict
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_score: float
    since_best: int
    seconds: float
    rng: dict
    monitor_best: float | None = None  # best patience_metric so far (None: none yet)
    ema: dict | None = None  # `EMA.to_dict()` when cfg.ema is set (None: no average, or saved before)

    def to_dict(self) -> dict:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict) -> TrainingState:
        """The state `to_dict` gave; a state saved before `monitor_best` existed watched val_acc,
        so its best score is that."""
        values = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        values.setdefault("monitor_best", data["best_score"] if data["best_score"] >= 0 else None)
        return cls(**values)


def capture_rng(loader) -> dict:
    """The random states a resumed run must continue from: torch's global generator (dropout),
    numpy's global generator, and `loader.generator` (order and augmentation) when it has one."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }  # fmt: skip
    if getattr(loader, "generator", None) is not None:
        state["loader"] = loader.generator.get_state()
    return state


def restore_rng(state: dict, loader) -> None:
    """Undo `capture_rng`: put every generator back where it was."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached"]))  # fmt: skip
    if "loader" in state and getattr(loader, "generator", None) is not None:
        loader.generator.set_state(state["loader"])
