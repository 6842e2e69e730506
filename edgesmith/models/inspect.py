"""``edgesmith inspect``: parameters, size, signature, FLOPs and op histogram of a model."""

from __future__ import annotations

from collections import Counter
from typing import Any


def inspect_variant(variant) -> dict[str, Any]:
    """Summarise a variant.

    FLOPs are counted by PyTorch's ``FlopCounterMode`` on one forward pass of the
    example inputs (matmuls and convolutions; MACs = FLOPs / 2). The op histogram
    counts the aten ops of the ``torch.export`` graph, or the ONNX graph's ops.

    Returns:
        A JSON-ready dict: name, source, task, params, size_bytes, inputs, outputs,
        flops (None for ONNX sources), ops (op -> count), passes, notes.
    """
    if variant.module is None:
        params, size, flops, ops = _onnx_stats(variant.onnx_path)
    else:
        params, size, flops, ops = _torch_stats(variant)
    return {
        "name": variant.name,
        "source": variant.source,
        "task": variant.task,
        "params": params,
        "size_bytes": size,
        "inputs": [s.to_dict() for s in variant.inputs],
        "outputs": [s.to_dict() for s in variant.outputs],
        "flops": flops,
        "ops": dict(ops.most_common()),
        "passes": variant.passes,
        "notes": variant.notes,
    }


def _torch_stats(variant):
    import torch

    from edgesmith.models.complexity import count_flops, count_params, size_bytes
    from edgesmith.models.program import export_program

    module = variant.module
    params = count_params(module)
    size = size_bytes(module)
    flops = count_flops(module, *[torch.from_numpy(variant.example[s.name]) for s in variant.inputs])
    program = export_program(variant)
    ops = Counter(
        getattr(n.target, "__name__", str(n.target)).replace(".default", "")
        for n in program.graph.nodes if n.op == "call_function"
    )
    return params, size, flops, ops


def _onnx_stats(path):
    import numpy as np
    import onnx

    model = onnx.load(str(path))
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    size = sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    ops = Counter(n.op_type for n in model.graph.node)
    return params, size, None, ops


def module_kinds(module, word: str = "", limit: int = 8) -> str:
    """The classes of ``module``'s submodules with counts, most common first (``LayerNorm x 5``).

    Args:
        module: A torch module.
        word: Only classes whose name contains this (case-insensitive), e.g. ``norm``.
        limit: At most this many classes.
    """
    from collections import Counter

    counts = Counter(kind for kind in (type(m).__name__ for m in module.modules()) if word.lower() in kind.lower())
    return ", ".join(f"{kind} x {n}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit])
