"""Run a ``torch.export`` graph as MLX operations (the heart of the ``mlx`` exporter).

Which graph: the captured program is lowered with ``run_decompositions`` to the
core ATen op set, *except* for the ops that have a translation in the table
(``aten.linear``, ``aten.conv2d``,
``aten.layer_norm``, ``aten.scaled_dot_product_attention``...): those are kept
whole, because MLX has a direct counterpart and fewer, larger ops run faster. So
an op is translated if it is in the table, and decomposed if it is not (a graph
whose ops all have a translation is not decomposed at all); what is left
untranslated after decomposition is reported with its node and module.

:class:`MlxGraph` walks the graph once per trace. Parameters and buffers become
MLX constants, embedded in the exported function. Each ``call_function`` node is
handed to its translation with a :class:`Context`, and the result is cast to the
dtype torch recorded for the node, so type promotion follows torch. The
translations and the shape-agnostic helpers they use are described in
:mod:`edgesmith.export.mlx.context`.

This module imports torch and MLX at the top: it is only imported once the
``mlx`` target is used.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import mlx.core as mx
import numpy as np
import sympy
import torch
from torch.fx.node import map_arg

from edgesmith.errors import BadInputError
from edgesmith.export.mlx import layers, ops, shapes  # noqa: F401 (their translations fill OPS)
from edgesmith.export.mlx.context import (
    DTYPES, OPS, Context, NeedsStatic, is_static, op_name, sym_shape, sym_value, where,
)

# Python-level nodes in the graph: size arithmetic and tuple access, evaluated on trace-time values.
_PYTHON_OPS: dict[Callable, Callable] = {
    operator.getitem: operator.getitem, operator.add: operator.add, operator.sub: operator.sub,
    operator.mul: operator.mul, operator.floordiv: operator.floordiv, operator.truediv: operator.truediv,
    operator.mod: operator.mod, operator.neg: operator.neg,
}


def decompose(program):
    """Lower a program to core ATen, keeping every op that has an MLX translation whole.

    A program whose ops all have a translation already is returned as it is
    (decomposing would change nothing and costs a re-trace).
    """
    if all(n.op != "call_function" or n.target in _PYTHON_OPS or op_name(n.target) in OPS
           for n in program.graph.nodes):
        return program
    table = torch.export.default_decompositions()
    for name in OPS:
        packet, _, overload = name.rpartition(".")
        op = getattr(getattr(torch.ops.aten, packet.split(".", 1)[1], None), overload, None)
        if op is not None:
            table.pop(op, None)
    return program.run_decompositions(table)


class MlxGraph:
    """A decomposed ``torch.export`` program, runnable as an MLX function.

    Args:
        program: The program from :func:`decompose`.
        dynamic: Per user input, its dynamic axes ``{axis: name}`` (names sizes in messages).

    Raises:
        BadInputError: An op has no translation (names the op, node and module).
    """

    def __init__(self, program, dynamic: list[dict[int, str]] | None = None):
        self.program = program
        self.dynamic = dynamic or []
        sig = program.graph_signature
        self.user_inputs = list(sig.user_inputs)
        self.n_outputs = len(sig.user_outputs)
        names = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}
        self._constant_names = names
        self._constants: dict[str, Any] | None = None
        self.check_supported()

    def check_supported(self) -> None:
        """Raise for the ops without a translation, naming each with its first node.

        Raises:
            BadInputError: With ``MLX has no translation for aten.xyz (node 'xyz_3', module features.2)``.
        """
        missing: dict[str, Any] = {}
        for node in self.program.graph.nodes:
            if node.op == "call_function":
                name = op_name(node.target)
                if name not in OPS and node.target not in _PYTHON_OPS:
                    missing.setdefault(name, node)
            elif node.op not in ("placeholder", "output"):
                missing.setdefault(f"{node.op} {node.target}", node)
        if missing:
            first, *rest = missing.items()
            more = f"; also {', '.join(name for name, _ in rest)}" if rest else ""
            raise BadInputError(
                f"MLX has no translation for {first[0]} ({where(first[1])}){more}",
                hint="replace the op in the model, or add a translation to edgesmith/export/mlx/ops.py",
            )

    def constants(self) -> dict[str, Any]:
        """Parameters, buffers and lifted constants as MLX arrays, by placeholder name."""
        if self._constants is None:
            tensors = {**self.program.state_dict, **self.program.constants}
            self._constants = {ph: _to_mx(tensors[key]) for ph, key in self._constant_names.items()}
        return self._constants

    def function(self, shapeless: bool) -> Callable:
        """The MLX function: user inputs (MLX arrays, in signature order) -> tuple of outputs.

        Args:
            shapeless: Build shape-agnostic ops (for ``export_function(shapeless=True)``).
        """
        constants = self.constants()
        graph = self.program.graph
        placeholders = {n.name: n for n in graph.nodes if n.op == "placeholder"}

        def run(*inputs):
            env: dict = {}
            feeds = dict(zip(self.user_inputs, inputs))
            sources, names = {}, {}
            for index, name in enumerate(self.user_inputs):
                node = placeholders[name]
                for axis, d in enumerate(sym_shape(node.meta["val"])):
                    if isinstance(d, sympy.Symbol):
                        sources.setdefault(d, (feeds[name], axis))
                        if index < len(self.dynamic) and axis in self.dynamic[index]:
                            names.setdefault(d, self.dynamic[index][axis])
            ctx = Context(shapeless, sources, names)
            for node in graph.nodes:
                if node.op == "placeholder":
                    env[node] = feeds[node.name] if node.name in feeds else constants[node.name]
                elif node.op == "call_function":
                    if node.target in _PYTHON_OPS:
                        env[node] = _PYTHON_OPS[node.target](*map_arg(node.args, env.__getitem__),
                                                             **map_arg(node.kwargs, env.__getitem__))
                        continue
                    ctx.node = node
                    name = op_name(node.target)
                    fn = OPS.get(name)
                    value = env.__getitem__
                    if not OPS.info(name).get("sizes", False):
                        value = lambda n: _run_time_size(ctx, n, env[n])  # noqa: E731
                    args = map_arg(node.args, value)
                    kwargs = map_arg(node.kwargs, value)
                    try:
                        env[node] = _cast(fn(ctx, *args, **kwargs), node.meta.get("val"))
                    except (NeedsStatic, BadInputError):
                        raise
                    except Exception as exc:
                        exc.add_note(f"while translating {ctx.op} ({where(node)}) to MLX")
                        raise
                elif node.op == "output":
                    return tuple(env[n] for n in node.args[0][: self.n_outputs])
            raise AssertionError("graph without output")

        return run


def _run_time_size(ctx: Context, node, traced):
    """An argument of an op that is not size-aware: a dynamic size becomes a run-time scalar.

    Used as a value (``arange(sequence) + past``, the cache positions of a decoder), a
    dynamic size would otherwise be the traced number, baked in; shapeless, it is read
    from the input axes it comes from instead (:meth:`Context.size`, an int32 0-d array).
    """
    val = node.meta.get("val")
    if isinstance(val, torch.SymInt) and not is_static(sym_value(val)):
        return ctx.size(sym_value(val), traced)
    return traced


def _cast(out, val):
    """Cast a translation's result to the dtype(s) torch recorded (torch's type promotion)."""
    if isinstance(out, mx.array) and isinstance(val, torch.Tensor):
        want = DTYPES.get(val.dtype)
        return out.astype(want) if want is not None and out.dtype != want else out
    if isinstance(out, (tuple, list)) and isinstance(val, (tuple, list)):
        return type(out)(_cast(o, v) for o, v in zip(out, val))
    return out


def _to_mx(tensor):
    t = tensor.detach().cpu()
    if t.dtype == torch.bfloat16:
        return mx.array(t.float().numpy()).astype(mx.bfloat16)
    return mx.array(np.ascontiguousarray(t.numpy()))
