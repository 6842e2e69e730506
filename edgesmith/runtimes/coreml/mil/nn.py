"""Neural-network MIL ops: linear, matmul, conv, conv_transpose, pooling, normalization, softmax, upsampling.

Semantics follow ``coremltools/converters/mil/mil/ops/defs/iOS15..iOS17/{linear,conv,pool,
normalization,activation,image_resizing}.py``: ``same`` padding and output sizes as
``aggregated_pad`` and ``spatial_dimensions_out_shape`` in ``defs/_utils.py`` (including
``ceil_mode``), conv weights ``[C_out, C_in/groups, *K]``, conv_transpose weights
``[C_in, C_out/groups, *K]``. Arithmetic is float32.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edgesmith.runtimes.coreml.mil.table import OPS


def _ints(v, n: int, default: int) -> list[int]:
    return [default] * n if v is None else [int(i) for i in np.asarray(v).ravel()]


def _pads(pad_type, pad, sizes, kernel, strides, dilations) -> list[int]:
    """Before/after padding per spatial axis (``pad[2*i], pad[2*i+1]``)."""
    n = len(sizes)
    if pad_type == "custom":
        return _ints(pad, 2 * n, 0)
    if pad_type in ("same", "same_lower"):
        out = []
        for size, k, s, d in zip(sizes, kernel, strides, dilations):
            ek = (k - 1) * d + 1
            total = max(0, s * math.ceil(size / s) - size + ek - s)
            before = total - total // 2 if pad_type == "same_lower" else total // 2
            out += [before, total - before]
        return out
    return [0] * (2 * n)


def _windows(x, kernel, strides, dilations):
    """``[N, C, *out, *K]`` view of the (already padded) input's sliding windows."""
    nsp = x.ndim - 2
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    win = sliding_window_view(x, span, axis=tuple(range(2, 2 + nsp)))
    picks = tuple(slice(None, None, s) for s in strides) + tuple(slice(None, None, d) for d in dilations)
    return win[(slice(None), slice(None)) + picks]


def _letters(n: int, base: str) -> str:
    return base[:n]


@OPS.op("linear")
def linear(x, weight, bias=None):
    """``x @ weight.T + bias``."""
    y = np.matmul(np.asarray(x, np.float32), np.asarray(weight, np.float32).T)
    return y if bias is None else y + bias


@OPS.op("matmul")
def matmul(x, y, transpose_x=False, transpose_y=False):
    """Batched matrix product with broadcasting; ``transpose_*`` swap the last two axes of rank>=2 inputs."""
    x, y = np.asarray(x), np.asarray(y)
    if transpose_x and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if transpose_y and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@OPS.op("conv")
