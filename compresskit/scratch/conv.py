"""2-d convolution and max-pooling in NumPy, each as a slow loop version and a fast vectorised one.

Layout is NCHW throughout. The naive versions are the obvious loops, kept as the reference that the fast
versions (built on `numpy.lib.stride_tricks.sliding_window_view`) are tested against.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Cache = Any


def conv_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output length along one spatial axis; raises if the kernel does not tile the padded input."""
    span = size + 2 * pad - kernel
    if span < 0 or span % stride:
        raise ValueError(f"kernel {kernel} with stride {stride} does not tile {size} + 2*{pad}")
    return span // stride + 1


def _pad(x: np.ndarray, pad: int) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x


def conv_forward_naive(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1, pad: int = 0
) -> tuple[np.ndarray, Cache]:
    """Cross-correlation (torch's conv2d). x: (N, C, H, W); w: (F, C, HH, WW); b: (F,).

    Zero padding `pad` on each side of H and W. Returns out: (N, F, H', W') with
    H' = (H + 2*pad - HH) / stride + 1 (likewise W').
    """
    n, _, h, wd = x.shape
    f, _, hh, ww = w.shape
    ho, wo = conv_output_size(h, hh, stride, pad), conv_output_size(wd, ww, stride, pad)
    xp = _pad(x, pad)
    out = np.zeros((n, f, ho, wo), dtype=np.result_type(x, w))
    for i in range(n):
        for k in range(f):
            for r in range(ho):
                for c in range(wo):
                    patch = xp[i, :, r * stride : r * stride + hh, c * stride : c * stride + ww]
                    out[i, k, r, c] = np.sum(patch * w[k]) + b[k]
    return out, (x, w, stride, pad)


