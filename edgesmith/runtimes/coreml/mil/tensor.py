"""Shape and indexing MIL ops: reshape, transpose, slicing, gather/scatter, concat, ranges, reductions.

Semantics follow ``coremltools/converters/mil/mil/ops/defs/iOS15..iOS17/{tensor_transformation,
tensor_operation,scatter_gather,reduction}.py`` (``reshape`` with the iOS 17 meaning of ``0``:
copy the input dimension counted from the right, 1 where there is none; ``slice_by_index``
as ``solve_slice_by_index_slice`` there; ``gather`` with ``batch_dims`` as ``compute_gather``).
Out-of-range indices, undefined on device, raise here.
"""

from __future__ import annotations

import numpy as np

from edgesmith.runtimes.coreml.mil.table import OPS


def _ints(v) -> list[int]:
    return [int(i) for i in np.atleast_1d(np.asarray(v)).ravel()]


def _axes(v, rank: int | None = None) -> tuple[int, ...] | None:
    if v is None:
        return None
    axes = _ints(v)
    return tuple(a % rank if rank is not None else a for a in axes)


# ---------------------------------------------------------------- layout

@OPS.op("reshape")
def reshape(x, shape):
    """Reshape; ``-1`` is inferred and ``0`` copies the input dimension counted from the right."""
    x = np.asarray(x)
    target = _ints(shape)
    offset = x.ndim - len(target)
    for i, d in enumerate(target):
        if d == 0:
            j = i + offset
            target[i] = x.shape[j] if 0 <= j < x.ndim else 1
    return x.reshape(target)


OPS.op("transpose")(lambda x, perm: np.transpose(x, _ints(perm)))
OPS.op("expand_dims")(lambda x, axes: np.expand_dims(x, tuple(_ints(axes))))
OPS.op("shape")(lambda x: np.array(np.shape(x), np.int32))


@OPS.op("squeeze")
def squeeze(x, axes=None):
    """Drop the size-1 ``axes`` (all of them when none are given)."""
    x = np.asarray(x)
    return np.squeeze(x) if axes is None else np.squeeze(x, _axes(axes, x.ndim))


@OPS.op("concat", variadic=("values",))
def concat(values, axis, interleave=False):
    """Concatenate along ``axis`` (scalars count as 1-vectors); ``interleave`` alternates the inputs' slices."""
    values = [np.atleast_1d(v) for v in values]
    axis = int(axis) % values[0].ndim
    if not bool(interleave):
        return np.concatenate(values, axis=axis)
    stacked = np.stack(values, axis=axis + 1)
    shape = list(values[0].shape)
    shape[axis] *= len(values)
    return stacked.reshape(shape)


OPS.op("stack", variadic=("values",))(lambda values, axis: np.stack([np.asarray(v) for v in values], int(axis)))


@OPS.op("split")
def split(x, axis, num_splits=None, split_sizes=None):
    """Split into ``num_splits`` equal parts or parts of ``split_sizes``."""
    x = np.asarray(x)
    if split_sizes is not None:
        return tuple(np.split(x, np.cumsum(_ints(split_sizes))[:-1], axis=int(axis)))
    return tuple(np.split(x, int(num_splits), axis=int(axis)))


OPS.op("tile")(lambda x, reps: np.tile(x, _ints(reps)))
OPS.op("reverse")(lambda x, axes=None: np.flip(x, _axes(axes, np.ndim(x))))


def slice_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None) -> tuple:
    """The numpy index of ``x[begin:end:stride]`` per axis, with masks to ignore bounds or index one
    element (``slice_by_index``'s reading, which ``slice_update`` writes through too)."""
    rank = x.ndim
    begin, end = _ints(begin), _ints(end)
    stride = _ints(stride) if stride is not None else [1] * rank
    bmask = _ints(begin_mask) if begin_mask is not None else [0] * rank
    emask = _ints(end_mask) if end_mask is not None else [0] * rank
    smask = _ints(squeeze_mask) if squeeze_mask is not None else [0] * rank
    slices = []
    for i in range(rank):
        if smask[i]:
            slices.append(begin[i] % x.shape[i] if x.shape[i] else begin[i])
        else:
            slices.append(slice(None if bmask[i] else begin[i], None if emask[i] else end[i], stride[i]))
    return tuple(slices)


@OPS.op("slice_by_index")
def slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    """``x[begin:end:stride]`` per axis, with masks to ignore bounds or index one element."""
    x = np.asarray(x)
    return np.asarray(x[slice_index(x, begin, end, stride, begin_mask, end_mask, squeeze_mask)])


@OPS.op("slice_by_size")
def slice_by_size(x, begin, size):
    """``size`` elements from ``begin`` per axis (``-1``: to the end)."""
    x = np.asarray(x)
    slices = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(_ints(begin), _ints(size)))
    return x[slices]


