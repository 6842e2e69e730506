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
import re
from typing import Any

from edgesmith.errors import BadInputError

SUPPORTED = (
    "Conv1d / Conv2d (groups=1, dilation 1)", "Linear", "BatchNorm (folded into the conv/linear before it)",
    "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax (last axis of a 2-D tensor)",
    "MaxPool1d/2d", "AvgPool1d/2d", "AdaptiveAvgPool to a divisor of the input size", "mean over spatial axes",
    "Flatten / reshape to (batch, -1)", "add of two same-shape tensors", "concatenation on the channel axis",
    "Dropout / Identity",
)

_PASS_THROUGH = {"dropout", "clone", "contiguous", "alias", "detach", "lift_fresh_copy", "_assert_tensor_metadata"}


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
    return _Lowering(export_program(variant), variant.inputs[0]).run()


class _Lowering:
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
        from torch import fx

        user_inputs = set(self.program.graph_signature.user_inputs)
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                if node.name in user_inputs:
                    self.placeholder = self.graph.placeholder(_identifier(self.spec.name))
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
        op = node.target.__name__.split(".")[0] if hasattr(node.target, "__name__") else str(node.target)
        handler = getattr(self, f"op_{op}", None)
        if op in _PASS_THROUGH:
            self.values[node.name] = self.values[node.args[0].name]
            return
        if op in ("sym_size", "sym_numel", "sym_stride") or not _is_tensor(node):
            return  # shape arithmetic on the dynamic batch: no layer
        if op == "getitem":  # batch norm's (out, mean, var) tuple
            self.values[node.name] = self.values[node.args[0].name]
            return
        if handler is None:
            self.unsupported(node, f"op aten.{op}")
        handler(node)

    def unsupported(self, node, what: str):
        source, source_type = _source(node)
        raise BadInputError(
            f"layer {source!r} ({source_type}) cannot be converted to HLS: {what} has no hls4ml layer",
            hint="the hls target converts: " + "; ".join(SUPPORTED)
                 + ". Replace or remove that layer (attention, LayerNorm and dynamic convolutions are not"
                   " supported), or export to another target",
        )

    def add_module(self, node, module, kind: str, inputs: list) -> None:
        source, source_type = _source(node)
        base = _identifier(source if source != node.name else node.name)
        name, i = base, 1
        while hasattr(self.root, name):
            i += 1
            name = f"{base}_{i}"
        self.root.add_module(name, module)
        self.values[node.name] = self.graph.call_module(name, tuple(inputs))
        self.made[node.name] = module
        self.layers.append(Layer(name, kind, source, source_type))

    def input(self, node, index: int = 0):
        arg = node.args[index]
        if arg.name not in self.values:
            self.unsupported(node, f"an input that is a constant ({arg.name})")
        return self.values[arg.name]

    # ---- weighted layers -----------------------------------------------------------------------------

    def op_conv1d(self, node):
        self.conv(node, *node.args[1:])

    def op_conv2d(self, node):
        self.conv(node, *node.args[1:])

    def op_convolution(self, node):
        w, b, stride, padding, dilation, transposed, _, groups = node.args[1:9]
        if transposed:
            self.unsupported(node, "a transposed convolution")
        self.conv(node, w, b, stride, padding, dilation, groups)

    def conv(self, node, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        nn = self.torch.nn
        weight, bias = self.tensor(w), self.tensor(b)
        if weight is None:
            self.unsupported(node, "a convolution whose weights are computed at run time (dynamic convolution)")
        if isinstance(padding, str):
            self.unsupported(node, f"padding={padding!r} (give the padding as numbers)")
        if groups != 1:
            self.unsupported(node, f"a grouped/depthwise convolution (groups={groups})")
        if any(d != 1 for d in _pair(dilation)):
            self.unsupported(node, f"a dilated convolution (dilation={dilation})")
        cls = {3: nn.Conv1d, 4: nn.Conv2d}.get(weight.dim())
        if cls is None:
            self.unsupported(node, f"a {weight.dim() - 2}-D convolution")
        conv = cls(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), stride=stride, padding=padding,
                   bias=True)
        conv.weight.data = weight
        conv.bias.data = bias if bias is not None else self.torch.zeros(weight.shape[0])
        self.add_module(node, conv, "conv", [self.input(node)])

    def op_linear(self, node):
        weight = self.tensor(node.args[1])
        bias = self.tensor(node.args[2]) if len(node.args) > 2 else None
        if weight is None:
            self.unsupported(node, "a matrix product of two activations (attention)")
        linear = self.torch.nn.Linear(weight.shape[1], weight.shape[0], bias=True)
        linear.weight.data = weight
        linear.bias.data = bias if bias is not None else self.torch.zeros(weight.shape[0])
        self.add_module(node, linear, "linear", [self.input(node)])

    def op_matmul(self, node):
        self.unsupported(node, "a matrix product of two activations (attention)")

    op_bmm = op_mm = op_baddbmm = op_einsum = op_matmul

    def op_batch_norm(self, node):
        x, gamma, beta, mean, var = node.args[:5]
        eps = node.args[7] if len(node.args) > 7 else 1e-5
        self.batch_norm(node, x, gamma, beta, mean, var, eps)

    def op__native_batch_norm_legit_no_training(self, node):
        x, gamma, beta, mean, var, _, eps = node.args[:7]
        self.batch_norm(node, x, gamma, beta, mean, var, eps)

    def batch_norm(self, node, x, gamma, beta, mean, var, eps):
        torch = self.torch
        mean, var = self.tensor(mean), self.tensor(var)
        if mean is None or var is None:
            self.unsupported(node, "BatchNorm in training mode (no running statistics)")
        gamma = self.tensor(gamma)
        beta = self.tensor(beta)
        scale = (gamma if gamma is not None else torch.ones_like(var)) / torch.sqrt(var + eps)
        shift = (beta if beta is not None else torch.zeros_like(var)) - mean * scale
        producer = self.made.get(x.name)
        if isinstance(producer, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)) and self.users[x.name] == 1:
            shape = (-1,) + (1,) * (producer.weight.dim() - 1)
            producer.weight.data = producer.weight.data * scale.reshape(shape)
            producer.bias.data = producer.bias.data * scale + shift
            self.values[node.name] = self.values[x.name]
            owner = self._name_of(x)
            for layer in self.layers:
                if layer.name == owner:
                    layer.folded.append(_source(node)[0])
            return
        rank = len(_shape(node))
        cls = torch.nn.BatchNorm2d if rank == 4 else torch.nn.BatchNorm1d
        bn = cls(var.shape[0], eps=0.0).eval()
        bn.weight.data, bn.bias.data = scale, shift
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        self.add_module(node, bn, "batchnorm", [self.input(node)])

    def _name_of(self, aten_node) -> str | None:
        target = self.values.get(aten_node.name)
        return getattr(target, "target", None)

    # ---- activations, pooling, reshapes, merges ------------------------------------------------------

    def op_relu(self, node):
        self.add_module(node, self.torch.nn.ReLU(), "activation", [self.input(node)])

    def op_leaky_relu(self, node):
        slope = node.args[1] if len(node.args) > 1 else 0.01
        self.add_module(node, self.torch.nn.LeakyReLU(slope), "activation", [self.input(node)])

    def op_sigmoid(self, node):
        self.add_module(node, self.torch.nn.Sigmoid(), "activation", [self.input(node)])

    def op_tanh(self, node):
        self.add_module(node, self.torch.nn.Tanh(), "activation", [self.input(node)])

    def op_softmax(self, node):
        rank = len(_shape(node))
        if rank != 2 or node.args[1] not in (-1, 1):
            self.unsupported(node, f"softmax over axis {node.args[1]} of a {rank}-D tensor")
        self.add_module(node, self.torch.nn.Softmax(dim=-1), "activation", [self.input(node)])

    op__softmax = op_softmax

    def op_max_pool2d(self, node):
        self.pool(node, self.torch.nn.MaxPool2d, *node.args[1:])

    def op_max_pool1d(self, node):
        self.pool(node, self.torch.nn.MaxPool1d, *node.args[1:])

    def op_avg_pool2d(self, node):
        self.pool(node, self.torch.nn.AvgPool2d, *node.args[1:])

    def op_avg_pool1d(self, node):
        self.pool(node, self.torch.nn.AvgPool1d, *node.args[1:])

    def pool(self, node, cls, kernel, stride=None, padding=0, *rest):
        if rest and isinstance(rest[0], (list, tuple)) and any(d != 1 for d in rest[0]) and "Max" in cls.__name__:
            self.unsupported(node, "a dilated max-pool")
        if any(rest[i] is True for i in range(min(len(rest), 2))):
            self.unsupported(node, "a pool with ceil_mode=True")
        stride = stride or kernel
        if any(_pair(padding)):
            self.unsupported(node, f"a pool with padding {padding}")
        self.add_module(node, cls(tuple(kernel), stride=tuple(_pair(stride)) if stride else None),
                        "pool", [self.input(node)])

    def op_adaptive_avg_pool2d(self, node):
        size = list(_shape(node.args[0])[2:])
        out = list(node.args[1])
        if any(o <= 0 or s % o for s, o in zip(size, out)):
            self.unsupported(node, f"an adaptive average pool from {size} to {out} (the output must divide the input)")
        kernel = tuple(s // o for s, o in zip(size, out))
        self.add_module(node, self.torch.nn.AvgPool2d(kernel, stride=kernel), "pool", [self.input(node)])

    def op_mean(self, node):
        shape = _shape(node.args[0])
        dims = sorted(d % len(shape) for d in node.args[1])
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if len(shape) != 4 or dims != [2, 3]:
            self.unsupported(node, f"a mean over axes {list(node.args[1])} of a {len(shape)}-D tensor")
        self.add_module(node, self.torch.nn.AvgPool2d(tuple(shape[2:])), "pool", [self.input(node)])
        if not keep:
            pooled = self.values[node.name]
            self.root.add_module(f"{self.layers[-1].name}_flatten", self.torch.nn.Flatten())
            self.values[node.name] = self.graph.call_module(f"{self.layers[-1].name}_flatten", (pooled,))
            self.layers.append(Layer(f"{self.layers[-1].name}_flatten", "reshape", self.layers[-1].source, "Flatten"))

    def op_flatten(self, node):
        start = node.args[1] if len(node.args) > 1 else 0
        end = node.args[2] if len(node.args) > 2 else -1
        rank = len(_shape(node.args[0]))
        if start != 1 or end not in (-1, rank - 1):
            self.unsupported(node, f"flatten from axis {start} to {end}")
        if self.flattens_input(node):
            return
        self.add_module(node, self.torch.nn.Flatten(), "reshape", [self.input(node)])

    def op_view(self, node):
        out = _shape(node)
        if len(out) != 2:
            self.unsupported(node, f"a reshape to {list(out)} (only flattening to (batch, features) converts)")
        if self.flattens_input(node):
            return
        self.add_module(node, self.torch.nn.Flatten(), "reshape", [self.input(node)])

    op_reshape = op_view
    op__unsafe_view = op_view

    def flattens_input(self, node) -> bool:
        """A flatten of the model input itself: the HLS design takes the flat values (same order)."""
        if self.values.get(node.args[0].name) is not self.placeholder or self.layers:
            return False
        self.values[node.name] = self.placeholder
        self.input_shape = (int(math.prod(self.input_shape)),)
        return True

    def op_add(self, node):
        a, b = node.args[:2]
        if not all(hasattr(v, "name") and v.name in self.values for v in (a, b)):
            self.unsupported(node, "an add of a constant (a bias outside a conv/linear layer)")
        if str(_shape(a)) != str(_shape(b)):
            self.unsupported(node, f"an add with broadcasting ({list(_shape(a))} + {list(_shape(b))})")
        source, source_type = _source(node)
        self.values[node.name] = self.graph.call_function(self.torch.add, (self.values[a.name], self.values[b.name]))
        self.layers.append(Layer(self.values[node.name].name, "add", source, source_type))

    def op_cat(self, node):
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else 0
        if len(tensors) != 2 or dim % len(_shape(node)) != 1:
            self.unsupported(node, f"a concatenation of {len(tensors)} tensors on axis {dim}")
        source, source_type = _source(node)
        ins = [self.input_of(node, t) for t in tensors]
        self.values[node.name] = self.graph.call_function(self.torch.cat, (ins,), {"dim": 1})
        self.layers.append(Layer(self.values[node.name].name, "concat", source, source_type))

    def input_of(self, node, arg):
        if arg.name not in self.values:
            self.unsupported(node, f"an input that is a constant ({arg.name})")
        return self.values[arg.name]


def _source(node) -> tuple[str, str]:
    """(module path, class name) of the module a node came from, or (node name, ATen op)."""
    stack = {k: v for k, v in (node.meta.get("nn_module_stack") or {}).items()
             if not k.startswith("_empty_nn_module_stack")}
    if stack:
        path, cls = list(stack.values())[-1]
        cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
        return path or node.name, cls_name.rsplit(".", 1)[-1]
    return node.name, f"aten.{getattr(node.target, '__name__', node.target)}"


def _is_tensor(node) -> bool:
    val = node.meta.get("val")
    return val is None or hasattr(val, "shape") or isinstance(val, (list, tuple))


def _shape(node) -> tuple:
    val = node.meta.get("val")
    return tuple(val.shape) if val is not None else ()


def _identifier(name: str) -> str:
    """A C identifier for an HLS layer name (``features.0`` -> ``features_0``, ``0`` -> ``layer_0``)."""
    ident = re.sub(r"\W", "_", name)
    return ident if re.match(r"^[A-Za-z_]", ident) else f"layer_{ident}"


def _pair(value) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value]
