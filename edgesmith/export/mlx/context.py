"""What an MLX translation works with: the op table it registers into and the :class:`Context` it gets.

``OPS`` maps an ATen overload name (``aten.add.Tensor``) to a function
``fn(ctx, *args, **kwargs)`` receiving the node's arguments with tensors as MLX
arrays and sizes as ints, and returning an MLX array (or a tuple, as the ATen
op does). The translations live in :mod:`edgesmith.export.mlx.ops`
(elementwise, reductions), :mod:`edgesmith.export.mlx.shapes` (shapes,
indexing, creation) and :mod:`edgesmith.export.mlx.layers`; the interpreter
(:mod:`edgesmith.export.mlx.graph`) imports them.

Shapeless export (``mx.export_function(..., shapeless=True)``) records the
graph once and re-infers shapes when it is called with others. Many MLX
primitives cannot do that (slicing, padding, ``broadcast_to``, ``arange``), and
some silently keep their traced shape (``reshape`` with explicit sizes, ``take``
on a varying array). The :class:`Context` helpers therefore build anything that
depends on a dynamic size from shape-agnostic pieces: reshape as
flatten/unflatten groups, slicing as ``take_along_axis`` with constant indices,
broadcasting as ``where`` against a zero vector whose length comes from an input
(a reduction of the input that owns that symbolic size), ``arange`` as a
cumulative sum of that vector, a size used as a value (``past + arange(n)``) as that
vector's sum, and a sum of sizes (``past + sequence``) as the vectors concatenated.
Sizes come from the symbolic shapes torch.export recorded (``node.meta["val"]``),
never from the traced values. Where no such
construction exists, :meth:`Context.require_static` raises :class:`NeedsStatic`
and the exporter falls back to fixed shapes.

Imports torch and MLX at the top: only imported once the ``mlx`` target is used.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import mlx.core as mx
import sympy
import torch

from edgesmith.errors import BadInputError
from edgesmith.registry import OpTable

INT_MAX = 2**63 - 1

DTYPES = {
    torch.float32: mx.float32, torch.float16: mx.float16, torch.bfloat16: mx.bfloat16,
    torch.float64: mx.float64, torch.int64: mx.int64, torch.int32: mx.int32, torch.int16: mx.int16,
    torch.int8: mx.int8, torch.uint8: mx.uint8, torch.bool: mx.bool_,
}


# Translations registered with ``sizes=True`` handle dynamic sizes among their arguments themselves;
# every other translation gets a dynamic size as a run-time 0-d array (Context.size; graph.py does that).
OPS: OpTable = OpTable("MLX", "translation",
                       hint="replace the op in the model, or add a translation to edgesmith/export/mlx/ops.py")


class NeedsStatic(Exception):
    """The graph needs fixed shapes on MLX; the message says which node and why."""


def op_name(target: Any) -> str:
    """Table key of a node target: ``aten.add.Tensor`` for ATen ops, ``operator.getitem`` for Python ones."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return f"{getattr(target, '__module__', '?').lstrip('_')}.{getattr(target, '__name__', target)}"


