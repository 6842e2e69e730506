"""A small ONNX graph builder: named initializers, nodes with generated output names, typed IO.

The fused graphs are written node by node from a module's weights rather than
rewritten from the dynamo exporter's output, so the builder only needs to hand out
unique names, keep the weights as initializers (stored once however often they are
used) and assemble a model with the opsets the graph uses: the default domain and
ONNX Runtime's contrib domain (``com.microsoft``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

MS = "com.microsoft"  # ONNX Runtime's contrib operators


class NotFusable(Exception):
    """The model has a part the fused graph does not compute; the message names it (the exporter's note)."""


class GraphBuilder:
    """Accumulates the nodes, initializers and IO of one ONNX graph.

    Args:
        name: Graph name.
        opset: Opset of the default domain.
    """

    def __init__(self, name: str, opset: int):
        self.name = name
        self.opset = opset
        self.nodes: list = []
        self.initializers: list = []
        self.inputs: list = []
        self.outputs: list = []
        self._names: Counter = Counter()
        self._consts: dict[tuple, str] = {}

    def _fresh(self, base: str) -> str:
        self._names[base] += 1
        count = self._names[base]
        return base if count == 1 else f"{base}_{count - 1}"

    def weight(self, name: str, array: np.ndarray) -> str:
        """Add ``array`` as an initializer under a unique name derived from ``name``; return the name."""
        from onnx import numpy_helper

        name = self._fresh(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, value, dtype=np.int64) -> str:
        """A small constant (shape vector, axis list, scalar), shared between the nodes that use it."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self.weight("const", array)
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, *, domain: str = "",
           name: str | None = None, **attrs: Any) -> str | list[str]:
        """Add a node; return its output name (one output) or names (several).

        Args:
            op_type: Operator name.
            inputs: Input names; ``""`` leaves an optional input out.
            outputs: How many outputs to name, or their names.
            domain: ``""`` (ONNX) or :data:`MS`.
            name: Node name prefix (the scope a profiler shows).
            **attrs: Node attributes.
        """
        from onnx import helper

        base = self._fresh(name or op_type)
        names = ([f"{base}/out{i}" if i else f"{base}/out" for i in range(outputs)]
                 if isinstance(outputs, int) else list(outputs))
        self.nodes.append(helper.make_node(op_type, inputs, names, name=base, domain=domain, **attrs))
        return names[0] if len(names) == 1 else names

    def input(self, name: str, dtype, shape: list) -> str:
        """Declare a graph input (``shape`` entries are ints or axis names)."""
        self.inputs.append(_value_info(name, dtype, shape))
        return name

    def output(self, name: str, dtype, shape: list) -> None:
        """Declare a graph output (a node must produce ``name``)."""
        self.outputs.append(_value_info(name, dtype, shape))

    def op_counts(self) -> dict[str, int]:
        """How many nodes of each operator the graph holds, contrib ones as ``com.microsoft.NAME``."""
        counts = Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in self.nodes)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def model(self, producer: str = "edgesmith"):
        """The ``ModelProto`` (IR version ONNX Runtime reads; opsets ``""`` and ``com.microsoft``)."""
        from onnx import helper

        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", self.opset), helper.make_opsetid(MS, 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name=producer)
        model.ir_version = min(model.ir_version, 10)  # what the ONNX Runtime releases of this stack read
        return model


def _value_info(name: str, dtype, shape: list):
    from onnx import helper

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return helper.make_tensor_value_info(name, elem, shape)


def count_nodes(model) -> int:
    """Nodes of a ``ModelProto``'s main graph, its functions' bodies not expanded."""
    return len(model.graph.node)
