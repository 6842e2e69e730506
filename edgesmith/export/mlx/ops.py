"""ATen -> MLX translation table for the ``mlx`` exporter: one small function per op.

``OPS`` maps an ATen overload name (``aten.add.Tensor``) to a function
``fn(ctx, *args, **kwargs)`` receiving the node's arguments with tensors as MLX
arrays and sizes as ints, and returning an MLX array (or a tuple, as the ATen
op does). Adding an op is one decorated function; ops in the table are also
kept whole by the decomposition (see :mod:`edgesmith.export.mlx.graph`). This
module holds elementwise ops, reductions, shapes, indexing and creation; the
layers (normalisation, matmul, attention, convolution, pooling) are in
:mod:`edgesmith.export.mlx.layers` and register into the same table.

Layout: tensors keep torch's layout (NCHW) between ops; only the convolution
translation goes channels-last and back (see :mod:`edgesmith.export.mlx.layers`).
Dtypes follow torch: the interpreter casts every result to the dtype torch
recorded (int64 token ids stay int64, MLX supports it).

Translations that take sizes (``view``, ``expand``, ``slice``, ``arange``...)
are registered with ``sizes=True`` and build shape-dependent values through the
:class:`~edgesmith.export.mlx.graph.Context` helpers, so the exported function
stays right when dynamic axes change; every other translation is refused a
dynamic size as a value (the export then falls back to fixed shapes).

Imports MLX at the top: only imported once the ``mlx`` target is used.
"""

from __future__ import annotations

import math
from typing import Callable

import mlx.core as mx
import numpy as np

OPS: dict[str, Callable] = {}


def translates(*names: str, sizes: bool = False) -> Callable:
    """Register a translation for ATen overloads.

    Args:
        names: Overload names, e.g. ``aten.add.Tensor``.
        sizes: The translation handles dynamic sizes among its arguments itself.

    Raises:
        ValueError: A name is registered twice.
    """

    def register(fn: Callable) -> Callable:
        fn.handles_sizes = sizes
        for name in names:
            if name in OPS:
                raise ValueError(f"MLX translation for {name} is registered twice")
            OPS[name] = fn
        return fn

    return register


def _unary(name: str, fn: Callable) -> None:
    translates(name)(lambda ctx, x, **kwargs: fn(x))  # kwargs: memory_format and such


def _axes(dim, ndim: int) -> list[int]:
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return list(range(ndim))
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    return [d % ndim if ndim else 0 for d in dims]


def as_list(value, n: int) -> list[int]:
    """An int or a list of ints (one broadcast to all) as a list of ``n`` ints."""
    if isinstance(value, (list, tuple)):
        return list(value) * n if len(value) == 1 else list(value)
    return [value] * n


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
    translates(_name)(lambda ctx, a, b, _fn=_fn: _fn(a, b))


@translates("aten.add.Tensor", "aten.add.Scalar")
def add(ctx, a, b, alpha=1):
    """``a + alpha * b``."""
    return a + (b if alpha == 1 else alpha * b)


@translates("aten.sub.Tensor", "aten.sub.Scalar")
def sub(ctx, a, b, alpha=1):
    """``a - alpha * b``."""
    return a - (b if alpha == 1 else alpha * b)


@translates("aten.rsub.Scalar")
def rsub(ctx, a, b, alpha=1):
    """``b - alpha * a``."""
    return b - (a if alpha == 1 else alpha * a)


@translates("aten.div.Tensor_mode")
def div_mode(ctx, a, b, rounding_mode=None):
    """Division rounded toward minus infinity (``floor``) or zero (``trunc``)."""
    if rounding_mode == "floor":
        return mx.floor_divide(a, b)
    q = mx.divide(a, b)
    return q if rounding_mode is None else mx.where(q < 0, mx.ceil(q), mx.floor(q))


@translates("aten.pow.Tensor_Scalar")
def pow_scalar(ctx, x, exponent):
    """``x ** exponent``, with torch's exact forms for the common exponents."""
    # torch computes these exponents exactly this way; mx.power would go through exp/log
    special = {2: lambda: x * x, 3: lambda: x * x * x, 0.5: lambda: mx.sqrt(x),
               -0.5: lambda: mx.rsqrt(x), -1: lambda: mx.reciprocal(x), 1: lambda: x}
    return special[exponent]() if exponent in special else mx.power(x, exponent)


@translates("aten.bitwise_and.Tensor")
def bitwise_and(ctx, a, b):
    """``&``: logical for bools, bitwise for integers."""
    return mx.logical_and(a, b) if a.dtype == mx.bool_ else mx.bitwise_and(a, b)


@translates("aten.bitwise_or.Tensor")
def bitwise_or(ctx, a, b):
    """``|``: logical for bools, bitwise for integers."""
    return mx.logical_or(a, b) if a.dtype == mx.bool_ else mx.bitwise_or(a, b)


