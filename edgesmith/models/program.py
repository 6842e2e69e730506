"""From a variant to a ``torch.export`` program, with its dynamic axes.

Every consumer of a graph (passes that rewrite aten graphs, the ONNX and torch
exporters) goes through :func:`export_program`, so the dynamic-shape handling
lives in one place.
"""

from __future__ import annotations

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


def _dynamic_shapes(inputs: list[TensorSpec]):
    from torch.export import Dim

    dims: dict[str, object] = {}
    shapes = []
    for spec in inputs:
        axes = {}
        for axis, name in spec.dynamic.items():
            if name not in dims:
                dims[name] = Dim(name)
            axes[axis] = dims[name]
        shapes.append(axes or None)
    return tuple(shapes)


def export_program(variant):
    """Capture the variant's module with ``torch.export``, dynamic where its inputs say.

    If the model cannot be captured with its dynamic axes (it hard-codes a size),
    it is captured static, the variant's dynamic axes are dropped and a note says so.

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
    dynamic = any(s.dynamic for s in variant.inputs)
    if dynamic:
        try:
            return torch.export.export(
                variant.module, _traceable_example(variant),
                dynamic_shapes=_dynamic_shapes(variant.inputs), strict=False,
            )
        except Exception as exc:  # torch raises many types for constraint violations
            reason = str(exc).strip().splitlines()[0][:200]
            variant.notes.append(f"exported with static shapes: dynamic axes rejected ({reason})")
            variant.inputs = [TensorSpec(s.name, s.shape, s.dtype) for s in variant.inputs]
            variant.outputs = [TensorSpec(s.name, s.shape, s.dtype) for s in variant.outputs]
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
