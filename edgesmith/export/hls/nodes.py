"""What the HLS lowering reads off an ATen node, and the record of one lowered layer."""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass
class Layer:
    """One layer of the lowered graph.

    Attributes:
        name: Its name in the lowered graph and in the HLS project (``features_0``).
        kind: ``conv``, ``linear``, ``batchnorm``, ``activation``, ``pool``, ``reshape``, ``add``, ``concat``.
        source: The source module's path (``features.0``), or the op's node name for free functions.
        source_type: The source module's class name, or the ATen op.
        folded: Source layers folded into this one (BatchNorm).
    """

    name: str
    kind: str
    source: str
    source_type: str
    folded: list[str] = dataclasses.field(default_factory=list)


def source_of(node) -> tuple[str, str]:
    """(module path, class name) of the module a node came from, or (node name, ATen op)."""
    stack = {k: v for k, v in (node.meta.get("nn_module_stack") or {}).items()
             if not k.startswith("_empty_nn_module_stack")}
    if stack:
        path, cls = list(stack.values())[-1]
        cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
        return path or node.name, cls_name.rsplit(".", 1)[-1]
    return node.name, f"aten.{getattr(node.target, '__name__', node.target)}"


def is_tensor(node) -> bool:
    """Whether a node computes a tensor (or tensors), not a size."""
    val = node.meta.get("val")
    return val is None or hasattr(val, "shape") or isinstance(val, (list, tuple))


def shape_of(node) -> tuple:
    """The shape torch recorded for a node's value (``()`` where none)."""
    val = node.meta.get("val")
    return tuple(val.shape) if val is not None else ()


def identifier(name: str) -> str:
    """A C identifier for an HLS layer name (``features.0`` -> ``features_0``, ``0`` -> ``layer_0``)."""
    ident = re.sub(r"\W", "_", name)
    return ident if re.match(r"^[A-Za-z_]", ident) else f"layer_{ident}"


def pair(value) -> list[int]:
    """An int or a list of ints as a list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]
