"""Kaiming (He) normal initialisation."""

from __future__ import annotations

import math

import numpy as np


def kaiming_normal(
    shape: tuple[int, ...], fan_in: int, rng: np.random.Generator, gain: float = math.sqrt(2.0)
) -> np.ndarray:
    """Weights ~ N(0, (gain / sqrt(fan_in))^2), float64.

    fan_in is the number of inputs feeding one output unit (C*HH*WW for a conv, D for an affine layer).
    gain sqrt(2) keeps the activation variance constant through ReLU layers (He et al. 2015); use 1 for
    a layer not followed by a ReLU.
    """
    return rng.normal(0.0, gain / math.sqrt(fan_in), size=shape)
