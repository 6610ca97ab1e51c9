"""Minimal mini-batch trainer for a model with `params` and `loss(X, y=None)`: SGD with momentum or Adam."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class Model(Protocol):
    params: dict[str, np.ndarray]

    def loss(self, X: np.ndarray, y: np.ndarray | None = None) -> Any: ...


def sgd_momentum(
    w: np.ndarray, dw: np.ndarray, state: dict[str, Any], lr: float, momentum: float = 0.9
) -> np.ndarray:
    """v = momentum * v - lr * dw; returns w + v. `state` holds v between calls (created on first)."""
    v = momentum * state.get("v", np.zeros_like(w)) - lr * dw
    state["v"] = v
    return w + v


def adam(
    w: np.ndarray,
    dw: np.ndarray,
    state: dict[str, Any],
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> np.ndarray:
    """Adam (Kingma & Ba) with bias correction; `state` holds m, v and the step count t."""
    t = state.get("t", 0) + 1
    m = beta1 * state.get("m", np.zeros_like(w)) + (1 - beta1) * dw
    v = beta2 * state.get("v", np.zeros_like(w)) + (1 - beta2) * dw**2
    state.update(t=t, m=m, v=v)
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    return w - lr * m_hat / (np.sqrt(v_hat) + eps)


UPDATES = {"sgd_momentum": sgd_momentum, "adam": adam}


def accuracy(model: Model, X: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Fraction of X (N, ...) whose argmax score equals y (N,)."""
    preds = [np.argmax(model.loss(X[i : i + batch_size]), axis=1) for i in range(0, len(X), batch_size)]
    return float(np.mean(np.concatenate(preds) == y))


@dataclass
class History:
    """Per-epoch records: mean training mini-batch loss, train accuracy, validation accuracy."""

    loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)


def train(
    model: Model,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    update: str = "adam",
    lr: float = 1e-3,
    epochs: int = 5,
    batch_size: int = 50,
    seed: int = 0,
    update_kwargs: dict[str, Any] | None = None,
) -> History:
    """Trains `model.params` in place; each epoch visits every training sample once in a seeded shuffle.

    update: 'sgd_momentum' or 'adam'; update_kwargs go to that rule (e.g. momentum, beta1).
    """
    rule = UPDATES[update]
    kwargs = update_kwargs or {}
    states: dict[str, dict[str, Any]] = {name: {} for name in model.params}
    rng = np.random.default_rng(seed)
    history = History()
    n = len(X_train)
    for _ in range(epochs):
        order = rng.permutation(n)
        losses = []
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss, grads = model.loss(X_train[idx], y_train[idx])
            losses.append(loss)
            for name, w in model.params.items():
                model.params[name] = rule(w, grads[name], states[name], lr, **kwargs)
        history.loss.append(float(np.mean(losses)))
        history.train_acc.append(accuracy(model, X_train, y_train))
        history.val_acc.append(accuracy(model, X_val, y_val))
    return history