@translates("aten.bitwise_not.default")
def bitwise_not(ctx, x):
    """``~``: logical for bools, bitwise for integers."""
    # -x - 1 is ~x in two's complement; mx.export_function cannot serialize BitwiseInvert
    return mx.logical_not(x) if x.dtype == mx.bool_ else -x - 1


@translates("aten.where.self")
def where_(ctx, cond, a, b):
    """``cond ? a : b``."""
    return mx.where(cond, a, b)


@translates("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def masked_fill(ctx, x, mask, value):
    """``value`` where ``mask``, else ``x``."""
    return mx.where(mask, mx.array(value, x.dtype) if not isinstance(value, mx.array) else value, x)


@translates("aten.clamp.default", "aten.hardtanh.default")
def clamp(ctx, x, lo=None, hi=None):
    """Clip to ``[lo, hi]`` (``hardtanh`` defaults to ``[-1, 1]``)."""
    if ctx.op == "aten.hardtanh.default":
        lo, hi = -1.0 if lo is None else lo, 1.0 if hi is None else hi
    return mx.clip(x, lo, hi)


@translates("aten.gelu.default")
def gelu(ctx, x, approximate="none"):
    """GELU, exact (erf) or with torch's tanh approximation."""
    if approximate == "tanh":
        return 0.5 * x * (1 + mx.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))
    return 0.5 * x * (1 + mx.erf(x * (1 / math.sqrt(2))))


@translates("aten.leaky_relu.default")
def leaky_relu(ctx, x, negative_slope=0.01):
    """``x`` where positive, else ``negative_slope * x``."""
    return mx.where(x > 0, x, x * negative_slope)


@translates("aten.hardsigmoid.default")
def hardsigmoid(ctx, x):
    """``clip(x / 6 + 1/2, 0, 1)``."""
    return mx.clip(x / 6 + 0.5, 0, 1)


@translates("aten.hardswish.default")
def hardswish(ctx, x):
    """``x * clip(x + 3, 0, 6) / 6``."""
    return x * mx.clip(x + 3, 0, 6) / 6


@translates("aten._to_copy.default")
def to_copy(ctx, x, **kwargs):
    """A dtype conversion (devices and layouts do not exist in MLX)."""
    return x.astype(ctx.out_dtype)


@translates("aten.scalar_tensor.default")
def scalar_tensor(ctx, value, **kwargs):
    """A 0-d array."""
    return mx.array(value, ctx.out_dtype)


# -- reductions --------------------------------------------------------------------------------
def _lowest(dtype):
    return -mx.inf if mx.issubdtype(dtype, mx.floating) else int(np.iinfo(np.dtype(str(dtype).split(".")[-1])).min)


def _highest(dtype):
    return mx.inf if mx.issubdtype(dtype, mx.floating) else int(np.iinfo(np.dtype(str(dtype).split(".")[-1])).max)


@translates("aten.mean.dim")
def mean(ctx, x, dim=None, keepdim=False, dtype=None):
    """Mean over ``dim`` (a sum divided by the run-time count when shapeless)."""
    axes = _axes(dim, x.ndim)
    if not ctx.shapeless:
        return mx.mean(x, axis=axes, keepdims=keepdim)
    count = 1
    for a in axes:
        count = count * ctx.size(ctx.arg_shape(0)[a], x.shape[a])
    return ctx.reduce(mx.sum, x, axes, keepdim, 0) / count


@translates("aten.sum.dim_IntList")
def sum_(ctx, x, dim=None, keepdim=False, dtype=None):
    """Sum over ``dim``."""
    return ctx.reduce(mx.sum, x, _axes(dim, x.ndim), keepdim, 0)


@translates("aten.sum.default")
def sum_all(ctx, x, dtype=None):
    """Sum of all entries."""
    return ctx.reduce(mx.sum, x, _axes(None, x.ndim), False, 0)


@translates("aten.amax.default")
def amax(ctx, x, dim=(), keepdim=False):
    """Maximum over ``dim``."""
    return ctx.reduce(mx.max, x, _axes(dim, x.ndim), keepdim, _lowest(x.dtype))


@translates("aten.amin.default")
def amin(ctx, x, dim=(), keepdim=False):
    """Minimum over ``dim``."""
    return ctx.reduce(mx.min, x, _axes(dim, x.ndim), keepdim, _highest(x.dtype))


