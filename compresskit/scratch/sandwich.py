"""Conv-ReLU and conv-ReLU-max-pool sandwiches built from the fast layers."""

from __future__ import annotations

from typing import Any

import numpy as np

from compresskit.scratch.conv import (
    conv_backward_fast,
    conv_forward_fast,
    max_pool_backward_fast,
    max_pool_forward_fast,
)
from compresskit.scratch.layers import affine_backward, affine_forward, relu_backward, relu_forward

Cache = Any


def conv_relu_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1, pad: int = 0
) -> tuple[np.ndarray, Cache]:
    """relu(conv(x)). Shapes as in conv_forward_fast."""
    a, conv_cache = conv_forward_fast(x, w, b, stride, pad)
    out, relu_cache = relu_forward(a)
    return out, (conv_cache, relu_cache)


def conv_relu_backward(dout: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns dx, dw, db."""
    conv_cache, relu_cache = cache
    return conv_backward_fast(relu_backward(dout, relu_cache), conv_cache)


def conv_relu_pool_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1, pad: int = 0, pool: int = 2
) -> tuple[np.ndarray, Cache]:
    """maxpool(relu(conv(x))) with a pool×pool window and stride `pool`."""
    a, cr_cache = conv_relu_forward(x, w, b, stride, pad)
    out, pool_cache = max_pool_forward_fast(a, pool, pool, pool)
    return out, (cr_cache, pool_cache)


def conv_relu_pool_backward(dout: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns dx, dw, db."""
    cr_cache, pool_cache = cache
    return conv_relu_backward(max_pool_backward_fast(dout, pool_cache), cr_cache)


def affine_relu_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, Cache]:
    """relu(x @ w + b). x: (N, D...); w: (D, M); b: (M,)."""
    a, fc_cache = affine_forward(x, w, b)
    out, relu_cache = relu_forward(a)
    return out, (fc_cache, relu_cache)


def affine_relu_backward(dout: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns dx, dw, db."""
    fc_cache, relu_cache = cache
    return affine_backward(relu_backward(dout, relu_cache), fc_cache)
