"""Lower a variant to the layer graph hls4ml's PyTorch frontend converts.

hls4ml traces a model with ``torch.fx`` and converts ``nn.Module`` layers by
class (``Conv2d``, ``Linear``, ``ReLU``...) and a few functions by name
(``add``, ``cat``). Models reach the exporter in many forms (eager modules,
``torch.export`` graphs after passes), so every variant goes through the same
path: ``torch.export`` to ATen ops, then each op is mapped to one standard
module, and anything else stops the export naming the first layer that cannot
be mapped. On the way:

- BatchNorm after a conv or linear layer (its only consumer) is folded into
  the layer's weights; a lone BatchNorm stays a BatchNorm layer.
- ``AdaptiveAvgPool2d`` to a size that divides the input, and a mean over the
  spatial axes, become a fixed ``AvgPool``; ``flatten`` and a reshape to
  ``(batch, -1)`` become ``Flatten``.
- dropout, clones and aliases disappear.

The result is an ``fx.GraphModule`` of named modules (names follow the source
layers, ``features.0`` -> ``features_0``), equal to the source up to float
rounding, plus one :class:`Layer` record per module.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from edgesmith.errors import BadInputError
from edgesmith.export.hls.nodes import Layer, identifier, is_tensor, source_of
from edgesmith.export.hls.ops import OPS, SUPPORTED

_PASS_THROUGH = {"dropout", "clone", "contiguous", "alias", "detach", "lift_fresh_copy", "_assert_tensor_metadata"}


@dataclasses.dataclass
class Lowered:
    """The lowered model.

    Attributes:
        module: An ``fx.GraphModule`` in eval mode.
        layers: Its layers, in order.
        input_shape: The shape of one sample it takes: the model's, or flat when the model starts by
            flattening its input (the HLS design then takes the values in the same order).
    """

    module: Any
    layers: list[Layer]
    input_shape: tuple[int, ...]

    def layer(self, name: str) -> Layer:
        """The layer called ``name``."""
        return next(layer for layer in self.layers if layer.name == name)


def lower(variant) -> Lowered:
    """Map the variant's ops to hls4ml-convertible modules.

    Raises:
        BadInputError: An ONNX source, a model torch.export cannot capture, or an op with no
            HLS layer; the message names the source layer, its type, the op and what is supported.
    """
    from edgesmith.models.program import export_program

    if variant.module is None:
        raise BadInputError(f"{variant.name} is an ONNX model; the hls target converts PyTorch models",
                            hint="export from the PyTorch model")
    if len(variant.inputs) != 1:
        raise BadInputError(f"{variant.name} takes {len(variant.inputs)} inputs; the hls target supports one",
                            hint="wrap the model so that it takes a single tensor")
    return Lowering(export_program(variant), variant.inputs[0]).run()


class Lowering:
    """A ``torch.export`` program being lowered to hls4ml-convertible modules, one ATen node at a time.

    The op table's functions (:mod:`edgesmith.export.hls.ops`) get it with each node and build on
    it: :meth:`add_module`, :meth:`tensor` (the weights), :meth:`input`, :meth:`unsupported`.

    Args:
        program: The ``torch.export`` program.
        spec: Its one input's :class:`~edgesmith.specs.TensorSpec`.
    """

    def __init__(self, program, spec):
        import torch
        from torch import fx

        self.torch = torch
        self.program = program
        self.root = torch.nn.Module()
        self.graph = fx.Graph()
        self.values: dict[str, Any] = {}  # ATen node name -> lowered fx node
        self.layers: list[Layer] = []
        self.made: dict[str, Any] = {}  # ATen node name -> module made for it
        sig = program.graph_signature
        self.params = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
                       **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
        self.users = {n.name: len(n.users) for n in program.graph.nodes}
        self.spec = spec
        self.input_shape = tuple(spec.shape[1:])
        self.placeholder = None

    def tensor(self, arg):
        """The constant behind a placeholder argument (weights, buffers), or None."""
        if arg is None or not hasattr(arg, "name") or arg.name not in self.params:
            return None
        key = self.params[arg.name]
        value = self.program.state_dict.get(key)
        if value is None:
            value = self.program.constants.get(key)
        return value.detach().clone()

    def run(self) -> Lowered:
        """Lower every node of the program, in order."""
        from torch import fx

        user_inputs = set(self.program.graph_signature.user_inputs)
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                if node.name in user_inputs:
                    self.placeholder = self.graph.placeholder(identifier(self.spec.name))
                    self.values[node.name] = self.placeholder
            elif node.op == "call_function":
                self.call(node)
            elif node.op == "output":
                outs = node.args[0]
                if len(outs) != 1:
                    raise BadInputError(f"the model returns {len(outs)} tensors; the hls target supports one",
                                        hint="return a single tensor")
                self.graph.output(self.values[outs[0].name])
        module = fx.GraphModule(self.root, self.graph).eval()
        return Lowered(module, self.layers, self.input_shape)

    # ---- one ATen op -------------------------------------------------------------------------------

    def call(self, node) -> None:
        """Lower one ATen node: pass it through, skip it, or run its function from the op table."""
        op = node.target.__name__.split(".")[0] if hasattr(node.target, "__name__") else str(node.target)
        if op in _PASS_THROUGH:
            self.values[node.name] = self.values[node.args[0].name]
            return
        if op in ("sym_size", "sym_numel", "sym_stride") or not is_tensor(node):
            return  # shape arithmetic on the dynamic batch: no layer
        if op == "getitem":  # batch norm's (out, mean, var) tuple
            self.values[node.name] = self.values[node.args[0].name]
            return
        if op not in OPS:
            self.unsupported(node, f"op aten.{op}")
        OPS.get(op)(self, node)

    def unsupported(self, node, what: str):
        """Refuse the layer ``node`` comes from: ``what`` has no hls4ml layer.

        Raises:
            BadInputError: Naming the source layer, its type, ``what`` and what is supported.
        """
        source, source_type = source_of(node)
        raise BadInputError(
            f"layer {source!r} ({source_type}) cannot be converted to HLS: {what} has no hls4ml layer",
            hint="the hls target converts: " + "; ".join(SUPPORTED)
                 + ". Replace or remove that layer (attention, LayerNorm and dynamic convolutions are not"
                   " supported), or export to another target",
        )

    def add_module(self, node, module, kind: str, inputs: list) -> None:
        """Add ``module`` as the layer computing ``node``, named after its source layer."""
        source, source_type = source_of(node)
        base = identifier(source if source != node.name else node.name)
        name, i = base, 1
        while hasattr(self.root, name):
            i += 1
            name = f"{base}_{i}"
        self.root.add_module(name, module)
        self.values[node.name] = self.graph.call_module(name, tuple(inputs))
        self.made[node.name] = module
        self.layers.append(Layer(name, kind, source, source_type))

    def input(self, node, index: int = 0):
        """The lowered value of the node's argument ``index`` (refused if it is a constant)."""
        arg = node.args[index]
        if arg.name not in self.values:
            self.unsupported(node, f"an input that is a constant ({arg.name})")
        return self.values[arg.name]

    def name_of(self, aten_node) -> str | None:
        """The lowered layer's name an ATen node's value comes from (None if not a module's)."""
        target = self.values.get(aten_node.name)
        return getattr(target, "target", None)

    def flattens_input(self, node) -> bool:
        """A flatten of the model input itself: the HLS design takes the flat values (same order)."""
        if self.values.get(node.args[0].name) is not self.placeholder or self.layers:
            return False
        self.values[node.name] = self.placeholder
        self.input_shape = (int(math.prod(self.input_shape)),)
        return True

    def input_of(self, node, arg):
        """The lowered value of ``arg``, an argument of ``node`` (refused if it is a constant)."""
        if arg.name not in self.values:
            self.unsupported(node, f"an input that is a constant ({arg.name})")
        return self.values[arg.name]