def conv(x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1):
    """1-D to 3-D grouped, strided, dilated convolution."""
    x, w = np.asarray(x, np.float32), np.asarray(weight, np.float32)
    nsp = x.ndim - 2
    kernel = list(w.shape[2:])
    strides, dilations = _ints(strides, nsp, 1), _ints(dilations, nsp, 1)
    p = _pads(pad_type, pad, x.shape[2:], kernel, strides, dilations)
    x = np.pad(x, [(0, 0), (0, 0)] + [(p[2 * i], p[2 * i + 1]) for i in range(nsp)])
    win = _windows(x, kernel, strides, dilations)
    n, c = win.shape[:2]
    g = int(groups)
    win = win.reshape((n, g, c // g) + win.shape[2:])
    w = w.reshape((g, w.shape[0] // g) + w.shape[1:])
    o, k = _letters(nsp, "pqr"), _letters(nsp, "uvw")
    y = np.einsum(f"ngc{o}{k},gdc{k}->ngd{o}", win, w, optimize=True)
    y = y.reshape((n, -1) + y.shape[3:])
    return y if bias is None else y + np.reshape(bias, (1, -1) + (1,) * nsp)


@OPS.op("conv_transpose")
def conv_transpose(x, weight, bias=None, pad=None, output_shape=None, pad_type="valid", strides=None,
                   dilations=None, groups=1):
    """Transposed convolution: every input element scatters its kernel-weighted copy into the output."""
    x, w = np.asarray(x, np.float32), np.asarray(weight, np.float32)
    nsp = x.ndim - 2
    n, cin = x.shape[:2]
    sizes, kernel = x.shape[2:], w.shape[2:]
    strides, dilations = _ints(strides, nsp, 1), _ints(dilations, nsp, 1)
    g = int(groups)
    full = [(d - 1) * s + (k - 1) * dl + 1 for d, s, k, dl in zip(sizes, strides, kernel, dilations)]
    cout = w.shape[1] * g
    y = np.zeros((n, cout) + tuple(full), np.float32)
    xg = x.reshape((n, g, cin // g) + sizes)
    wg = w.reshape((g, cin // g) + w.shape[1:])
    sp = _letters(nsp, "pqr")
    for kk in itertools.product(*(range(k) for k in kernel)):
        part = np.einsum(f"ngc{sp},gcd->ngd{sp}", xg, wg[(Ellipsis,) + kk], optimize=True)
        where = tuple(slice(i * dl, i * dl + (d - 1) * s + 1, s)
                      for i, dl, d, s in zip(kk, dilations, sizes, strides))
        y[(slice(None), slice(None)) + where] += part.reshape((n, cout) + tuple(sizes))
    if pad_type == "same":
        crop = [(f - d * s) for f, d, s in zip(full, sizes, strides)]
        p = [v for c in crop for v in (c // 2, c - c // 2)]
    else:
        p = _ints(pad, 2 * nsp, 0)
    if output_shape is not None:
        want = [int(v) for v in np.asarray(output_shape).ravel()][-nsp:]
    else:
        want = [f - p[2 * i] - p[2 * i + 1] for i, f in enumerate(full)]
    y = y[(slice(None), slice(None)) + tuple(slice(p[2 * i], p[2 * i] + want[i]) for i in range(nsp))]
    return y if bias is None else y + np.reshape(bias, (1, -1) + (1,) * nsp)


def _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, fill):
    """Pad for pooling (``fill`` in the padding) and return the windows plus a mask of counted cells."""
    x = np.asarray(x, np.float32)
    nsp = x.ndim - 2
    kernel = _ints(kernel_sizes, nsp, 1)
    strides = _ints(strides, nsp, 1)
    p = _pads(pad_type, pad, x.shape[2:], kernel, strides, [1] * nsp)
    extra = []
    for i, (size, k, s) in enumerate(zip(x.shape[2:], kernel, strides)):
        total = p[2 * i] + p[2 * i + 1]
        if ceil_mode:
            out = math.floor((size + total - k + s - 1) / s + 1)
            if (out - 1) * s >= size + total / 2 and total > 0:
                out -= 1
        else:
            out = math.floor((size + total - k) / s + 1)
        extra.append(max(0, (out - 1) * s + k - (size + total)))
    widths = [(0, 0), (0, 0)] + [(p[2 * i], p[2 * i + 1] + extra[i]) for i in range(nsp)]
    xp = np.pad(x, widths, constant_values=fill)
    inside = np.pad(np.ones(x.shape[2:], np.float32), widths[2:])  # real input cells
    padded = np.pad(np.ones([d + p[2 * i] + p[2 * i + 1] for i, d in enumerate(x.shape[2:])], np.float32),
                    [(0, e) for e in extra])  # input plus explicit padding, not the ceil-mode extra
    win = _windows(xp, kernel, strides, [1] * nsp)
    axes = tuple(range(-nsp, 0))
    masks = [_windows(m[None, None], kernel, strides, [1] * nsp).sum(axis=axes) for m in (inside, padded)]
    return win, axes, masks


@OPS.op("max_pool")
def max_pool(x, kernel_sizes, strides=None, pad_type="valid", pad=None, ceil_mode=False):
    """Max over each window (padding never wins)."""
    win, axes, _ = _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, -np.inf)
    return win.max(axis=axes)


@OPS.op("avg_pool")
def avg_pool(x, kernel_sizes, strides=None, pad_type="valid", pad=None, exclude_padding_from_average=False,
             ceil_mode=False):
    """Mean over each window, counting the padding unless ``exclude_padding_from_average``."""
    win, axes, (inside, padded) = _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, 0.0)
    return win.sum(axis=axes) / (inside if exclude_padding_from_average else padded)


def _channel(v, ndim: int):
    return np.reshape(v, (1, -1) + (1,) * (ndim - 2))


@OPS.op("batch_norm")
def batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=1e-5):
    """Inference batch norm over axis 1."""
    x = np.asarray(x, np.float32)
    y = (x - _channel(mean, x.ndim)) / np.sqrt(_channel(variance, x.ndim) + epsilon)
    if gamma is not None:
        y = y * _channel(gamma, x.ndim)
    return y if beta is None else y + _channel(beta, x.ndim)


@OPS.op("instance_norm")
def instance_norm(x, gamma=None, beta=None, epsilon=1e-5):
    """Normalize each (sample, channel) over its spatial axes."""
    x = np.asarray(x, np.float32)
    axes = tuple(range(2, x.ndim))
    y = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + epsilon)
    if gamma is not None:
        y = y * _channel(gamma, x.ndim)
    return y if beta is None else y + _channel(beta, x.ndim)


@OPS.op("layer_norm")
def layer_norm(x, axes=None, gamma=None, beta=None, epsilon=1e-5):
    """``gamma * (x - mean) / sqrt(var + epsilon) + beta`` over ``axes``; gamma has ``x.shape[axes]``."""
    x = np.asarray(x, np.float32)
    axes = tuple(range(x.ndim)) if axes is None else tuple(int(a) % x.ndim for a in np.ravel(axes))
    mean = x.mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(np.square(x - mean).mean(axis=axes, keepdims=True) + epsilon)
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    if gamma is not None:
        y = y * np.reshape(gamma, shape)
    return y if beta is None else y + np.reshape(beta, shape)


@OPS.op("softmax")
def softmax(x, axis=-1):
    """Softmax along ``axis`` (max-subtracted)."""
    x = np.asarray(x, np.float32)
    e = np.exp(x - x.max(axis=int(axis), keepdims=True))
    return e / e.sum(axis=int(axis), keepdims=True)


@OPS.op("scaled_dot_product_attention")
def scaled_dot_product_attention(query, key, value, attn_mask=None):
    """``softmax(Q K^T / sqrt(E) + mask) V``; a boolean mask excludes the False positions (iOS 18)."""
    q, k, v = (np.asarray(t, np.float32) for t in (query, key, value))
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) / np.sqrt(np.float32(q.shape[-1]))
    if attn_mask is not None:
        mask = np.asarray(attn_mask)
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + mask
    return np.matmul(softmax(scores, -1), v)


@OPS.op("upsample_nearest_neighbor")
def upsample_nearest_neighbor(x, scale_factor_height=1, scale_factor_width=1):
    """Nearest-neighbour upsampling of the last two axes to ``floor(size * scale)``.

    The source index is ``floor(i * size / out)``, the scale recomputed from the sizes (coremltools
    nudges fractional scales up so that ``floor(size * scale)`` is the size PyTorch asked for).
    """
    x = np.asarray(x)
    for axis, scale in ((-2, float(scale_factor_height)), (-1, float(scale_factor_width))):
        size = x.shape[axis]
        out = math.floor(size * scale)
        x = np.take(x, np.minimum(np.arange(out) * size // out, size - 1), axis=axis)
    return x


def _bilinear_grid(size: int, out: int, align_corners: bool, half_pixel_centers: bool) -> np.ndarray:
    if align_corners:
        spacing = (size - 1) / (out - 1) if out > 1 else 0.0
        grid = np.arange(out) * spacing
    else:
        spacing = size / out
        grid = np.arange(out) * spacing + (0.5 * spacing - 0.5 if half_pixel_centers else 0.0)
    return np.clip(grid, 0, size - 1)


@OPS.op("upsample_bilinear")
def upsample_bilinear(x, scale_factor_height=1, scale_factor_width=1, align_corners=True,
                      half_pixel_centers=None):
    """Bilinear upsampling of the last two axes, sampling grid as the op's docstring describes."""
    x = np.asarray(x, np.float32)
    half = (not align_corners) if half_pixel_centers is None else bool(half_pixel_centers)
    for axis, scale in ((-2, float(scale_factor_height)), (-1, float(scale_factor_width))):
        size = x.shape[axis]
        grid = _bilinear_grid(size, math.floor(size * scale), bool(align_corners), half)
        lo = np.floor(grid).astype(np.int64)
        hi = np.minimum(lo + 1, size - 1)
        frac = (grid - lo).astype(np.float32)
        shape = [1] * x.ndim
        shape[axis] = -1
        frac = frac.reshape(shape)
        x = np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac
    return x
