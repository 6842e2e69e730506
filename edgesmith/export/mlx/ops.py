"""ATen -> MLX translations of elementwise ops and reductions: one small function per op.

Each registers into the table :data:`~edgesmith.export.mlx.context.OPS` (see
there for the calling convention); ops in the table are also kept whole by the
decomposition (see :mod:`edgesmith.export.mlx.graph`). Shapes, indexing and
creation are in :mod:`edgesmith.export.mlx.shapes`; the layers (normalisation,
matmul, attention, convolution, pooling) in :mod:`edgesmith.export.mlx.layers`.

Layout: tensors keep torch's layout (NCHW) between ops; only the convolution
translation goes channels-last and back (see :mod:`edgesmith.export.mlx.layers`).
Dtypes follow torch: the interpreter casts every result to the dtype torch
recorded (int64 token ids stay int64, MLX supports it).

Imports MLX at the top: only imported once the ``mlx`` target is used.
"""

from __future__ import annotations

import math
from typing import Callable

import mlx.core as mx
import numpy as np

from edgesmith.export.mlx.context import OPS, axes_of


def _unary(name: str, fn: Callable) -> None:
    OPS.op(name)(lambda ctx, x, **kwargs: fn(x))  # kwargs: memory_format and such


# -- elementwise ----------------------------------------------------------------------------------
for _name, _fn in {
    "aten.neg.default": mx.negative, "aten.abs.default": mx.abs, "aten.exp.default": mx.exp,
    "aten.log.default": mx.log, "aten.sqrt.default": mx.sqrt, "aten.rsqrt.default": mx.rsqrt,
    "aten.sin.default": mx.sin, "aten.cos.default": mx.cos, "aten.tanh.default": mx.tanh,
    "aten.sigmoid.default": mx.sigmoid, "aten.erf.default": mx.erf, "aten.reciprocal.default": mx.reciprocal,
    "aten.floor.default": mx.floor, "aten.ceil.default": mx.ceil,
    "aten.relu.default": lambda x: mx.maximum(x, 0), "aten.silu.default": lambda x: x * mx.sigmoid(x),
    "aten.logical_not.default": mx.logical_not,
    "aten.alias.default": lambda x: x, "aten.clone.default": lambda x: x, "aten.detach.default": lambda x: x,
}.items():
    _unary(_name, _fn)

for _name, _fn in {
    "aten.mul.Tensor": mx.multiply, "aten.mul.Scalar": mx.multiply,
    "aten.div.Tensor": mx.divide, "aten.div.Scalar": mx.divide,
    "aten.pow.Tensor_Tensor": mx.power, "aten.pow.Scalar": mx.power,
    "aten.maximum.default": mx.maximum, "aten.minimum.default": mx.minimum,
    "aten.remainder.Tensor": mx.remainder, "aten.remainder.Scalar": mx.remainder,
    "aten.eq.Tensor": mx.equal, "aten.eq.Scalar": mx.equal, "aten.ne.Tensor": mx.not_equal,
    "aten.ne.Scalar": mx.not_equal, "aten.lt.Tensor": mx.less, "aten.lt.Scalar": mx.less,
    "aten.le.Tensor": mx.less_equal, "aten.le.Scalar": mx.less_equal, "aten.gt.Tensor": mx.greater,
    "aten.gt.Scalar": mx.greater, "aten.ge.Tensor": mx.greater_equal, "aten.ge.Scalar": mx.greater_equal,
    "aten.logical_and.default": mx.logical_and, "aten.logical_or.default": mx.logical_or,
}.items():
    OPS.op(_name)(lambda ctx, a, b, _fn=_fn: _fn(a, b))


@OPS.op("aten.add.Tensor", "aten.add.Scalar")
def add(ctx, a, b, alpha=1):
    """``a + alpha * b``."""
    return a + (b if alpha == 1 else alpha * b)


@OPS.op("aten.sub.Tensor", "aten.sub.Scalar")
def sub(ctx, a, b, alpha=1):
    """``a - alpha * b``."""
    return a - (b if alpha == 1 else alpha * b)