@translates("aten.argmax.default")
def argmax(ctx, x, dim=None, keepdim=False):
    """Index of the first maximum along ``dim`` (or of the flattened array)."""
    if dim is None:
        if ctx.shapeless and not all(isinstance(d, int) for d in ctx.arg_shape(0)):
            ctx.require_static("argmax over all axes of a dynamic tensor")
        return mx.argmax(x)
    # the appended lowest value never wins: argmax returns the first of equal maxima
    return ctx.reduce(lambda t, axis, keepdims: mx.argmax(t, axis=axis[0], keepdims=keepdims), x,
                      [dim % x.ndim], keepdim, _lowest(x.dtype))


@translates("aten.var.correction")
def var(ctx, x, dim=None, correction=None, keepdim=False):
    """Variance with Bessel's correction by default."""
    axes = _axes(dim, x.ndim)
    if any(not isinstance(ctx.arg_shape(0)[a], int) for a in axes):
        ctx.require_static("variance over a dynamic axis")
    return mx.var(x, axis=axes, keepdims=keepdim, ddof=1 if correction is None else int(correction))


@translates("aten.cumsum.default")
def cumsum(ctx, x, dim, dtype=None):
    """Cumulative sum along ``dim``."""
    return mx.cumsum(x, axis=dim)


@translates("aten._softmax.default")
def softmax(ctx, x, dim, half_to_float=False):
    """Softmax along ``dim``, accumulated in fp32."""
    return mx.softmax(x, axis=dim, precise=True)


@translates("aten._log_softmax.default")
def log_softmax(ctx, x, dim, half_to_float=False):
    """``x - logsumexp(x)`` along ``dim``."""
    return x - ctx.reduce(mx.logsumexp, x, [dim % x.ndim], True, -mx.inf)


# -- shapes and indexing ------------------------------------------------------------------------
@translates("aten.sym_size.int")
def sym_size(ctx, x, dim):
    """The trace-time size of an axis (size-aware translations read the symbolic one)."""
    return x.shape[dim]


@translates("aten._assert_tensor_metadata.default", sizes=True)
def no_op(ctx, *args, **kwargs):
    """Metadata assertions: nothing to compute."""
    return None


@translates("aten.view.default", "aten._unsafe_view.default", sizes=True)
def view(ctx, x, size):
    """Reshape (shape-agnostic when shapeless, see :meth:`Context.reshape`)."""
    return ctx.reshape(x, ctx.arg_shape(0), ctx.out_shape, list(size))


@translates("aten.permute.default")
def permute(ctx, x, dims):
    """Transpose to ``dims``."""
    return mx.transpose(x, [d % x.ndim for d in dims])


@translates("aten.transpose.int")
def transpose(ctx, x, dim0, dim1):
    """Swap two axes."""
    return mx.swapaxes(x, dim0, dim1)


@translates("aten.unsqueeze.default")
def unsqueeze(ctx, x, dim):
    """Insert a size-1 axis."""
    return mx.expand_dims(x, dim % (x.ndim + 1))


