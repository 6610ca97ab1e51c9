"""Affine, ReLU, dropout, batch norm and softmax cross-entropy: forward/backward pairs in NumPy.

Every `*_forward` returns `(out, cache)`; the matching `*_backward(dout, cache)` returns the gradients
of a scalar loss with respect to the forward's inputs, given `dout` = dloss/dout.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Cache = Any


def affine_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, Cache]:
    """out = x.reshape(N, D) @ w + b.

    x: (N, d1, ..., dk) with D = d1*...*dk; w: (D, M); b: (M,). Returns out: (N, M).
    """
    out = x.reshape(x.shape[0], -1) @ w + b
    return out, (x, w)


def affine_backward(dout: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout: (N, M). Returns dx (shape of x), dw: (D, M), db: (M,)."""
    x, w = cache
    dx = (dout @ w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T @ dout
    db = dout.sum(axis=0)
    return dx, dw, db


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, Cache]:
    """out = max(x, 0), elementwise, any shape."""
    return np.maximum(x, 0), x


def relu_backward(dout: np.ndarray, cache: Cache) -> np.ndarray:
    """Gradient passes where x > 0 (the kink at 0 gets 0)."""
    return dout * (cache > 0)


def dropout_forward(
    x: np.ndarray, p: float, mode: str, seed: int | None = None
) -> tuple[np.ndarray, Cache]:
    """Inverted dropout: in 'train' each unit is zeroed with probability p and survivors scaled by 1/(1-p),

    so 'test' is the identity. `seed` makes the mask reproducible. x: any shape; p in [0, 1).
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    if mode == "test":
        return x, (None, mode)
    if mode != "train":
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
    rng = np.random.default_rng(seed)
    mask = (rng.random(x.shape) >= p) / (1 - p)
    return x * mask, (mask, mode)


def dropout_backward(dout: np.ndarray, cache: Cache) -> np.ndarray:
    """Gradient through the same mask (identity in test mode)."""
    mask, mode = cache
    return dout if mode == "test" else dout * mask


def batchnorm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    bn_param: dict[str, Any],
) -> tuple[np.ndarray, Cache]:
    """Batch norm over the batch axis. x: (N, D); gamma, beta: (D,).

    bn_param: 'mode' ('train'|'test'), optional 'eps' (1e-5), 'momentum' (0.1, torch's convention:
    running = (1 - momentum) * running + momentum * batch), and 'running_mean'/'running_var' (D,),
    created as zeros/ones if absent and updated in place in the dict during training. As in torch, the
    running variance is the unbiased (N-1) batch variance while normalisation uses the biased one.
    """
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.1)
    d = x.shape[1]
    running_mean = bn_param.setdefault("running_mean", np.zeros(d, dtype=x.dtype))
    running_var = bn_param.setdefault("running_var", np.ones(d, dtype=x.dtype))
    if mode == "train":
        n = x.shape[0]
        mean = x.mean(axis=0)
        var = x.var(axis=0)
        inv_std = 1.0 / np.sqrt(var + eps)
        xhat = (x - mean) * inv_std
        bn_param["running_mean"] = (1 - momentum) * running_mean + momentum * mean
        unbiased = var * n / (n - 1) if n > 1 else var
        bn_param["running_var"] = (1 - momentum) * running_var + momentum * unbiased
        return gamma * xhat + beta, (xhat, gamma, inv_std, mode)
    if mode == "test":
        inv_std = 1.0 / np.sqrt(running_var + eps)
        xhat = (x - running_mean) * inv_std
        return gamma * xhat + beta, (xhat, gamma, inv_std, mode)
    raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")


def batchnorm_backward(dout: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout: (N, D). Returns dx: (N, D), dgamma: (D,), dbeta: (D,).

    In test mode the statistics are constants, so dx is just dout * gamma * inv_std.
    """
    xhat, gamma, inv_std, mode = cache
    dbeta = dout.sum(axis=0)
    dgamma = (dout * xhat).sum(axis=0)
    dxhat = dout * gamma
    if mode == "test":
        return dxhat * inv_std, dgamma, dbeta
    # Closed form of the chain rule through mean and variance of the batch.
    dx = inv_std * (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0))
    return dx, dgamma, dbeta


def spatial_batchnorm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, bn_param: dict[str, Any]
) -> tuple[np.ndarray, Cache]:
    """Per-channel batch norm of x: (N, C, H, W) over N, H, W; gamma, beta: (C,). See batchnorm_forward."""
    n, c, h, w = x.shape
    flat = x.transpose(0, 2, 3, 1).reshape(-1, c)
    out, cache = batchnorm_forward(flat, gamma, beta, bn_param)
    return out.reshape(n, h, w, c).transpose(0, 3, 1, 2), cache


def spatial_batchnorm_backward(
    dout: np.ndarray, cache: Cache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout: (N, C, H, W). Returns dx: (N, C, H, W), dgamma: (C,), dbeta: (C,)."""
    n, c, h, w = dout.shape
    dx, dgamma, dbeta = batchnorm_backward(dout.transpose(0, 2, 3, 1).reshape(-1, c), cache)
    return dx.reshape(n, h, w, c).transpose(0, 3, 1, 2), dgamma, dbeta


def softmax_loss(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy. scores: (N, C) logits; y: (N,) ints in [0, C).

    Returns (loss in nats, dscores: (N, C)).
    """
    shifted = scores - scores.max(axis=1, keepdims=True)  # for exp overflow
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = scores.shape[0]
    loss = -log_probs[np.arange(n), y].mean()
    dscores = np.exp(log_probs)
    dscores[np.arange(n), y] -= 1
    return float(loss), dscores / n