@OPS.op("aten.rsub.Scalar")
def rsub(ctx, a, b, alpha=1):
    """``b - alpha * a``."""
    return b - (a if alpha == 1 else alpha * a)


@OPS.op("aten.div.Tensor_mode")
def div_mode(ctx, a, b, rounding_mode=None):
    """Division rounded toward minus infinity (``floor``) or zero (``trunc``)."""
    if rounding_mode == "floor":
        return mx.floor_divide(a, b)
    q = mx.divide(a, b)
    return q if rounding_mode is None else mx.where(q < 0, mx.ceil(q), mx.floor(q))


@OPS.op("aten.pow.Tensor_Scalar")
def pow_scalar(ctx, x, exponent):
    """``x ** exponent``, with torch's exact forms for the common exponents."""
    # torch computes these exponents exactly this way; mx.power would go through exp/log
    special = {2: lambda: x * x, 3: lambda: x * x * x, 0.5: lambda: mx.sqrt(x),
               -0.5: lambda: mx.rsqrt(x), -1: lambda: mx.reciprocal(x), 1: lambda: x}
    return special[exponent]() if exponent in special else mx.power(x, exponent)


@OPS.op("aten.bitwise_and.Tensor")
def bitwise_and(ctx, a, b):
    """``&``: logical for bools, bitwise for integers."""
    return mx.logical_and(a, b) if a.dtype == mx.bool_ else mx.bitwise_and(a, b)


@OPS.op("aten.bitwise_or.Tensor")
def bitwise_or(ctx, a, b):
    """``|``: logical for bools, bitwise for integers."""
    return mx.logical_or(a, b) if a.dtype == mx.bool_ else mx.bitwise_or(a, b)


@OPS.op("aten.bitwise_not.default")
def bitwise_not(ctx, x):
    """``~``: logical for bools, bitwise for integers."""
    # -x - 1 is ~x in two's complement; mx.export_function cannot serialize BitwiseInvert
    return mx.logical_not(x) if x.dtype == mx.bool_ else -x - 1


@OPS.op("aten.where.self")
def where_(ctx, cond, a, b):
    """``cond ? a : b``."""
    return mx.where(cond, a, b)


@OPS.op("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def masked_fill(ctx, x, mask, value):
    """``value`` where ``mask``, else ``x``."""
    return mx.where(mask, mx.array(value, x.dtype) if not isinstance(value, mx.array) else value, x)


@OPS.op("aten.clamp.default", "aten.hardtanh.default")
def clamp(ctx, x, lo=None, hi=None):
    """Clip to ``[lo, hi]`` (``hardtanh`` defaults to ``[-1, 1]``)."""
    if ctx.op == "aten.hardtanh.default":
        lo, hi = -1.0 if lo is None else lo, 1.0 if hi is None else hi
    return mx.clip(x, lo, hi)


@OPS.op("aten.gelu.default")
def gelu(ctx, x, approximate="none"):
    """GELU, exact (erf) or with torch's tanh approximation."""
    if approximate == "tanh":
        return 0.5 * x * (1 + mx.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))
    return 0.5 * x * (1 + mx.erf(x * (1 / math.sqrt(2))))


@OPS.op("aten.leaky_relu.default")
def leaky_relu(ctx, x, negative_slope=0.01):
    """``x`` where positive, else ``negative_slope * x``."""
    return mx.where(x > 0, x, x * negative_slope)


@OPS.op("aten.hardsigmoid.default")
def hardsigmoid(ctx, x):
    """``clip(x / 6 + 1/2, 0, 1)``."""
    return mx.clip(x / 6 + 0.5, 0, 1)


@OPS.op("aten.hardswish.default")
def hardswish(ctx, x):
    """``x * clip(x + 3, 0, 6) / 6``."""
    return x * mx.clip(x + 3, 0, 6) / 6


@OPS.op("aten._to_copy.default")
def to_copy(ctx, x, **kwargs):
    """A dtype conversion (devices and layouts do not exist in MLX)."""
    return x.astype(ctx.out_dtype)