def conv_backward_naive(dout: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout: (N, F, H', W'). Returns dx: (N, C, H, W), dw: (F, C, HH, WW), db: (F,)."""
    x, w, stride, pad = cache
    n, f, ho, wo = dout.shape
    _, _, hh, ww = w.shape
    xp = _pad(x, pad)
    dxp = np.zeros_like(xp, dtype=np.result_type(x, dout))
    dw = np.zeros_like(w, dtype=np.result_type(w, dout))
    for i in range(n):
        for k in range(f):
            for r in range(ho):
                for c in range(wo):
                    rs, cs = r * stride, c * stride
                    dw[k] += dout[i, k, r, c] * xp[i, :, rs : rs + hh, cs : cs + ww]
                    dxp[i, :, rs : rs + hh, cs : cs + ww] += dout[i, k, r, c] * w[k]
    dx = dxp[:, :, pad : pad + x.shape[2], pad : pad + x.shape[3]]
    return dx, dw, dout.sum(axis=(0, 2, 3))


def _windows(xp: np.ndarray, hh: int, ww: int, stride: int) -> np.ndarray:
    """View of every (hh, ww) window: (N, C, H', W', hh, ww); no copy."""
    return sliding_window_view(xp, (hh, ww), axis=(2, 3))[:, :, ::stride, ::stride]


def conv_forward_fast(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1, pad: int = 0
) -> tuple[np.ndarray, Cache]:
    """Same contract as conv_forward_naive, as one tensor contraction over window views."""
    _, _, h, wd = x.shape
    _, _, hh, ww = w.shape
    for size, k in ((h, hh), (wd, ww)):
        conv_output_size(size, k, stride, pad)  # validates the geometry
    cols = _windows(_pad(x, pad), hh, ww, stride)
    out = np.tensordot(cols, w, axes=([1, 4, 5], [1, 2, 3]))  # (N, H', W', F)
    out = out.transpose(0, 3, 1, 2) + b[None, :, None, None]
    return np.ascontiguousarray(out), (x, w, stride, pad, cols)


def conv_backward_fast(dout: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same contract as conv_backward_naive."""
    x, w, stride, pad, cols = cache
    _, _, ho, wo = dout.shape
    _, _, hh, ww = w.shape
    dw = np.tensordot(dout, cols, axes=([0, 2, 3], [0, 2, 3]))  # (F, C, HH, WW)
    dxp = np.zeros((x.shape[0], x.shape[1], x.shape[2] + 2 * pad, x.shape[3] + 2 * pad),
                   dtype=np.result_type(x, dout))
    # col2im one kernel tap at a time: HH*WW vectorised scatters instead of a loop over positions.
    for i in range(hh):
        for j in range(ww):
            contrib = np.tensordot(dout, w[:, :, i, j], axes=([1], [0]))  # (N, H', W', C)
            rows, cols_ = slice(i, i + stride * ho, stride), slice(j, j + stride * wo, stride)
            dxp[:, :, rows, cols_] += contrib.transpose(0, 3, 1, 2)
    dx = dxp[:, :, pad : pad + x.shape[2], pad : pad + x.shape[3]]
    return dx, dw, dout.sum(axis=(0, 2, 3))


def max_pool_forward_naive(
    x: np.ndarray, pool_height: int = 2, pool_width: int = 2, stride: int = 2
) -> tuple[np.ndarray, Cache]:
    """Max over each (pool_height, pool_width) window. x: (N, C, H, W) -> out: (N, C, H', W')."""
    n, c, h, wd = x.shape
    ho = conv_output_size(h, pool_height, stride, 0)
    wo = conv_output_size(wd, pool_width, stride, 0)
    out = np.empty((n, c, ho, wo), dtype=x.dtype)
    for i in range(n):
        for k in range(c):
            for r in range(ho):
                for q in range(wo):
                    out[i, k, r, q] = x[i, k, r * stride : r * stride + pool_height,
                                        q * stride : q * stride + pool_width].max()
    return out, (x, pool_height, pool_width, stride)


def max_pool_backward_naive(dout: np.ndarray, cache: Cache) -> np.ndarray:
    """Routes each dout entry to its window's first maximal element (row-major). Returns dx like x."""
    x, ph, pw, stride = cache
    n, c, ho, wo = dout.shape
    dx = np.zeros_like(x, dtype=np.result_type(x, dout))
    for i in range(n):
        for k in range(c):
            for r in range(ho):
                for q in range(wo):
                    window = x[i, k, r * stride : r * stride + ph, q * stride : q * stride + pw]
                    a, bb = np.unravel_index(np.argmax(window), window.shape)
                    dx[i, k, r * stride + a, q * stride + bb] += dout[i, k, r, q]
    return dx


def max_pool_forward_fast(
    x: np.ndarray, pool_height: int = 2, pool_width: int = 2, stride: int = 2
) -> tuple[np.ndarray, Cache]:
    """Same contract as max_pool_forward_naive, vectorised over window views."""
    for size, k in ((x.shape[2], pool_height), (x.shape[3], pool_width)):
        conv_output_size(size, k, stride, 0)  # validates the geometry
    win = _windows(x, pool_height, pool_width, stride)
    flat = win.reshape(*win.shape[:4], -1)
    arg = flat.argmax(axis=-1)  # first maximum, as in the naive version
    out = np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]
    return out, (x.shape, x.dtype, arg, pool_height, pool_width, stride)


def max_pool_backward_fast(dout: np.ndarray, cache: Cache) -> np.ndarray:
    """Same contract as max_pool_backward_naive."""
    shape, dtype, arg, ph, pw, stride = cache
    _, _, ho, wo = dout.shape
    dx = np.zeros(shape, dtype=np.result_type(dtype, dout))
    # One scatter per window tap; += keeps overlapping windows (stride < pool) correct.
    for a in range(ph):
        for bb in range(pw):
            rows, cols = slice(a, a + stride * ho, stride), slice(bb, bb + stride * wo, stride)
            dx[:, :, rows, cols] += dout * (arg == a * pw + bb)
    return dx
