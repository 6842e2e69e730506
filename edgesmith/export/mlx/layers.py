"""Layer translations for the ``mlx`` exporter: normalisation, matmul, attention, convolution, pooling.

Part of the table :data:`~edgesmith.export.mlx.context.OPS` (same registration,
same conventions as :mod:`edgesmith.export.mlx.ops`). Layout: tensors keep
torch's NCHW between ops; MLX convolutions are channels-last (NHWC input, OHWI
weights), so the convolution translation transposes input and weight in and the
result back. Pooling works on NCHW
directly, as strided windows combined elementwise. Attention is computed as
``softmax(q k^T * scale + mask) v`` in fp32.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from edgesmith.export.mlx.context import OPS, as_list


# -- normalisation --------------------------------------------------------------------------------
@OPS.op("aten.layer_norm.default")
def layer_norm(ctx, x, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    """LayerNorm over the trailing ``normalized_shape`` axes (``mx.fast.layer_norm`` for one)."""
    if len(normalized_shape) == 1:
        return mx.fast.layer_norm(x, weight, bias, eps)
    axes = list(range(x.ndim - len(normalized_shape), x.ndim))
    mu = mx.mean(x, axis=axes, keepdims=True)
    y = (x - mu) * mx.rsqrt(mx.var(x, axis=axes, keepdims=True) + eps)
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


@OPS.op("aten.rms_norm.default")
def rms_norm(ctx, x, normalized_shape, weight=None, eps=None):
    """RMSNorm over the trailing axes (``mx.fast.rms_norm`` for one)."""
    eps = float(np.finfo(np.float32).eps) if eps is None else eps
    if len(normalized_shape) == 1:
        return mx.fast.rms_norm(x, weight, eps)
    axes = list(range(x.ndim - len(normalized_shape), x.ndim))
    y = x * mx.rsqrt(mx.mean(x * x, axis=axes, keepdims=True) + eps)
    return y if weight is None else y * weight


@OPS.op("aten._native_batch_norm_legit_no_training.default")
def batch_norm(ctx, x, weight, bias, mean, var, momentum, eps):
    """Inference BatchNorm over axis 1, with running statistics."""
    shape = [1, -1] + [1] * (x.ndim - 2)
    scale = mx.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    y = (x - mean.reshape(shape)) * scale.reshape(shape)
    return (y if bias is None else y + bias.reshape(shape)), None, None


# -- linear algebra -------------------------------------------------------------------------------
@OPS.op("aten.linear.default")
def linear(ctx, x, weight, bias=None):
    """``x @ weight.T + bias``."""
    y = mx.matmul(x, weight.T)
    return y if bias is None else y + bias


@OPS.op("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def matmul(ctx, a, b):
    """``a @ b`` (with broadcasting)."""
    return mx.matmul(a, b)


@OPS.op("aten.addmm.default")
def addmm(ctx, bias, a, b, beta=1, alpha=1):
    """``beta * bias + alpha * (a @ b)``."""
    # not mx.addmm: a shapeless function keeps its traced output shape
    y = mx.matmul(a, b)
    return (y if alpha == 1 else alpha * y) + (bias if beta == 1 else beta * bias)


def _repeat_heads(x, rep: int):
    """(..., H, S, E) -> (..., H*rep, S, E), each head repeated (grouped-query attention)."""
    x = mx.expand_dims(x, -3)
    x = mx.where(mx.zeros((rep, 1, 1), mx.bool_), x, x)  # broadcast without a fixed shape
    return mx.flatten(x, -4, -3)


@OPS.op("aten.scaled_dot_product_attention.default")
def sdpa(ctx, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """softmax(q k^T * scale + mask) v, computed in fp32 like torch's math reference.

    ``mx.fast.scaled_dot_product_attention`` is not used: it cannot be exported
    shapeless with a mask.
    """
    if dropout_p:
        raise ctx.unsupported(f"dropout_p={dropout_p} (export the model in eval mode)")
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k, v = (_repeat_heads(t, q.shape[-3] // k.shape[-3]) for t in (k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = mx.matmul(q, mx.swapaxes(k, -1, -2)) * scale
    if is_causal:
        rows = ctx.arange(ctx.arg_shape(0)[-2], q.shape[-2])
        cols = ctx.arange(ctx.arg_shape(1)[-2], k.shape[-2])
        scores = mx.where(cols[None, :] <= rows[:, None], scores, -mx.inf)
    if attn_mask is not None:
        scores = mx.where(attn_mask, scores, -mx.inf) if attn_mask.dtype == mx.bool_ else scores + attn_mask
    return mx.matmul(mx.softmax(scores, axis=-1, precise=True), v)


# -- convolution and pooling (NCHW in and out) ----------------------------------------------------
def _conv(ctx, x, weight, bias, stride, padding, dilation, groups):
    """N-d convolution of NCHW input via channels-last ``mx.conv_general``."""
    n = weight.ndim - 2
    unbatched = x.ndim == n + 1
    if unbatched:
        x = mx.expand_dims(x, 0)
    to_last = [0, *range(2, n + 2), 1]
    y = mx.conv_general(
        mx.transpose(x, to_last), mx.transpose(weight, to_last), stride=as_list(stride, n),
        padding=padding, kernel_dilation=as_list(dilation, n), groups=groups,
    )
    if bias is not None:
        y = y + bias
    y = mx.transpose(y, [0, n + 1, *range(1, n + 1)])
    return y[0] if unbatched else y


@OPS.op("aten.convolution.default")
def convolution(ctx, x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    """The core convolution op (not transposed)."""
    if transposed:
        raise ctx.unsupported("transposed convolution")
    return _conv(ctx, x, weight, bias, stride, as_list(padding, weight.ndim - 2), dilation, groups)


@OPS.op("aten.conv1d.default", "aten.conv2d.default")
def conv(ctx, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``conv1d``/``conv2d`` with integer padding."""
    return _conv(ctx, x, weight, bias, stride, as_list(padding, weight.ndim - 2), dilation, groups)


