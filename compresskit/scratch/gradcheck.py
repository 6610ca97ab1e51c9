"""Centred-difference numerical gradients and the relative error used to compare them with analytic ones."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d f / d x by centred differences, (f(x + h e_i) - f(x - h e_i)) / 2h for every entry i.

    `f` takes no arguments and reads `x`, which is perturbed in place and restored. Use float64: the
    truncation error is O(h^2) and the rounding error O(eps / h), both ~1e-12 at h = 1e-6.
    Returns an array shaped like x.
    """
    grad = np.zeros_like(x, dtype=np.float64)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        plus = f()
        x[i] = old - h
        minus = f()
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def numerical_gradient_array(
    f: Callable[[], np.ndarray], x: np.ndarray, dout: np.ndarray, h: float = 1e-6
) -> np.ndarray:
    """Gradient of the scalar sum(f() * dout) with respect to x: what a backward given `dout` must return."""
    return numerical_gradient(lambda: float(np.sum(f() * dout)), x, h)


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / (||a|| + ||b||) in the 2-norm; 0 when both are zero.

    Norm-wise rather than entry-wise so that entries whose true gradient is ~0 do not dominate.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)