@OPS.op("aten.scalar_tensor.default")
def scalar_tensor(ctx, value, **kwargs):
    """A 0-d array."""
    return mx.array(value, ctx.out_dtype)


# -- reductions --------------------------------------------------------------------------------
def _lowest(dtype):
    return -mx.inf if mx.issubdtype(dtype, mx.floating) else int(np.iinfo(np.dtype(str(dtype).split(".")[-1])).min)


def _highest(dtype):
    return mx.inf if mx.issubdtype(dtype, mx.floating) else int(np.iinfo(np.dtype(str(dtype).split(".")[-1])).max)


@OPS.op("aten.mean.dim")
def mean(ctx, x, dim=None, keepdim=False, dtype=None):
    """Mean over ``dim`` (a sum divided by the run-time count when shapeless)."""
    axes = axes_of(dim, x.ndim)
    if not ctx.shapeless:
        return mx.mean(x, axis=axes, keepdims=keepdim)
    count = 1
    for a in axes:
        count = count * ctx.size(ctx.arg_shape(0)[a], x.shape[a])
    return ctx.reduce(mx.sum, x, axes, keepdim, 0) / count


@OPS.op("aten.sum.dim_IntList")
def sum_(ctx, x, dim=None, keepdim=False, dtype=None):
    """Sum over ``dim``."""
    return ctx.reduce(mx.sum, x, axes_of(dim, x.ndim), keepdim, 0)


@OPS.op("aten.sum.default")
def sum_all(ctx, x, dtype=None):
    """Sum of all entries."""
    return ctx.reduce(mx.sum, x, axes_of(None, x.ndim), False, 0)


@OPS.op("aten.amax.default")
def amax(ctx, x, dim=(), keepdim=False):
    """Maximum over ``dim``."""
    return ctx.reduce(mx.max, x, axes_of(dim, x.ndim), keepdim, _lowest(x.dtype))


@OPS.op("aten.amin.default")
def amin(ctx, x, dim=(), keepdim=False):
    """Minimum over ``dim``."""
    return ctx.reduce(mx.min, x, axes_of(dim, x.ndim), keepdim, _highest(x.dtype))


@OPS.op("aten.argmax.default")
def argmax(ctx, x, dim=None, keepdim=False):
    """Index of the first maximum along ``dim`` (or of the flattened array)."""
    if dim is None:
        if ctx.shapeless and not all(isinstance(d, int) for d in ctx.arg_shape(0)):
            ctx.require_static("argmax over all axes of a dynamic tensor")
        return mx.argmax(x)
    # the appended lowest value never wins: argmax returns the first of equal maxima
    return ctx.reduce(lambda t, axis, keepdims: mx.argmax(t, axis=axis[0], keepdims=keepdims), x,
                      [dim % x.ndim], keepdim, _lowest(x.dtype))


@OPS.op("aten.var.correction")
def var(ctx, x, dim=None, correction=None, keepdim=False):
    """Variance with Bessel's correction by default."""
    axes = axes_of(dim, x.ndim)
    if any(not isinstance(ctx.arg_shape(0)[a], int) for a in axes):
        ctx.require_static("variance over a dynamic axis")
    return mx.var(x, axis=axes, keepdims=keepdim, ddof=1 if correction is None else int(correction))


@OPS.op("aten.cumsum.default")
def cumsum(ctx, x, dim, dtype=None):
    """Cumulative sum along ``dim``."""
    return mx.cumsum(x, axis=dim)


@OPS.op("aten._softmax.default")
def softmax(ctx, x, dim, half_to_float=False):
    """Softmax along ``dim``, accumulated in fp32."""
    return mx.softmax(x, axis=dim, precise=True)


@OPS.op("aten._log_softmax.default")
def log_softmax(ctx, x, dim, half_to_float=False):
    """``x - logsumexp(x)`` along ``dim``."""
    return x - ctx.reduce(mx.logsumexp, x, [dim % x.ndim], True, -mx.inf)