@OPS.op("aten.conv1d.padding", "aten.conv2d.padding")
def conv_padding_mode(ctx, x, weight, bias=None, stride=1, padding="valid", dilation=1, groups=1):
    """``conv1d``/``conv2d`` with ``padding='same'`` or ``'valid'``."""
    n = weight.ndim - 2
    if padding == "valid":
        pads = [0] * n
    else:  # "same": torch puts the odd pixel on the high side
        total = [d * (k - 1) for d, k in zip(as_list(dilation, n), weight.shape[2:])]
        pads = ([t // 2 for t in total], [t - t // 2 for t in total])
    return _conv(ctx, x, weight, bias, stride, pads, dilation, groups)


def _pool(ctx, x, kernel, stride, padding, dilation, ceil_mode, kind: str):
    """Max or sum over windows of the last two axes; returns the result and the window size.

    Windows are strided slices combined elementwise (one per kernel offset); a
    non-overlapping pool that tiles the input exactly is a reshape and a reduction.
    """
    kernel = as_list(kernel, 2)
    stride = as_list(stride, 2) if stride else kernel
    padding, dilation = as_list(padding, 2), as_list(dilation, 2)
    sizes, out, extra = x.shape[-2:], [], []
    if not all(isinstance(d, int) for d in ctx.arg_shape(0)[-2:]):
        ctx.require_static("pooling over a dynamic spatial axis")
    for n, k, s, p, d in zip(sizes, kernel, stride, padding, dilation):
        o = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
        if ceil_mode and (o - 1) * s >= n + p:  # torch: the last window starts inside the input
            o -= 1
        out.append(o)
        extra.append(max(0, (o - 1) * s + d * (k - 1) + 1 - (n + 2 * p)))
    if kernel == stride and dilation == [1, 1] and not any(padding) and not any(extra) and \
            all(n == o * k for n, o, k in zip(sizes, out, kernel)):
        y = mx.unflatten(mx.unflatten(x, -1, (out[1], kernel[1])), -3, (out[0], kernel[0]))
        return (mx.max if kind == "max" else mx.sum)(y, axis=(-3, -1)), kernel[0] * kernel[1]
    fill = -mx.inf if kind == "max" else 0.0
    for i in range(2):
        x = ctx.pad(x, x.ndim - 2 + i, padding[i], padding[i] + extra[i], fill)
    result = None
    for i in range(kernel[0]):
        rows = ctx.slice(x, x.ndim - 2, i * dilation[0], i * dilation[0] + stride[0] * (out[0] - 1) + 1, stride[0])
        for j in range(kernel[1]):
            start = j * dilation[1]
            w = ctx.slice(rows, x.ndim - 1, start, start + stride[1] * (out[1] - 1) + 1, stride[1])
            result = w if result is None else (mx.maximum(result, w) if kind == "max" else result + w)
    return result, kernel[0] * kernel[1]


@OPS.op("aten.max_pool2d_with_indices.default")
def max_pool2d(ctx, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    """Max pooling; the indices output is not supported."""
    if any(u.args[1] != 0 for u in ctx.node.users):
        raise ctx.unsupported("returning the indices of the maxima")
    y, _ = _pool(ctx, x, kernel_size, stride, padding, dilation, ceil_mode, "max")
    return y, None


@OPS.op("aten.avg_pool2d.default")
def avg_pool2d(ctx, x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Average pooling, with torch's divisor rules."""
    kernel = as_list(kernel_size, 2)
    stride, padding = (as_list(stride, 2) if stride else kernel), as_list(padding, 2)
    floor_shape = [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(x.shape[-2:], kernel, stride, padding)]
    total, count = _pool(ctx, x, kernel, stride, padding, 1, ceil_mode, "sum")
    if list(total.shape[-2:]) != floor_shape:
        raise ctx.unsupported("ceil_mode with windows past the border")
    if divisor_override:
        return total / divisor_override
    if count_include_pad or not any(padding):
        return total / count
    # windows at the border hold fewer real pixels: divide by their count (separable per axis)
    counts = [np.array([len(set(range(o * s - p, o * s - p + k)) & set(range(n))) for o in range(m)])
              for n, m, k, s, p in zip(x.shape[-2:], floor_shape, kernel, stride, padding)]
    return total / mx.array(np.outer(*counts).astype(np.float32))


@OPS.op("aten._adaptive_avg_pool2d.default")
def adaptive_avg_pool2d(ctx, x, output_size):
    """Adaptive average pooling where the output size divides the input size."""
    out = as_list(output_size, 2)
    size = x.shape[-2:]
    if any(n % o for n, o in zip(size, out)):
        raise ctx.unsupported(f"output size {tuple(out)} that does not divide the input size {tuple(size)}")
    kernel = [n // o for n, o in zip(size, out)]
    total, count = _pool(ctx, x, kernel, kernel, 0, 1, False, "sum")
    return total / count


# -- resizing -------------------------------------------------------------------------------------
def _out_sizes(x, output_size, scale_factors):
    """Output sizes and the input/output coordinate ratio per spatial axis, as torch computes them."""
    sizes = x.shape[2:]
    if output_size:
        return list(output_size), [n / o for n, o in zip(sizes, output_size)]
    return [math.floor(n * s) for n, s in zip(sizes, scale_factors)], [1 / s for s in scale_factors]


def _resize(x, matrices):
    """Apply per-axis interpolation matrices (out, in) to the last two axes as matmuls.

    Matmuls rather than gathers: a shapeless MLX function keeps the batch dynamic
    through a broadcast matmul, while a gather's output shape gets fixed at export.
    """
    m_h, m_w = (mx.array(m.astype(np.float32)).astype(x.dtype) for m in matrices)
    return mx.matmul(m_h, mx.matmul(x, m_w.T))


@OPS.op("aten.upsample_bilinear2d.vec")
def upsample_bilinear2d(ctx, x, output_size, align_corners, scale_factors=None):
    """Bilinear resize of the last two axes (torch's source-coordinate rules)."""
    out, ratios = _out_sizes(x, output_size, scale_factors)
    matrices = []
    for n_in, n_out, ratio in zip(x.shape[2:], out, ratios):
        o = np.arange(n_out, dtype=np.float64)
        if align_corners:
            src = o * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros_like(o)
        else:
            src = np.maximum((o + 0.5) * ratio - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        m = np.zeros((n_out, n_in))
        np.add.at(m, (np.arange(n_out), lo), 1 - (src - lo))
        np.add.at(m, (np.arange(n_out), hi), src - lo)
        matrices.append(m)
    return _resize(x, matrices)


@OPS.op("aten.upsample_nearest2d.vec")
def upsample_nearest2d(ctx, x, output_size, scale_factors=None):
    """Nearest-neighbour resize of the last two axes (torch's ``nearest``: floor of o * in / out)."""
    out, ratios = _out_sizes(x, output_size, scale_factors)
    matrices = []
    for n_in, n_out, ratio in zip(x.shape[2:], out, ratios):
        src = np.minimum(np.floor(np.arange(n_out) * ratio).astype(np.int64), n_in - 1)
        matrices.append(np.eye(n_in)[src])
    return _resize(x, matrices)
