"""Per-op cost of an ONNX graph: FLOPs and bytes moved, at the shapes of real inputs.

The shapes come from running the graph once in ONNX Runtime with every
intermediate value exposed as an output, so symbolic dimensions (batch,
sequence length) resolve to the sizes of the inputs given, and no shape
inference rule can be missing. Each node is put in an op class; the predictor
(:mod:`edgesmith.profiles.predict`) gives each class its own efficiency.

FLOPs count a multiply-add as two. Bytes are the node's distinct inputs
(weights included) plus its outputs, as if each were read or written once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgesmith.errors import BadInputError, require

# op class -> ONNX op types (default domain and com.microsoft)
OP_CLASSES: dict[str, tuple[str, ...]] = {
    "conv": ("Conv", "ConvTranspose", "FusedConv", "QLinearConv", "ConvInteger"),
    "matmul": ("MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "QLinearMatMul", "MatMulNBits", "FusedGemm"),
    "norm": ("LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
             "SimplifiedLayerNormalization", "SkipLayerNormalization", "RMSNormalization",
             "Softmax", "LogSoftmax"),
    "pool": ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "ReduceMean",
             "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceSumSquare", "ArgMax", "ArgMin"),
    "data": ("Transpose", "Concat", "Slice", "Split", "Gather", "GatherND", "GatherElements", "Expand", "Pad",
             "Tile", "ScatterND", "ScatterElements", "DepthToSpace", "SpaceToDepth", "Trilu",
             "CumSum", "TopK", "NonZero", "OneHot"),
    # elementwise with a transcendental function (or interpolation): compute-bound, unlike add or mul
    "math": ("Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Erf", "Sigmoid", "Tanh", "Exp", "Log", "Softplus",
             "Mish", "Sin", "Cos", "Pow", "Elu", "Selu", "Celu", "HardSwish", "Resize"),
    # views and shape arithmetic: no kernel worth timing
    "free": ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant",
             "ConstantOfShape", "Range", "Dropout"),
}
# elementwise ops with a transcendental function cost several FLOPs per element
_TRANSCENDENTAL = {"Gelu": 8, "FastGelu": 8, "BiasGelu": 8, "Erf": 8, "Sigmoid": 4, "Tanh": 6, "Exp": 4,
                   "Log": 4, "Softplus": 6, "HardSwish": 3, "HardSigmoid": 2, "Mish": 10, "Sin": 6, "Cos": 6,
                   "Pow": 8, "Sqrt": 2, "Reciprocal": 1, "QuickGelu": 5, "Elu": 4, "Selu": 4, "Celu": 4}
_GATHERS = {"Gather", "GatherND", "GatherElements"}
_CLASS_OF = {op: cls for cls, ops in OP_CLASSES.items() for op in ops}
CLASSES = ("conv", "dwconv", "matmul", "norm", "pool", "math", "elementwise", "data", "free")
_PRECISION = {"float32": "fp32", "float64": "fp32", "float16": "fp16", "bfloat16": "bf16",
              "int8": "int8", "uint8": "int8"}


def op_class(op_type: str, group: int = 1) -> str:
    """The cost class of an ONNX op type; anything unlisted is ``elementwise``.

    Grouped convolutions (``group`` > 1: depthwise and the like) are ``dwconv``: they move far more
    bytes per FLOP than dense ones and run at a much lower fraction of peak.
    """
    cls = _CLASS_OF.get(op_type, "elementwise")
    return "dwconv" if cls == "conv" and group > 1 else cls


@dataclass(frozen=True)
class OpCost:
    """What one node computes and moves.

    Attributes:
        node: Node name in the graph.
        op_type: ONNX op type.
        op_class: Cost class (see :data:`CLASSES`).
        scope: Source module path (from the exporter's metadata), or "".
        flops: Floating-point (or integer) operations, a multiply-add counted as two.
        bytes: Bytes read (distinct inputs, weights included) plus bytes written.
        weight_bytes: The part of ``bytes`` that is weights: initializers, and values computed from them
            alone (a runtime folds those into initializers).
        precision: ``fp32``, ``fp16``, ``bf16`` or ``int8``: the type of the largest floating input.
    """

    node: str
    op_type: str
    op_class: str
    scope: str
    flops: float
    bytes: float
    weight_bytes: float
    precision: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass(frozen=True)
class _Value:
    shape: tuple[int, ...]
    dtype: str
    const: np.ndarray | None = None  # initializer values (for attribute-like inputs)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.numel * np.dtype(self.dtype).itemsize if self.dtype != "bfloat16" else self.numel * 2


@dataclass
class GraphCost:
    """A graph's op costs and how its nodes connect (what the predictor needs to fuse and fold).

    Attributes:
        costs: One :class:`OpCost` per node, in graph order.
        producers: Node -> the node producing its first input that is not a weight.
        consumers: Node -> how many nodes (or graph outputs) read its outputs.
        folded: Nodes computed from weights and constants alone (a runtime folds them before running).
    """

    costs: list[OpCost]
    producers: dict[str, str]
    consumers: dict[str, int]
    folded: set[str]


def graph_costs(model_path: str | Path, inputs: dict[str, np.ndarray]) -> GraphCost:
    """Cost every node of an ONNX model at the shapes of ``inputs``.

    Args:
        model_path: The ``.onnx`` file (external data beside it is read too).
        inputs: One array per graph input (a bundle's golden inputs).

    Returns:
        The costs (nested subgraphs are counted once, as the node that holds them) and the links.

    Raises:
        BadInputError: The model cannot be read or run with these inputs.
        RuntimeUnavailableError: onnx is not installed (a runtime-only install).
    """
    onnx = require("onnx", "build")  # a runtime-only install has no onnx: predictions need the build stack
    from onnx import numpy_helper

    from edgesmith.runtimes.onnxruntime import _node_scopes

    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # noqa: BLE001 - onnx raises several unrelated types for a bad file
        raise BadInputError(f"cannot read ONNX model {model_path}: {exc}") from None
    graph = model.graph
    values: dict[str, _Value] = {}
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        values[init.name] = _Value(tuple(arr.shape), str(arr.dtype), arr if arr.size <= 64 else None)
    values.update(_run_shapes(model, inputs))
    scopes = _node_scopes(model_path)
    initializers = {i.name for i in graph.initializer}
    costs = []
    producer_of: dict[str, str] = {}  # value -> node name
    producers: dict[str, str] = {}
    consumers: dict[str, int] = defaultdict(int)
    constant = set(initializers)
    folded: set[str] = set()
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        data_inputs = [n for n in node.input if n and n not in initializers]
        if data_inputs and data_inputs[0] in producer_of:
            producers[name] = producer_of[data_inputs[0]]
        for n in {n for n in node.input if n in producer_of}:
            consumers[producer_of[n]] += 1
        if all(n in constant for n in node.input if n):
            folded.add(name)
            constant.update(o for o in node.output if o)
        for o in node.output:
            if o:
                producer_of[o] = name
        ins = [values[n] for n in node.input if n and n in values]
        outs = [values[n] for n in node.output if n and n in values]
        cls = op_class(node.op_type, _attr(node, "group", 1))
        flops = _flops(node, cls, ins, outs)
        seen, in_bytes, w_bytes = set(), 0, 0
        for k, n in enumerate(node.input):
            if n and n in values and n not in seen:
                seen.add(n)
                read = values[n].nbytes
                if k == 0 and node.op_type in _GATHERS and outs:  # a lookup reads only the rows it returns
                    read = min(read, outs[0].nbytes)
                in_bytes += read
                # a value computed from weights alone (a transposed tied head) is folded into a weight
                w_bytes += read if n in constant else 0
        floats = [v for v in ins if v.dtype in _PRECISION and v.dtype not in ("int8", "uint8")]
        typed = max(floats or ins or outs, key=lambda v: v.numel, default=None)
        precision = _PRECISION.get(typed.dtype, "fp32") if typed is not None else "fp32"
        if cls in ("conv", "dwconv", "matmul") and any(v.dtype in ("int8", "uint8") for v in ins):
            precision = "int8"
        costs.append(OpCost(node=name, op_type=node.op_type, op_class=cls, scope=scopes.get(node.name, ""),
                            flops=float(flops), bytes=float(in_bytes + sum(o.nbytes for o in outs)),
                            weight_bytes=float(w_bytes), precision=precision))
    for out in graph.output:  # a graph output is read by the caller: its producer cannot fuse it away
        if out.name in producer_of:
            consumers[producer_of[out.name]] += 1
    return GraphCost(costs=costs, producers=producers, consumers=dict(consumers), folded=folded)


def _run_shapes(model, inputs: dict[str, np.ndarray]) -> dict[str, _Value]:
    """Shapes and dtypes of every value, by running the graph with all of them as outputs."""
    import onnx

    ort = require("onnxruntime", "all")
    graph = model.graph
    known = {o.name for o in graph.output}
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    for node in graph.node:
        for out in node.output:
            if out and out not in known:
                exposed.graph.output.append(onnx.ValueInfoProto(name=out))
                known.add(out)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every value
    so.log_severity_level = 3
    try:
        session = ort.InferenceSession(exposed.SerializeToString(), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        arrays = session.run(None, inputs)
    except Exception as exc:  # noqa: BLE001 - ORT's errors are generic RuntimeErrors
        raise BadInputError(f"cannot run the graph to find its shapes: {str(exc).splitlines()[0]}",
                            hint="check that the inputs match the model's (edgesmith inspect MODEL)") from None
    values = {name: _Value(tuple(a.shape), str(a.dtype), a if a.size <= 64 else None)
              for name, a in zip(names, map(np.asarray, arrays))}
    for name, a in inputs.items():
        values[name] = _Value(tuple(a.shape), str(a.dtype), a if a.size <= 64 else None)
    return values


def _attr(node, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _flops(node, cls: str, ins: list[_Value], outs: list[_Value]) -> float:
    op = node.op_type
    out = outs[0] if outs else None
    if out is None or cls in ("free", "data"):
        return 0.0
    if cls in ("conv", "dwconv"):
        weight = ins[1] if len(ins) > 1 else None
        if weight is None or len(weight.shape) < 3:
            return 0.0
        kernel = int(np.prod(weight.shape[2:]))
        if op == "ConvTranspose":  # every input pixel scatters into Cout/group x kernel outputs
            return 2.0 * ins[0].numel * weight.shape[1] * kernel
        return 2.0 * out.numel * weight.shape[1] * kernel  # weight: (Cout, Cin/group, k...)
    if cls == "matmul":
        a = ins[0]
        if op in ("Gemm", "FusedGemm"):
            k = a.shape[0] if _attr(node, "transA", 0) else a.shape[-1]
        else:
            k = a.shape[-1] if a.shape else 1
        return 2.0 * out.numel * k + (out.numel if op == "Gemm" and len(ins) > 2 else 0)
    if cls == "norm":
        return 5.0 * ins[0].numel
    if cls == "pool":
        kernel = _attr(node, "kernel_shape", None)
        if kernel:
            return float(out.numel * int(np.prod(kernel)))
        return float(ins[0].numel)
    if op == "Resize":
        return 4.0 * out.numel
    return float(out.numel * _TRANSCENDENTAL.get(op, 1))
