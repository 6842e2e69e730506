"""ATen -> MLX translations of shape changes, indexing and creation.

Part of the table :data:`~edgesmith.export.mlx.context.OPS` (same
registration, same conventions as :mod:`edgesmith.export.mlx.ops`).
Translations that take sizes (``view``, ``expand``, ``slice``, ``arange``...)
are registered with ``sizes=True`` and build shape-dependent values through the
:class:`~edgesmith.export.mlx.context.Context` helpers, so the exported function
stays right when dynamic axes change; every other translation gets a dynamic
size as a run-time 0-d array read from the input axes it comes from.
"""

from __future__ import annotations

import math

import mlx.core as mx

from edgesmith.export.mlx.context import OPS, axes_of


# -- shapes and indexing ------------------------------------------------------------------------
@OPS.op("aten.sym_size.int")
def sym_size(ctx, x, dim):
    """The trace-time size of an axis (size-aware translations read the symbolic one)."""
    return x.shape[dim]


@OPS.op("aten._assert_tensor_metadata.default", sizes=True)
def no_op(ctx, *args, **kwargs):
    """Metadata assertions: nothing to compute."""
    return None


@OPS.op("aten.view.default", "aten._unsafe_view.default", sizes=True)
def view(ctx, x, size):
    """Reshape (shape-agnostic when shapeless, see :meth:`Context.reshape`)."""
    return ctx.reshape(x, ctx.arg_shape(0), ctx.out_shape, list(size))


@OPS.op("aten.permute.default")
def permute(ctx, x, dims):
    """Transpose to ``dims``."""
    return mx.transpose(x, [d % x.ndim for d in dims])


@OPS.op("aten.transpose.int")
def transpose(ctx, x, dim0, dim1):
    """Swap two axes."""
    return mx.swapaxes(x, dim0, dim1)


@OPS.op("aten.unsqueeze.default")
def unsqueeze(ctx, x, dim):
    """Insert a size-1 axis."""
    return mx.expand_dims(x, dim % (x.ndim + 1))


@OPS.op("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def squeeze(ctx, x, dim=None):
    """Drop the given size-1 axes (all of them without ``dim``); others are kept, as in torch."""
    shape = ctx.arg_shape(0)
    axes = [a for a in axes_of(dim, x.ndim) if shape[a] == 1]
    return mx.squeeze(x, axis=axes) if axes else x


@OPS.op("aten.expand.default", sizes=True)
def expand(ctx, x, size, implicit=False):
    """Broadcast to ``size`` (-1 keeps an axis)."""
    lead = len(size) - x.ndim
    concrete = [x.shape[i - lead] if int(s) == -1 else int(s) for i, s in enumerate(size)]
    return ctx.broadcast(x, ctx.out_shape, concrete)


@OPS.op("aten.cat.default")
def cat(ctx, tensors, dim=0):
    """Concatenate along ``dim``."""
    tensors = [t for t in tensors if not (t.ndim == 1 and t.size == 0)]  # torch's legacy empty operands
    return mx.concatenate(tensors, axis=dim % tensors[0].ndim)


@OPS.op("aten.slice.Tensor", sizes=True)
def slice_(ctx, x, dim=0, start=None, end=None, step=1):
    """``x[start:end:step]`` along ``dim``."""
    dim %= x.ndim
    return ctx.slice(x, dim, start, end, step, in_dim=ctx.arg_shape(0)[dim], out_dim=ctx.out_shape[dim],
                     start_sym=ctx.arg_size(2))


@OPS.op("aten.select.int", sizes=True)
def select(ctx, x, dim, index):
    """``x[index]`` along ``dim``, the axis dropped."""
    dim %= x.ndim
    picked = ctx.slice(x, dim, index, index + 1 if index != -1 else None, 1, in_dim=ctx.arg_shape(0)[dim],
                       out_dim=1, start_sym=ctx.arg_size(2))
    return mx.squeeze(picked, axis=dim)


@OPS.op("aten.split_with_sizes.default", "aten.split.Tensor")
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


@OPS.op("aten.index.Tensor")
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


@OPS.op("aten.index_select.default")
def index_select(ctx, x, dim, index):
    """Entries ``index`` along ``dim``."""
    return ctx.take(x, dim % x.ndim, index)


@OPS.op("aten.gather.default")
def gather(ctx, x, dim, index, sparse_grad=False):
    """``take_along_axis``."""
    return mx.take_along_axis(x, index, axis=dim)


@OPS.op("aten.embedding.default")
def embedding(ctx, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    """Rows ``indices`` of the table ``weight``."""
    return mx.take(weight, indices, axis=0)  # the table is a constant: shape-agnostic in the indices


@OPS.op("aten.constant_pad_nd.default")
def constant_pad_nd(ctx, x, pad, value=0):
    """Pad the last axes with ``value`` (pairs from the last axis backwards, as torch)."""
    for i in range(len(pad) // 2):
        before, after = pad[2 * i], pad[2 * i + 1]
        if before < 0 or after < 0:
            raise ctx.unsupported("negative padding")
        x = ctx.pad(x, x.ndim - 1 - i, before, after, value)
    return x


# -- creation -------------------------------------------------------------------------------------
@OPS.op("aten.arange.start_step", "aten.arange.start", "aten.arange.default", sizes=True)
def arange(ctx, *args, **kwargs):
    """``arange(start, end, step)``; a dynamic length follows the input axis it comes from."""
    start, end, step = {1: (0, args[0], 1), 2: (*args, 1), 3: args}[len(args)]
    recorded = [ctx.arg_size(i) for i in range(len(args))]
    if len(args) > 1 and not all(isinstance(r, (int, float)) for i, r in enumerate(recorded) if i != 1):
        ctx.require_static("arange with a dynamic start or step")
    count = max(0, math.ceil((end - start) / step))
    return (ctx.arange(ctx.out_shape[0], count) * step + start).astype(ctx.out_dtype)


@OPS.op("aten.full.default", sizes=True)
def full(ctx, size, fill_value, **kwargs):
    """An array of ``fill_value``; dynamic sizes follow the input axes they come from."""
    value = mx.array(fill_value, ctx.out_dtype)
    if not size:
        return value
    return ctx.broadcast(value.reshape([1] * len(size)), ctx.out_shape, [int(s) for s in size])


@OPS.op("aten.full_like.default")
def full_like(ctx, x, fill_value, **kwargs):
    """An array of ``fill_value`` shaped like ``x``."""
    return mx.zeros_like(x).astype(ctx.out_dtype) + mx.array(fill_value, ctx.out_dtype)