@OPS.op("pad")
def pad(x, pad, mode="constant", constant_val=0.0):
    """Pad the last ``len(pad) / 2`` axes; modes ``constant``, ``reflect``, ``replicate``."""
    x = np.asarray(x)
    p = _ints(pad)
    widths = [(0, 0)] * (x.ndim - len(p) // 2) + [(p[2 * i], p[2 * i + 1]) for i in range(len(p) // 2)]
    if mode == "constant":
        return np.pad(x, widths, "constant", constant_values=constant_val)
    return np.pad(x, widths, "edge" if mode == "replicate" else str(mode))


@OPS.op("pixel_shuffle")
def pixel_shuffle(x, upscale_factor):
    """``[N, C*r*r, H, W] -> [N, C, H*r, W*r]`` (PyTorch's pixel shuffle)."""
    n, c, h, w = np.shape(x)
    r = int(upscale_factor)
    y = np.reshape(x, (n, c // (r * r), r, r, h, w)).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (r * r), h * r, w * r)


@OPS.op("pixel_unshuffle")
def pixel_unshuffle(x, downscale_factor):
    """``[N, C, H*f, W*f] -> [N, C*f*f, H, W]``, the inverse of ``pixel_shuffle``."""
    n, c, h, w = np.shape(x)
    f = int(downscale_factor)
    y = np.reshape(x, (n, c, h // f, f, w // f, f)).transpose(0, 1, 3, 5, 2, 4)
    return y.reshape(n, c * f * f, h // f, w // f)


@OPS.op("crop")
def crop(x, crop_height, crop_width):
    """Remove ``crop_height`` rows (top, bottom) and ``crop_width`` columns (left, right)."""
    x = np.asarray(x)
    (top, bottom), (left, right) = [int(v) for v in np.ravel(crop_height)], [int(v) for v in np.ravel(crop_width)]
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


# ---------------------------------------------------------------- gather / scatter

def _gather(x, indices, axis):
    idx = np.asarray(indices).astype(np.int64)
    size = x.shape[axis]
    if idx.size and (idx.max() >= size or idx.min() < -size):
        raise IndexError(f"index {int(idx.max()) if idx.max() >= size else int(idx.min())} "
                         f"out of range for axis of size {size}")
    return np.take(x, idx, axis=axis)


@OPS.op("gather")
def gather(x, indices, axis=0, batch_dims=0, validate_indices=False):
    """Take ``indices`` along ``axis``; the first ``batch_dims`` axes of both index each other."""
    x = np.asarray(x)
    axis, b = int(axis) % x.ndim, int(batch_dims)
    if b == 0:
        return _gather(x, indices, axis)
    indices = np.asarray(indices)
    batch = x.shape[:b]
    xs = x.reshape((-1,) + x.shape[b:])
    ids = indices.reshape((-1,) + indices.shape[b:])
    out = np.stack([_gather(p, i, axis - b) for p, i in zip(xs, ids)])
    return out.reshape(batch + out.shape[1:])


@OPS.op("gather_nd")
def gather_nd(x, indices, batch_dims=0, validate_indices=False):
    """``x[tuple(indices[..., :])]`` for each index vector in the last axis of ``indices``."""
    x = np.asarray(x)
    idx = np.asarray(indices).astype(np.int64)
    b = int(batch_dims)
    if b:
        xs = x.reshape((-1,) + x.shape[b:])
        ids = idx.reshape((-1,) + idx.shape[b:])
        out = np.stack([gather_nd(p, i) for p, i in zip(xs, ids)])
        return out.reshape(x.shape[:b] + out.shape[1:])
    k = idx.shape[-1]
    for d in range(k):
        if idx.size and (idx[..., d].max() >= x.shape[d] or idx[..., d].min() < -x.shape[d]):
            raise IndexError(f"gather_nd index out of range for axis {d} of size {x.shape[d]}")
    return x[tuple(idx[..., d] for d in range(k))]


@OPS.op("gather_along_axis")
def gather_along_axis(x, indices, axis=0, validate_indices=False):
    """``np.take_along_axis``."""
    return np.take_along_axis(np.asarray(x), np.asarray(indices).astype(np.int64), int(axis))


_SCATTER = {"update": None, "add": np.add, "sub": np.subtract, "mul": np.multiply,
            "div": np.divide, "max": np.maximum, "min": np.minimum}


@OPS.op("scatter")
def scatter(data, indices, updates, axis=0, mode="add", validate_indices=False):
    """Combine ``updates`` into a copy of ``data`` at the slices ``indices`` (1-D) of ``axis``."""
    out = np.array(data, copy=True)
    axis = int(axis) % out.ndim
    idx = np.asarray(indices).astype(np.int64).ravel() % out.shape[axis]
    moved = np.moveaxis(out, axis, 0)  # a view: writes land in ``out``
    _scatter_into(moved, (idx,), np.moveaxis(np.asarray(updates), axis, 0), mode)
    return out


@OPS.op("scatter_along_axis")
def scatter_along_axis(data, indices, updates, axis=0, mode="add", validate_indices=False):
    """Combine ``updates`` into a copy of ``data`` at ``indices`` along ``axis``."""
    out = np.array(data, copy=True)
    axis = int(axis) % out.ndim
    idx = np.asarray(indices).astype(np.int64) % out.shape[axis]
    grid = list(np.indices(idx.shape, sparse=True))
    grid[axis] = idx
    _scatter_into(out, tuple(grid), np.asarray(updates), mode)
    return out


@OPS.op("scatter_nd")
def scatter_nd(data, indices, updates, mode="add", validate_indices=False):
    """Combine ``updates`` into a copy of ``data`` at the index vectors in ``indices``."""
    out = np.array(data, copy=True)
    idx = np.asarray(indices).astype(np.int64)
    where = tuple(idx[..., d] % out.shape[d] for d in range(idx.shape[-1]))
    _scatter_into(out, where, np.asarray(updates), mode)
    return out


def _scatter_into(out: np.ndarray, where: tuple, updates: np.ndarray, mode: str) -> None:
    fn = _SCATTER[str(mode)]
    if fn is None:
        out[where] = updates
    else:
        getattr(fn, "at")(out, where, updates)


# ---------------------------------------------------------------- making tensors

OPS.op("fill")(lambda shape, value=0.0: np.full(_ints(shape), value))
OPS.op("fill_like")(lambda ref_tensor, value=0.0: np.full(np.shape(ref_tensor), value))
OPS.op("range_1d")(lambda end, start, step: np.arange(start, end, step))


@OPS.op("one_hot")
def one_hot(indices, one_hot_vector_size, axis=-1, on_value=1, off_value=0):
    """One-hot vectors of ``one_hot_vector_size`` along a new ``axis``."""
    idx = np.asarray(indices)
    hot = np.expand_dims(idx, -1) == np.arange(int(one_hot_vector_size))
    return np.moveaxis(np.where(hot, on_value, off_value), -1, int(axis))


@OPS.op("band_part")
def band_part(x, lower=-1, upper=-1):
    """Keep a band around the diagonal of the last two axes (``-1``: unbounded)."""
    x = np.asarray(x)
    m, n = x.shape[-2:]
    d = np.arange(m)[:, None] - np.arange(n)[None, :]
    keep = ((int(lower) < 0) | (d <= int(lower))) & ((int(upper) < 0) | (-d <= int(upper)))
    return np.where(keep, x, np.zeros((), x.dtype))


@OPS.op("cumsum")
def cumsum(x, axis=0, exclusive=False, reverse=False):
    """Cumulative sum along ``axis``, optionally exclusive and/or from the end."""
    x = np.asarray(x)
    axis = int(axis) % x.ndim
    y = np.flip(x, axis) if reverse else x
    y = np.cumsum(y, axis=axis, dtype=y.dtype)
    if exclusive:
        y = np.concatenate([np.zeros_like(np.take(y, [0], axis)), np.take(y, range(y.shape[axis] - 1), axis)], axis)
    return np.flip(y, axis) if reverse else y


@OPS.op("topk")
def topk(x, k=1, axis=-1, ascending=False, sort=True, return_indices=True, output_indices_dtype="int32"):
    """The ``k`` largest (or smallest) values along ``axis``, and their indices (int32 or uint16)."""
    x = np.asarray(x)
    order = np.argsort(x if ascending else -x, axis=int(axis), kind="stable")
    idx = np.take(order, np.arange(int(k)), axis=int(axis))
    values = np.take_along_axis(x, idx, int(axis))
    return (values, idx.astype(str(output_indices_dtype))) if return_indices else values


@OPS.op("argsort")
def argsort(x, axis=-1, ascending=False):
    """Indices that sort ``x`` along ``axis`` (descending by default), as int32."""
    x = np.asarray(x)
    return np.argsort(x if ascending else -x, axis=int(axis), kind="stable").astype(np.int32)


# ---------------------------------------------------------------- reductions

def _reduction(fn):
    def reduce(x, axes=None, keep_dims=False):
        x = np.asarray(x)
        return fn(x, axis=_axes(axes, x.ndim), keepdims=bool(keep_dims))

    return reduce


OPS.op("reduce_sum")(_reduction(np.sum))
OPS.op("reduce_mean")(_reduction(np.mean))
OPS.op("reduce_max")(_reduction(np.max))
OPS.op("reduce_min")(_reduction(np.min))
OPS.op("reduce_prod")(_reduction(np.prod))
OPS.op("reduce_l2_norm")(_reduction(lambda x, **kw: np.sqrt(np.sum(x * x, **kw))))
OPS.op("reduce_log_sum_exp")(_reduction(
    lambda x, **kw: np.log(np.sum(np.exp(x - np.max(x, **(kw | {"keepdims": True}))), **kw))
    + np.max(x, **kw)))


def _arg_reduction(fn):
    def reduce(x, axis=-1, keep_dims=False, output_dtype="int32"):
        out = fn(np.asarray(x), axis=int(axis), keepdims=bool(keep_dims))
        return out.astype(str(output_dtype))

    return reduce


OPS.op("reduce_argmax")(_arg_reduction(np.argmax))
OPS.op("reduce_argmin")(_arg_reduction(np.argmin))
