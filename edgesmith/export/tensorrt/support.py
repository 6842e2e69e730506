"""Check an ONNX graph against TensorRT's documented ONNX operator support, before any engine is built.

The table (``tensorrt_ops.yaml``) records, for the TensorRT version it names, the
opset range, which ops the ONNX parser imports, the tensor types each takes, and
the restrictions to check by name (``axes`` given as a constant, 2-D/3-D
pooling, the ``Indices`` output of MaxPool unused...; the checks are in
:mod:`edgesmith.export.tensorrt.rules`). :func:`check_onnx` walks
every node (subgraphs of ``If``/``Loop``/``Scan`` too) and returns a
:class:`SupportReport`: ``problems`` (what TensorRT would refuse, each naming
the node, its op and why) and ``notes`` (what it takes with a change, such as
DOUBLE tensors cast down to FLOAT).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgesmith.export.tensorrt.rules import RULES

TABLE = Path(__file__).with_name("tensorrt_ops.yaml")

# ONNX TensorProto data type -> the table's type name
_TYPE_NAMES = {1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING",
               9: "BOOL", 10: "FP16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64",
               15: "COMPLEX128", 16: "BF16", 17: "FP8", 18: "FP8E4M3FNUZ", 19: "FP8E5M2", 20: "FP8E5M2FNUZ",
               21: "UINT4", 22: "INT4", 23: "FP4"}


@dataclass
class Problem:
    """One thing TensorRT would refuse.

    Attributes:
        node: The node's name (or the tensor's, for a graph input/output).
        op: Its op type (``domain::Op`` outside the default domain), or ``tensor``.
        reason: Why, in words.
        origin: Where it came from in the PyTorch model (``from aten.det in module 'head.2' (Linear)``),
            as the torch exporter recorded it; empty where it did not.
    """

    node: str
    op: str
    reason: str
    origin: str = ""

    def __str__(self) -> str:
        where = f", {self.origin}" if self.origin else ""
        return f"node {self.node!r} ({self.op}{where}): {self.reason}"


@dataclass
class SupportReport:
    """What :func:`check_onnx` found.

    Attributes:
        tensorrt: The TensorRT version the table describes.
        nodes: Nodes checked (subgraphs included).
        op_counts: Op type -> number of nodes.
        problems: What TensorRT would refuse, in graph order.
        notes: What it accepts with a change (DOUBLE cast down...).
    """

    tensorrt: str
    nodes: int = 0
    op_counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Whether nothing would be refused."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The manifest form."""
        return {"tensorrt": self.tensorrt, "nodes": self.nodes, "clean": self.clean,
                "op_counts": dict(sorted(self.op_counts.items())),
                "problems": [vars(p) for p in self.problems], "notes": list(self.notes)}


@functools.cache
def support_table() -> dict[str, Any]:
    """The parsed support table (see the module docstring)."""
    import yaml

    with open(TABLE, encoding="utf-8") as f:
        return yaml.safe_load(f)


def check_onnx(model) -> SupportReport:
    """Check every node, tensor type and the opset of an ONNX model against the support table.

    Args:
        model: An ``onnx.ModelProto`` (shape inference is run on a copy to learn tensor types).

    Returns:
        The :class:`SupportReport`.
    """
    import onnx

    table = support_table()
    report = SupportReport(tensorrt=str(table["tensorrt"]))
    lo, hi = table["opsets"]
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not lo <= imp.version <= hi:
            report.problems.append(Problem("(model)", "opset", f"opset {imp.version} is outside TensorRT "
                                           f"{report.tensorrt}'s range {lo}-{hi}; export with -O opset={hi}"))
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # a graph ONNX cannot infer still gets its ops checked; types are then partly unknown
        inferred = model
    graph = inferred.graph
    types = _tensor_types(graph)
    consts = _constants(graph)
    used = _used_names(graph)
    edges = {v.name for v in [*graph.input, *graph.output]}
    for value in [*graph.input, *graph.output]:
        name = _TYPE_NAMES.get(value.type.tensor_type.elem_type, "?")
        if name not in table["types"] and name != "?":
            report.problems.append(Problem(value.name, "tensor", f"type {name} is not a TensorRT tensor type"))
    _check_graph(graph, table, types, consts, used, edges, report)
    return report