def module_of(node) -> str:
    """Source module path of a node (``features.2``), or "" when torch recorded none."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def where(node) -> str:
    """``node 'conv2d_1', module features.3`` for messages."""
    module = module_of(node)
    return f"node {node.name!r}" + (f", module {module}" if module else "")


def sym_shape(val) -> tuple:
    """Shape of a recorded tensor value: ints for static sizes, sympy expressions for dynamic ones."""
    dims = []
    for d in val.shape:
        if isinstance(d, int):
            dims.append(d)
        else:
            expr = d.node.expr
            dims.append(int(expr) if expr.is_number else expr)
    return tuple(dims)


def sym_value(value) -> Any:
    """A size argument as recorded: an int, or a sympy expression for a dynamic size."""
    if isinstance(value, torch.fx.Node):
        value = value.meta.get("val")
    if isinstance(value, torch.SymInt):
        expr = value.node.expr
        return int(expr) if expr.is_number else expr
    return value


def is_static(dim) -> bool:
    """Whether a recorded size is a plain int (not a dynamic, symbolic one)."""
    return isinstance(dim, int)


def _same(a, b) -> bool:
    if is_static(a) and is_static(b):
        return a == b
    return sympy.simplify(sympy.sympify(a) - sympy.sympify(b)) == 0


class Context:
    """What a translation sees besides its arguments: the node, and shape-agnostic helpers.

    Args:
        shapeless: Whether the trace is for a shapeless export.
        sources: Symbolic size -> (input array, axis) where that size can be read at run time.
        names: Symbolic size -> the axis name users know it by (``sequence``), for messages.
    """

    def __init__(self, shapeless: bool, sources: dict, names: dict | None = None):
        self.shapeless = shapeless
        self.sources = sources
        self.names = names or {}
        self.node = None
        self._zeros: dict = {}

    # -- the current node ------------------------------------------------------------------
    @property
    def op(self) -> str:
        """Table key of the node being translated."""
        return op_name(self.node.target)

    @property
    def out_shape(self) -> tuple:
        """Symbolic shape of the node's (first) output."""
        val = self.node.meta["val"]
        return sym_shape(val[0] if isinstance(val, (tuple, list)) else val)

    @property
    def out_dtype(self):
        """MLX dtype torch recorded for the node's (first) output."""
        val = self.node.meta["val"]
        return DTYPES[(val[0] if isinstance(val, (tuple, list)) else val).dtype]

    def arg_shape(self, index: int) -> tuple:
        """Symbolic shape of the node's tensor argument ``index``."""
        return sym_shape(self.node.args[index].meta["val"])

    def arg_size(self, index: int, default=None):
        """Size argument ``index`` as recorded (int or sympy expression), ``default`` if absent."""
        args = self.node.args
        return sym_value(args[index]) if index < len(args) else default

    def require_static(self, why: str) -> None:
        """Refuse a shapeless trace (the exporter then exports fixed shapes).

        Raises:
            NeedsStatic: In a shapeless trace.
        """
        if self.shapeless:
            for sym, name in self.names.items():
                why = re.sub(rf"\b{sym}\b", name, why)
            raise NeedsStatic(f"{self.op} ({where(self.node)}): {why}")

    def unsupported(self, what: str) -> BadInputError:
        """The error for an argument the translation does not handle, naming op and node."""
        return BadInputError(
            f"MLX translation of {self.op} ({where(self.node)}) does not support {what}",
            hint="change the model, or extend the translation in edgesmith/export/mlx/ops.py",
        )

    # -- sizes ---------------------------------------------------------------------------------
    def zeros(self, dim, value: int):
        """Int32 zeros of length ``dim`` (``value`` at trace time) that follow ``dim`` at run time."""
        if is_static(dim) or not self.shapeless:
            return mx.zeros((value,), mx.int32)
        if dim not in self._zeros and isinstance(dim, sympy.Add):
            # a sum of sizes (past + sequence, a KV cache's length): the pieces one after the other
            parts = []
            for term in dim.args:
                if term.is_Integer and term >= 0:
                    parts.append(mx.zeros((int(term),), mx.int32))
                elif isinstance(term, sympy.Symbol):
                    parts.append(self.zeros(term, 0))
                else:
                    self.require_static(f"a size of {dim} is not a sum of input axes")
            self._zeros[dim] = mx.concatenate(parts)
        if dim not in self._zeros:
            if dim not in self.sources:
                self.require_static(f"a size of {dim} is not the size of an input axis")
            array, axis = self.sources[dim]
            # entry 0 of every other axis, by gather: a reduction over an axis that is 1 at
            # run time crashes a shapeless MLX function (MLX 0.32)
            zeros = mx.zeros_like(array).astype(mx.int32)
            others = [i for i in range(array.ndim) if i != axis]
            for other in others:
                zeros = mx.take_along_axis(zeros, mx.zeros([1] * array.ndim, mx.int32), axis=other)
            if others:
                zeros = mx.squeeze(zeros, others)
            self._zeros[dim] = zeros
        return self._zeros[dim]

    def arange(self, dim, value: int):
        """``arange(dim)`` as int32, following ``dim`` at run time."""
        if is_static(dim) or not self.shapeless:
            return mx.arange(value, dtype=mx.int32)
        return mx.cumsum(self.zeros(dim, value) + 1) - 1

    def size(self, dim, value: int):
        """The size ``dim`` as a Python int, or an int32 scalar array when it is dynamic."""
        if is_static(dim) or not self.shapeless:
            return value
        return mx.sum(self.pad(self.zeros(dim, value) + 1, 0, 0, 1, 0))

    def reduce(self, fn: Callable, x, axes: list[int], keepdims: bool, neutral, in_sym: tuple | None = None):
        """``fn(x, axis=axes, keepdims=keepdims)``, safe over dynamic axes.

        A shapeless MLX function crashes reducing an axis that is 1 long at run time
        (MLX 0.32), so each dynamic reduced axis first gets one ``neutral`` element, and
        static 1-long axes are squeezed rather than reduced.
        """
        if self.shapeless:
            in_sym = self.arg_shape(0) if in_sym is None else in_sym
            for a in axes:
                if not is_static(in_sym[a]):
                    x = self.pad(x, a, 0, 1, neutral)
            # Static 1-long axes crash it too: reducing them is the identity, so squeeze them instead.
            ones = [a for a in axes if is_static(in_sym[a]) and in_sym[a] == 1]
            if ones:
                rest = [a for a in axes if a not in ones]
                if rest:
                    x = fn(x, axis=rest, keepdims=True)
                return x if keepdims else mx.squeeze(x, axis=axes)
        return fn(x, axis=axes, keepdims=keepdims)

    # -- shape changes ------------------------------------------------------------------------
    def reshape(self, x, in_sym: tuple, out_sym: tuple, out_val: list[int]):
        """``reshape`` that stays right when dynamic sizes change.

        Shapeless, the input's static size-1 axes are squeezed, the remaining axes are
        grouped with the output's (equal products), each group becomes a flatten and/or
        an unflatten with at most one dynamic size (given as -1), and the output's
        size-1 axes are inserted back.
        """
        out_val = _infer_minus_one(out_val, x.size)
        if not self.shapeless or all(is_static(d) for d in in_sym):
            return mx.reshape(x, out_val)
        ones = [i for i, d in enumerate(in_sym) if d == 1]
        if ones:
            x = mx.squeeze(x, axis=ones)
        ins = list(zip([d for d in in_sym if d != 1], x.shape))
        outs = [(d, v) for d, v in zip(out_sym, out_val) if d != 1]
        i = j = axis = 0
        while i < len(ins) or j < len(outs):
            if i == len(ins) or j == len(outs):
                self.require_static("the reshape does not split into matching groups")
            gin, gout = [ins[i]], [outs[j]]
            i, j = i + 1, j + 1
            while math.prod(v for _, v in gin) != math.prod(v for _, v in gout):
                if math.prod(v for _, v in gin) < math.prod(v for _, v in gout) and i < len(ins):
                    gin.append(ins[i])
                    i += 1
                elif j < len(outs):
                    gout.append(outs[j])
                    j += 1
                else:
                    self.require_static("the reshape does not split into matching groups")
            if not _same(sympy.Mul(*[d for d, _ in gin]), sympy.Mul(*[d for d, _ in gout])):
                self.require_static("the reshape mixes dynamic sizes")
            if len(gin) > 1:
                x = mx.flatten(x, axis, axis + len(gin) - 1)
            if len(gout) > 1:
                if sum(not is_static(d) for d, _ in gout) > 1:
                    self.require_static("the reshape splits an axis into several dynamic ones")
                x = mx.unflatten(x, axis, [v if is_static(d) else -1 for d, v in gout])
            axis += len(gout)
        ones = [i for i, d in enumerate(out_sym) if d == 1]
        return mx.expand_dims(x, ones) if ones else x

    def broadcast(self, x, out_sym: tuple, out_val: list[int]):
        """``broadcast_to`` that stays right when dynamic sizes change."""
        if not self.shapeless:
            return mx.broadcast_to(x, out_val)
        if x.ndim < len(out_sym):
            x = mx.expand_dims(x, list(range(len(out_sym) - x.ndim)))
        rank = len(out_sym)
        zeros = None
        for axis, (d, v) in enumerate(zip(out_sym, out_val)):
            if x.shape[axis] == 1 and d != 1:
                z = self.zeros(d, v).reshape([1] * axis + [-1] + [1] * (rank - axis - 1))
                zeros = z if zeros is None else zeros + z
        return x if zeros is None else mx.where(zeros != 0, x, x)

    def take(self, x, axis: int, indices):
        """Entries ``indices`` (1-D int array) along ``axis``; shape-agnostic in every other axis."""
        shape = [1] * x.ndim
        shape[axis] = -1
        return mx.take_along_axis(x, indices.reshape(shape), axis=axis)

    def slice(self, x, axis: int, start, stop, step: int = 1, in_dim=None, out_dim=None, start_sym=None):
        """``x[start:stop:step]`` along ``axis``.

        Args:
            x: The array.
            axis: The axis.
            start: Trace-time start (None for 0).
            stop: Trace-time stop (None or past the end for the end).
            step: Positive step.
            in_dim: Symbolic size of ``axis`` in ``x`` (default: static).
            out_dim: Symbolic size of the result along ``axis`` (default: static).
            start_sym: ``start`` as recorded, when it may be dynamic.
        """
        n = x.shape[axis]
        lo, hi, _ = slice(_concrete(start), _concrete(stop), step).indices(n)
        count = len(range(lo, hi, step))
        if not self.shapeless:
            index = [slice(None)] * x.ndim
            index[axis] = slice(lo, hi, step)
            return x[tuple(index)]
        in_dim = n if in_dim is None else in_dim
        out_dim = count if out_dim is None else out_dim
        if lo == 0 and step == 1 and _same(in_dim, out_dim):
            return x
        start_sym = start if start_sym is None else start_sym
        if is_static(in_dim) or (is_static(start_sym) and start_sym >= 0) or start_sym is None:
            return self.take(x, axis, lo + step * self.arange(out_dim, count))
        if is_static(start_sym) and is_static(out_dim):  # from the end of a dynamic axis: x[-2:]
            return self.take(x, axis, self.size(in_dim, n) + start_sym + step * mx.arange(count, dtype=mx.int32))
        self.require_static(f"a slice of dynamic axis {axis} starts at a dynamic index")
        return x[(slice(None),) * axis + (slice(lo, hi, step),)]

    def pad(self, x, axis: int, before: int, after: int, value: float):
        """Pad ``axis`` with ``value`` on both sides (shape-agnostic in the other axes)."""
        if not before and not after:
            return x
        if not self.shapeless:
            widths = [(0, 0)] * x.ndim
            widths[axis] = (before, after)
            return mx.pad(x, widths, constant_values=value)
        parts = []
        for width in (before, after):
            if width:
                block = self.take(x, axis, mx.zeros((width,), mx.int32))
                parts.append(mx.where(mx.zeros_like(block).astype(mx.bool_), block, mx.array(value, x.dtype)))
            else:
                parts.append(None)
        return mx.concatenate([p for p in (parts[0], x, parts[1]) if p is not None], axis=axis)


def _concrete(value):
    return None if value is None else min(int(value), INT_MAX)


def _infer_minus_one(sizes: list[int], total: int) -> list[int]:
    sizes = [int(s) for s in sizes]
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        sizes[sizes.index(-1)] = total // known if known else 0
    return sizes




def axes_of(dim, ndim: int) -> list[int]:
    """The axes a ``dim`` argument names, non-negative (None or ``[]``: all of them)."""
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return list(range(ndim))
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    return [d % ndim if ndim else 0 for d in dims]


def as_list(value, n: int) -> list[int]:
    """An int or a list of ints (one broadcast to all) as a list of ``n`` ints."""
    if isinstance(value, (list, tuple)):
        return list(value) * n if len(value) == 1 else list(value)
    return [value] * n
