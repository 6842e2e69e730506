"""From a variant to a ``torch.export`` program, with its dynamic axes.

Every consumer of a graph (passes that rewrite aten graphs, the ONNX and torch
exporters) goes through :func:`export_program`, so the dynamic-shape handling
lives in one place.
"""

from __future__ import annotations

import re

import numpy as np

from edgesmith.errors import BadInputError
from edgesmith.specs import TensorSpec


def _traceable_example(variant) -> tuple:
    """Example args with each dynamic axis at least 2 long (torch specialises sizes 0 and 1)."""
    import torch

    args = []
    for spec in variant.inputs:
        arr = variant.example[spec.name]
        for axis in spec.dynamic:
            if arr.shape[axis] < 2:
                arr = np.concatenate([arr] * 2, axis=axis)
        args.append(torch.from_numpy(np.ascontiguousarray(arr)))
    return tuple(args)


_FIX_RANGE = re.compile(r"(\w+) = Dim\('\w+'(?:, min=(\d+))?(?:, max=(\d+))?\)")
_FIX_STATIC = re.compile(r"^\s*(\w+) = (\d+)\s*$", re.M)


def _suggested_fixes(message: str) -> tuple[dict[str, tuple[int | None, int | None]], set[str]]:
    """Read torch.export's "Suggested fixes": dimension ranges, and dimensions that must be static."""
    text = message.split("Suggested fixes:", 1)[-1] if "Suggested fixes:" in message else ""
    ranges = {m[1]: (int(m[2]) if m[2] else None, int(m[3]) if m[3] else None) for m in _FIX_RANGE.finditer(text)}
    static = {m[1] for m in _FIX_STATIC.finditer(text)}
    return ranges, static


_DERIVED = re.compile(r"(\w+)\+(\d+)")


def _dynamic_shapes(module, inputs: list[TensorSpec], ranges: dict[str, tuple] | None = None,
                    auto: bool = False):
    """torch.export's ``dynamic_shapes`` for the inputs: one named ``Dim`` per axis name, or with ``auto``
    ``Dim.DYNAMIC`` on every dynamic axis (torch then finds the relations between them itself)."""
    import inspect

    from torch.export import Dim

    dims: dict[str, object] = {}
    ranges = dict(ranges or {})

    def dim(name: str):
        if name not in dims:
            derived = _DERIVED.fullmatch(name)
            if derived:  # "past+1": one more than the axis named past (a KV cache plus the new token)
                ranges.setdefault(derived[1], (1, None))  # a past of at least one position
                dims[name] = dim(derived[1]) + int(derived[2])
            else:
                lo, hi = ranges.get(name, (None, None))
                dims[name] = Dim(name, **{k: v for k, v in (("min", lo), ("max", hi)) if v is not None})
        return dims[name]

    shapes = []
    for spec in inputs:
        axes = {}
        for axis, name in spec.dynamic.items():
            axes[axis] = Dim.DYNAMIC if auto else dim(name)
        shapes.append(axes or None)
    params = list(inspect.signature(module.forward).parameters.values())
    star = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    if star is not None:  # forward(a, b, *rest): torch.export sees *rest as one tuple argument
        return (*shapes[:star], tuple(shapes[star:]))
    return tuple(shapes)


def _drop_axes(spec: TensorSpec, names: set[str]) -> TensorSpec:
    return TensorSpec(spec.name, spec.shape, spec.dtype, {a: n for a, n in spec.dynamic.items() if n not in names})


def export_program(variant):
    """Capture the variant's module with ``torch.export``, dynamic where its inputs say.

    When torch.export rejects a dynamic axis it suggests fixes: a range (the
    position-embedding limit of a transformer, say) is applied and the capture
    retried; an axis the model fixes is made static. If nothing helps, the model
    is captured static. Either way the variant's signature is updated and a note says so.

    Args:
        variant: A :class:`~edgesmith.models.variant.Variant` with a module.

    Returns:
        The ``torch.export.ExportedProgram``.

    Raises:
        BadInputError: If the model cannot be captured at all, with torch's reason.
    """
    import torch

    if variant.module is None:
        raise BadInputError(f"{variant.name} is an ONNX model; this step needs a PyTorch model")
    # a module may bound its axes itself (a stateful step: its cache's capacity)
    ranges: dict[str, tuple] = dict(getattr(variant.module, "axis_ranges", None) or {})
    for _ in range(3):  # the first try, then at most two rounds of torch's suggested fixes
        if not any(s.dynamic for s in variant.inputs):
            break
        try:
            return torch.export.export(
                variant.module, _traceable_example(variant),
                dynamic_shapes=_dynamic_shapes(variant.module, variant.inputs, ranges), strict=False,
            )
        except Exception as exc:  # torch raises several types for constraint violations
            fixed_ranges, static = _suggested_fixes(str(exc))
            if not fixed_ranges and not static:
                # a guard torch could not prove for named dims (a KV cache's past length, say) may hold
                # when it relates the axes itself
                try:
                    return torch.export.export(
                        variant.module, _traceable_example(variant),
                        dynamic_shapes=_dynamic_shapes(variant.module, variant.inputs, ranges, auto=True),
                        strict=False,
                    )
                except Exception:  # noqa: BLE001 - then static, as below, with the first reason
                    pass
                reason = str(exc).strip().splitlines()[0][:200]
                variant.notes.append(f"exported with static shapes: dynamic axes rejected ({reason})")
                static = {n for s in variant.inputs for n in s.dynamic.values()}
            elif static:
                variant.notes.append(f"axes {', '.join(sorted(static))} are static: the model fixes their size")
            ranges.update(fixed_ranges)
            variant.inputs = [_drop_axes(s, static) for s in variant.inputs]
            variant.outputs = [_drop_axes(s, static) for s in variant.outputs]
    args = tuple(torch.from_numpy(np.ascontiguousarray(variant.example[s.name])) for s in variant.inputs)
    try:
        return torch.export.export(variant.module, args, strict=False)
    except Exception as exc:
        raise BadInputError(
            f"torch.export cannot capture {variant.name}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:300]}",
            hint="make the model's forward free of data-dependent Python control flow",
        ) from exc


def output_dynamic_axes(program, inputs: list[TensorSpec]) -> list[dict[int, str]]:
    """Name the output axes that vary with an input's dynamic axis.

    Args:
        program: The exported program.
        inputs: Input signature with dynamic axes.

    Returns:
        One ``{axis: name}`` dict per output.
    """
    import torch

    user_inputs = program.graph_signature.user_inputs
    sym_names: dict[str, str] = {}
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for spec, ph_name in zip(inputs, user_inputs):
        val = placeholders[ph_name].meta.get("val")
        for axis, name in spec.dynamic.items():
            if val is not None and isinstance(val.shape[axis], torch.SymInt):
                sym_names[str(val.shape[axis])] = name
    out_node = next(n for n in program.graph.nodes if n.op == "output")
    result = []
    for arg in out_node.args[0]:
        val = arg.meta.get("val") if hasattr(arg, "meta") else None
        axes = {}
        if val is not None:
            for i, d in enumerate(val.shape):
                if isinstance(d, torch.SymInt) and str(d) in sym_names:
                    axes[i] = sym_names[str(d)]
        result.append(axes)
    return result