def _check_graph(graph, table, types, consts, used, edges, report) -> None:
    ops, rules, data = table["ops"], table.get("rules", {}), table.get("data", {})
    doubles = []
    for node in graph.node:
        report.nodes += 1
        before = len(report.problems)
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        report.op_counts[op] = report.op_counts.get(op, 0) + 1
        label = node.name or (node.output[0] if node.output else op)
        if node.domain not in ("", "ai.onnx"):
            reason = f"domain {node.domain!r} has no TensorRT importer (custom ops need a TensorRT plugin)"
        elif node.op_type not in ops:
            reason = f"not in TensorRT {report.tensorrt}'s ONNX operator table"
        elif ops[node.op_type] is None:
            reason = f"TensorRT {report.tensorrt} does not support {op}"
        else:
            reason = None
        if reason:
            report.problems.append(Problem(label, op, reason, _origin(node)))
            continue
        tensor = _data_tensor(node, data.get(node.op_type, "input0"))
        kind = _TYPE_NAMES.get(types.get(tensor)) if tensor else None
        if kind == "DOUBLE":
            doubles.append(label)
            kind = "FP32"  # the parser casts it down
        if kind and kind not in ops[node.op_type]:
            if not (kind == "UINT8" and tensor in edges):
                report.problems.append(Problem(label, op, f"takes {', '.join(ops[node.op_type])}, not {kind} "
                                                          f"(tensor {tensor!r})"))
        for rule in rules.get(node.op_type, []):
            reason = RULES.get(rule)(node, consts, used)
            if reason:
                report.problems.append(Problem(label, op, reason))
        for problem in report.problems[before:]:
            problem.origin = _origin(node)
        for attr in node.attribute:  # If / Loop / Scan bodies
            if attr.type == _GRAPH:
                _check_graph(attr.g, table, {**types, **_tensor_types(attr.g)}, {**consts, **_constants(attr.g)},
                             used | _used_names(attr.g), edges, report)
    if doubles:
        report.notes.append(f"{len(doubles)} node(s) compute in DOUBLE (first: {doubles[0]}); TensorRT casts "
                            "them to FLOAT, clamping to the float range")


def _origin(node) -> str:
    """``from aten.det.default in module 'head.2' (Linear)``, from the torch exporter's node metadata."""
    import ast

    props = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
        classes = ast.literal_eval(props.get("pkg.torch.onnx.class_hierarchy", "[]"))
    except (ValueError, SyntaxError):
        return ""
    if not classes:
        return ""
    text = f"from {classes[-1]}"
    if len(scopes) >= 2 and len(classes) >= 2 and scopes[-2]:
        text += f" in module {scopes[-2]!r} ({classes[-2].rsplit('.', 1)[-1]})"
    return text


def _data_tensor(node, where: str) -> str | None:
    names = node.output if where.startswith("output") else node.input
    index = int(where[-1])
    return names[index] if len(names) > index and names[index] else None


def _tensor_types(graph) -> dict[str, int]:
    types = {t.name: t.data_type for t in graph.initializer}
    for v in [*graph.input, *graph.output, *graph.value_info]:
        if v.type.HasField("tensor_type"):
            types[v.name] = v.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    return types


def _constants(graph) -> dict[str, Any]:
    """Tensor name -> its numpy value, for initializers and Constant nodes."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(a.t)
                elif a.name in ("value_int", "value_ints", "value_float", "value_floats"):
                    import onnx

                    values[node.output[0]] = onnx.helper.get_attribute_value(a)
    return values


_GRAPH = 5  # onnx.AttributeProto.GRAPH


def _used_names(graph) -> set[str]:
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(i for i in node.input if i)
        for attr in node.attribute:
            if attr.type == _GRAPH:  # names a subgraph reads from the outer scope
                used |= _used_names(attr.g)
    return used


def first_problem_error(report: SupportReport, model_name: str):
    """The error for a graph TensorRT would refuse: the first problem by name, and how many more.

    Returns:
        A :class:`~edgesmith.errors.BadInputError` (exit code 3).
    """
    from edgesmith.errors import BadInputError

    first = report.problems[0]
    more = len(report.problems) - 1
    others = sorted({p.op for p in report.problems[1:]} - {first.op})
    tail = f" ({more} more problem(s){': ' + ', '.join(others) if others else ''})" if more else ""
    return BadInputError(
        f"TensorRT {report.tensorrt} cannot take {model_name}: {first}{tail}",
        hint="replace that op in the model (or give TensorRT a plugin for it), or export to another target",
    )
