"""Three-layer CNN: conv - relu - 2x2 max-pool - affine - relu - affine - softmax."""

from __future__ import annotations

import math

import numpy as np

from compresskit.scratch.init import kaiming_normal
from compresskit.scratch.layers import affine_backward, affine_forward, softmax_loss
from compresskit.scratch.sandwich import (
    affine_relu_backward,
    affine_relu_forward,
    conv_relu_pool_backward,
    conv_relu_pool_forward,
)


class ThreeLayerConvNet:
    """Parameters in `self.params` (W1, b1, W2, b2, W3, b3, all float64).

    The conv keeps H and W ('same' zero padding, stride 1, odd filter size); the pool halves them.
    W1: (F, C, k, k); W2: (F*(H//2)*(W//2), hidden); W3: (hidden, classes).
    """

    def __init__(
        self,
        input_dim: tuple[int, int, int] = (1, 8, 8),
        num_filters: int = 8,
        filter_size: int = 3,
        hidden_dim: int = 64,
        num_classes: int = 10,
        weight_scale: float | None = None,
        reg: float = 0.0,
        seed: int = 0,
    ) -> None:
        """weight_scale None: Kaiming normal (gain sqrt 2 for the ReLU layers, 1 for the output layer);
        a float: every weight ~ N(0, weight_scale^2) instead. Biases start at zero. reg: L2 strength.
        """
        if filter_size % 2 == 0:
            raise ValueError("filter_size must be odd for 'same' padding")
        c, h, w = input_dim
        if h % 2 or w % 2:
            raise ValueError("H and W must be even for the 2x2 pool")
        self.reg = reg
        self.pad = (filter_size - 1) // 2
        rng = np.random.default_rng(seed)
        flat = num_filters * (h // 2) * (w // 2)
        shapes = {
            "W1": ((num_filters, c, filter_size, filter_size), c * filter_size**2, math.sqrt(2.0)),
            "W2": ((flat, hidden_dim), flat, math.sqrt(2.0)),
            "W3": ((hidden_dim, num_classes), hidden_dim, 1.0),
        }
        self.params: dict[str, np.ndarray] = {}
        for name, (shape, fan_in, gain) in shapes.items():
            if weight_scale is None:
                self.params[name] = kaiming_normal(shape, fan_in, rng, gain)
            else:
                self.params[name] = rng.normal(0.0, weight_scale, size=shape)
            self.params["b" + name[1:]] = np.zeros(shape[-1] if name != "W1" else shape[0])

    def loss(
        self, X: np.ndarray, y: np.ndarray | None = None
    ) -> np.ndarray | tuple[float, dict[str, np.ndarray]]:
        """X: (N, C, H, W). Without y: scores (N, classes). With y (N,) ints: (loss, grads), where
        loss = mean cross-entropy + 0.5 * reg * sum of squared weights (biases excluded).
        """
        p = self.params
        a1, c1 = conv_relu_pool_forward(X, p["W1"], p["b1"], 1, self.pad)
        a2, c2 = affine_relu_forward(a1, p["W2"], p["b2"])
        scores, c3 = affine_forward(a2, p["W3"], p["b3"])
        if y is None:
            return scores
        loss, dscores = softmax_loss(scores, y)
        grads: dict[str, np.ndarray] = {}
        da2, grads["W3"], grads["b3"] = affine_backward(dscores, c3)
        da1, grads["W2"], grads["b2"] = affine_relu_backward(da2, c2)
        _, grads["W1"], grads["b1"] = conv_relu_pool_backward(da1, c1)
        for name in ("W1", "W2", "W3"):
            loss += 0.5 * self.reg * float(np.sum(p[name] ** 2))
            grads[name] = grads[name] + self.reg * p[name]
        return loss, grads