@translates("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def squeeze(ctx, x, dim=None):
    """Drop the given size-1 axes (all of them without ``dim``); others are kept, as in torch."""
    shape = ctx.arg_shape(0)
    axes = [a for a in _axes(dim, x.ndim) if shape[a] == 1]
    return mx.squeeze(x, axis=axes) if axes else x


@translates("aten.expand.default", sizes=True)
def expand(ctx, x, size, implicit=False):
    """Broadcast to ``size`` (-1 keeps an axis)."""
    lead = len(size) - x.ndim
    concrete = [x.shape[i - lead] if int(s) == -1 else int(s) for i, s in enumerate(size)]
    return ctx.broadcast(x, ctx.out_shape, concrete)


@translates("aten.cat.default")
def cat(ctx, tensors, dim=0):
    """Concatenate along ``dim``."""
    tensors = [t for t in tensors if not (t.ndim == 1 and t.size == 0)]  # torch's legacy empty operands
    return mx.concatenate(tensors, axis=dim % tensors[0].ndim)


@translates("aten.slice.Tensor", sizes=True)
def slice_(ctx, x, dim=0, start=None, end=None, step=1):
    """``x[start:end:step]`` along ``dim``."""
    dim %= x.ndim
    return ctx.slice(x, dim, start, end, step, in_dim=ctx.arg_shape(0)[dim], out_dim=ctx.out_shape[dim],
                     start_sym=ctx.arg_size(2))


@translates("aten.select.int", sizes=True)
def select(ctx, x, dim, index):
    """``x[index]`` along ``dim``, the axis dropped."""
    dim %= x.ndim
    picked = ctx.slice(x, dim, index, index + 1 if index != -1 else None, 1, in_dim=ctx.arg_shape(0)[dim],
                       out_dim=1, start_sym=ctx.arg_size(2))
    return mx.squeeze(picked, axis=dim)


@translates("aten.split_with_sizes.default", "aten.split.Tensor")
def split(ctx, x, sizes, dim=0):
    """Consecutive pieces along ``dim``: given sizes, or chunks of one size."""
    dim %= x.ndim
    if isinstance(sizes, int):
        sizes = [min(sizes, x.shape[dim] - s) for s in range(0, x.shape[dim], sizes)]
    in_dim, out, start = ctx.arg_shape(0)[dim], [], 0
    for s in sizes:
        out.append(ctx.slice(x, dim, start, start + s, 1, in_dim=in_dim, out_dim=s))
        start += s
    return out


@translates("aten.index.Tensor")
def index(ctx, x, indices):
    """``x[i0, i1, ...]`` with index tensors, via ``take_along_axis`` on the flattened indexed axes."""
    positions = [i for i, t in enumerate(indices) if t is not None]
    tensors = [indices[i] for i in positions]
    if any(t.dtype == mx.bool_ for t in tensors):
        raise ctx.unsupported("boolean mask indices (the result's size depends on the data)")
    shape = list(ctx.arg_shape(0))
    if positions != list(range(positions[0], positions[0] + len(positions))):
        # torch puts the indexed axes first when they are not adjacent
        order = positions + [i for i in range(x.ndim) if i not in positions]
        x, shape, positions = mx.transpose(x, order), [shape[i] for i in order], list(range(len(positions)))
    first, count = positions[0], len(positions)
    sizes = [ctx.size(shape[p], x.shape[p]) for p in positions]
    flat = None
    for m, t in enumerate(tensors):
        t = mx.where(t < 0, t + sizes[m], t)
        stride = 1
        for s in sizes[m + 1:]:
            stride = stride * s
        flat = t * stride if flat is None else flat + t * stride
    if count > 1:
        x = mx.flatten(x, first, first + count - 1)
    nb, post = flat.ndim, x.ndim - first - 1
    x = mx.expand_dims(x, list(range(first, first + nb))) if nb else x
    idx = flat
    if first:
        idx = mx.expand_dims(idx, list(range(first)))
    idx = mx.expand_dims(idx, list(range(first + nb, first + nb + 1 + post)))
    return mx.squeeze(mx.take_along_axis(x, idx, axis=first + nb), axis=first + nb)


@translates("aten.index_select.default")
def index_select(ctx, x, dim, index):
    """Entries ``index`` along ``dim``."""
    return ctx.take(x, dim % x.ndim, index)


@translates("aten.gather.default")
def gather(ctx, x, dim, index, sparse_grad=False):
    """``take_along_axis``."""
    return mx.take_along_axis(x, index, axis=dim)


@translates("aten.embedding.default")
def embedding(ctx, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    """Rows ``indices`` of the table ``weight``."""
    return mx.take(weight, indices, axis=0)  # the table is a constant: shape-agnostic in the indices


@translates("aten.constant_pad_nd.default")
def constant_pad_nd(ctx, x, pad, value=0):
    """Pad the last axes with ``value`` (pairs from the last axis backwards, as torch)."""
    for i in range(len(pad) // 2):
        before, after = pad[2 * i], pad[2 * i + 1]
        if before < 0 or after < 0:
            raise ctx.unsupported("negative padding")
        x = ctx.pad(x, x.ndim - 1 - i, before, after, value)
    return x


# -- creation -------------------------------------------------------------------------------------
@translates("aten.arange.start_step", "aten.arange.start", "aten.arange.default", sizes=True)
def arange(ctx, *args, **kwargs):
    """``arange(start, end, step)``; a dynamic length follows the input axis it comes from."""
    start, end, step = {1: (0, args[0], 1), 2: (*args, 1), 3: args}[len(args)]
    recorded = [ctx.arg_size(i) for i in range(len(args))]
    if len(args) > 1 and not all(isinstance(r, (int, float)) for i, r in enumerate(recorded) if i != 1):
        ctx.require_static("arange with a dynamic start or step")
    count = max(0, math.ceil((end - start) / step))
    return (ctx.arange(ctx.out_shape[0], count) * step + start).astype(ctx.out_dtype)


@translates("aten.full.default", sizes=True)
def full(ctx, size, fill_value, **kwargs):
    """An array of ``fill_value``; dynamic sizes follow the input axes they come from."""
    value = mx.array(fill_value, ctx.out_dtype)
    if not size:
        return value
    return ctx.broadcast(value.reshape([1] * len(size)), ctx.out_shape, [int(s) for s in size])


@translates("aten.full_like.default")
def full_like(ctx, x, fill_value, **kwargs):
    """An array of ``fill_value`` shaped like ``x``."""
    return mx.zeros_like(x).astype(ctx.out_dtype) + mx.array(fill_value, ctx.out_dtype)


# The layer translations (normalisation, matmul, attention, convolution, pooling) register into OPS too.
from edgesmith.export.mlx import layers  # noqa: E402,F401
