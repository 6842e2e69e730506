"""The HLS op table: ATen op -> the standard module hls4ml converts it to.

Each function takes the lowering in progress (:class:`~edgesmith.export.hls.graph.Lowering`:
the lowered graph so far, the weights, the helpers that add a module or refuse a
layer) and the ATen node, and adds the module(s) for the node, folds it into the
layer before it, or refuses it naming the layer and why. Functions are keyed by
the ATen op's name without its overload (``conv2d``, ``_softmax``). The lowering
(:func:`~edgesmith.export.hls.graph.lower`) imports this module and runs the table.
"""

from __future__ import annotations

from edgesmith.export.hls.nodes import Layer, pair, shape_of, source_of
from edgesmith.registry import OpTable

SUPPORTED = (
    "Conv1d / Conv2d (groups=1, dilation 1)", "Linear", "BatchNorm (folded into the conv/linear before it)",
    "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax (last axis of a 2-D tensor)",
    "MaxPool1d/2d", "AvgPool1d/2d", "AdaptiveAvgPool to a divisor of the input size", "mean over spatial axes",
    "Flatten / reshape to (batch, -1)", "add of two same-shape tensors", "concatenation on the channel axis",
    "Dropout / Identity",
)

OPS: OpTable = OpTable("HLS", "layer", hint="the hls target converts: " + "; ".join(SUPPORTED))


# ---- weighted layers ---------------------------------------------------------------------------------
@OPS.op("conv1d")
def conv1d(low, node):
    """Conv1d."""
    _conv(low, node, *node.args[1:])


@OPS.op("conv2d")
def conv2d(low, node):
    """Conv2d."""
    _conv(low, node, *node.args[1:])


@OPS.op("convolution")
def convolution(low, node):
    """The core convolution op (not transposed)."""
    w, b, stride, padding, dilation, transposed, _, groups = node.args[1:9]
    if transposed:
        low.unsupported(node, "a transposed convolution")
    _conv(low, node, w, b, stride, padding, dilation, groups)


def _conv(low, node, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    nn = low.torch.nn
    weight, bias = low.tensor(w), low.tensor(b)
    if weight is None:
        low.unsupported(node, "a convolution whose weights are computed at run time (dynamic convolution)")
    if isinstance(padding, str):
        low.unsupported(node, f"padding={padding!r} (give the padding as numbers)")
    if groups != 1:
        low.unsupported(node, f"a grouped/depthwise convolution (groups={groups})")
    if any(d != 1 for d in pair(dilation)):
        low.unsupported(node, f"a dilated convolution (dilation={dilation})")
    cls = {3: nn.Conv1d, 4: nn.Conv2d}.get(weight.dim())
    if cls is None:
        low.unsupported(node, f"a {weight.dim() - 2}-D convolution")
    conv = cls(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), stride=stride, padding=padding,
               bias=True)
    conv.weight.data = weight
    conv.bias.data = bias if bias is not None else low.torch.zeros(weight.shape[0])
    low.add_module(node, conv, "conv", [low.input(node)])


@OPS.op("linear")
def linear(low, node):
    """Linear, with a bias (zeros where the source has none)."""
    weight = low.tensor(node.args[1])
    bias = low.tensor(node.args[2]) if len(node.args) > 2 else None
    if weight is None:
        low.unsupported(node, "a matrix product of two activations (attention)")
    linear = low.torch.nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    linear.weight.data = weight
    linear.bias.data = bias if bias is not None else low.torch.zeros(weight.shape[0])
    low.add_module(node, linear, "linear", [low.input(node)])


@OPS.op("matmul", "bmm", "mm", "baddbmm", "einsum")
def matmul(low, node):
    """A product of two activations: refused (attention has no hls4ml layer)."""
    low.unsupported(node, "a matrix product of two activations (attention)")


@OPS.op("batch_norm")
def batch_norm(low, node):
    """BatchNorm: folded into the conv/linear layer before it, else a BatchNorm layer."""
    x, gamma, beta, mean, var = node.args[:5]
    eps = node.args[7] if len(node.args) > 7 else 1e-5
    _batch_norm(low, node, x, gamma, beta, mean, var, eps)


@OPS.op("_native_batch_norm_legit_no_training")
def native_batch_norm_legit_no_training(low, node):
    """Inference BatchNorm as torch.export records it (see :func:`batch_norm`)."""
    x, gamma, beta, mean, var, _, eps = node.args[:7]
    _batch_norm(low, node, x, gamma, beta, mean, var, eps)


def _batch_norm(low, node, x, gamma, beta, mean, var, eps):
    torch = low.torch
    mean, var = low.tensor(mean), low.tensor(var)
    if mean is None or var is None:
        low.unsupported(node, "BatchNorm in training mode (no running statistics)")
    gamma = low.tensor(gamma)
    beta = low.tensor(beta)
    scale = (gamma if gamma is not None else torch.ones_like(var)) / torch.sqrt(var + eps)
    shift = (beta if beta is not None else torch.zeros_like(var)) - mean * scale
    producer = low.made.get(x.name)
    if isinstance(producer, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)) and low.users[x.name] == 1:
        shape = (-1,) + (1,) * (producer.weight.dim() - 1)
        producer.weight.data = producer.weight.data * scale.reshape(shape)
        producer.bias.data = producer.bias.data * scale + shift
        low.values[node.name] = low.values[x.name]
        owner = low.name_of(x)
        for layer in low.layers:
            if layer.name == owner:
                layer.folded.append(source_of(node)[0])
        return
    rank = len(shape_of(node))
    cls = torch.nn.BatchNorm2d if rank == 4 else torch.nn.BatchNorm1d
    bn = cls(var.shape[0], eps=0.0).eval()
    bn.weight.data, bn.bias.data = scale, shift
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    low.add_module(node, bn, "batchnorm", [low.input(node)])


# ---- activations, pooling, reshapes, merges ---------------------------------------------------------
@OPS.op("relu")
def relu(low, node):
    """ReLU."""
    low.add_module(node, low.torch.nn.ReLU(), "activation", [low.input(node)])


@OPS.op("leaky_relu")
def leaky_relu(low, node):
    """LeakyReLU."""
    slope = node.args[1] if len(node.args) > 1 else 0.01
    low.add_module(node, low.torch.nn.LeakyReLU(slope), "activation", [low.input(node)])


@OPS.op("sigmoid")
def sigmoid(low, node):
    """Sigmoid."""
    low.add_module(node, low.torch.nn.Sigmoid(), "activation", [low.input(node)])


@OPS.op("tanh")
def tanh(low, node):
    """Tanh."""
    low.add_module(node, low.torch.nn.Tanh(), "activation", [low.input(node)])


@OPS.op("softmax", "_softmax")
def softmax(low, node):
    """Softmax over the last axis of a 2-D tensor."""
    rank = len(shape_of(node))
    if rank != 2 or node.args[1] not in (-1, 1):
        low.unsupported(node, f"softmax over axis {node.args[1]} of a {rank}-D tensor")
    low.add_module(node, low.torch.nn.Softmax(dim=-1), "activation", [low.input(node)])


@OPS.op("max_pool2d")
def max_pool2d(low, node):
    """MaxPool2d."""
    _pool(low, node, low.torch.nn.MaxPool2d, *node.args[1:])


@OPS.op("max_pool1d")
def max_pool1d(low, node):
    """MaxPool1d."""
    _pool(low, node, low.torch.nn.MaxPool1d, *node.args[1:])


@OPS.op("avg_pool2d")
def avg_pool2d(low, node):
    """AvgPool2d."""
    _pool(low, node, low.torch.nn.AvgPool2d, *node.args[1:])


@OPS.op("avg_pool1d")
def avg_pool1d(low, node):
    """AvgPool1d."""
    _pool(low, node, low.torch.nn.AvgPool1d, *node.args[1:])


def _pool(low, node, cls, kernel, stride=None, padding=0, *rest):
    if rest and isinstance(rest[0], (list, tuple)) and any(d != 1 for d in rest[0]) and "Max" in cls.__name__:
        low.unsupported(node, "a dilated max-pool")
    if any(rest[i] is True for i in range(min(len(rest), 2))):
        low.unsupported(node, "a pool with ceil_mode=True")
    stride = stride or kernel
    if any(pair(padding)):
        low.unsupported(node, f"a pool with padding {padding}")
    low.add_module(node, cls(tuple(kernel), stride=tuple(pair(stride)) if stride else None),
                    "pool", [low.input(node)])


@OPS.op("adaptive_avg_pool2d")
def adaptive_avg_pool2d(low, node):
    """AdaptiveAvgPool2d to a size that divides the input: a fixed AvgPool2d."""
    size = list(shape_of(node.args[0])[2:])
    out = list(node.args[1])
    if any(o <= 0 or s % o for s, o in zip(size, out)):
        low.unsupported(node, f"an adaptive average pool from {size} to {out} (the output must divide the input)")
    kernel = tuple(s // o for s, o in zip(size, out))
    low.add_module(node, low.torch.nn.AvgPool2d(kernel, stride=kernel), "pool", [low.input(node)])


@OPS.op("mean")
def mean(low, node):
    """A mean over the spatial axes of a 4-D tensor: AvgPool2d (and Flatten without keepdim)."""
    shape = shape_of(node.args[0])
    dims = sorted(d % len(shape) for d in node.args[1])
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if len(shape) != 4 or dims != [2, 3]:
        low.unsupported(node, f"a mean over axes {list(node.args[1])} of a {len(shape)}-D tensor")
    low.add_module(node, low.torch.nn.AvgPool2d(tuple(shape[2:])), "pool", [low.input(node)])
    if not keep:
        pooled = low.values[node.name]
        low.root.add_module(f"{low.layers[-1].name}_flatten", low.torch.nn.Flatten())
        low.values[node.name] = low.graph.call_module(f"{low.layers[-1].name}_flatten", (pooled,))
        low.layers.append(Layer(f"{low.layers[-1].name}_flatten", "reshape", low.layers[-1].source, "Flatten"))


@OPS.op("flatten")
def flatten(low, node):
    """Flatten from axis 1 (nothing when it flattens the model input)."""
    start = node.args[1] if len(node.args) > 1 else 0
    end = node.args[2] if len(node.args) > 2 else -1
    rank = len(shape_of(node.args[0]))
    if start != 1 or end not in (-1, rank - 1):
        low.unsupported(node, f"flatten from axis {start} to {end}")
    if low.flattens_input(node):
        return
    low.add_module(node, low.torch.nn.Flatten(), "reshape", [low.input(node)])


@OPS.op("view", "reshape", "_unsafe_view")
def view(low, node):
    """A reshape to (batch, features): Flatten (nothing when it flattens the model input)."""
    out = shape_of(node)
    if len(out) != 2:
        low.unsupported(node, f"a reshape to {list(out)} (only flattening to (batch, features) converts)")
    if low.flattens_input(node):
        return
    low.add_module(node, low.torch.nn.Flatten(), "reshape", [low.input(node)])


@OPS.op("add")
def add(low, node):
    """The sum of two same-shape activations."""
    a, b = node.args[:2]
    if not all(hasattr(v, "name") and v.name in low.values for v in (a, b)):
        low.unsupported(node, "an add of a constant (a bias outside a conv/linear layer)")
    if str(shape_of(a)) != str(shape_of(b)):
        low.unsupported(node, f"an add with broadcasting ({list(shape_of(a))} + {list(shape_of(b))})")
    source, source_type = source_of(node)
    low.values[node.name] = low.graph.call_function(low.torch.add, (low.values[a.name], low.values[b.name]))
    low.layers.append(Layer(low.values[node.name].name, "add", source, source_type))


@OPS.op("cat")
def cat(low, node):
    """The concatenation of two activations on the channel axis."""
    tensors = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else 0
    if len(tensors) != 2 or dim % len(shape_of(node)) != 1:
        low.unsupported(node, f"a concatenation of {len(tensors)} tensors on axis {dim}")
    source, source_type = source_of(node)
    ins = [low.input_of(node, t) for t in tensors]
    low.values[node.name] = low.graph.call_function(low.torch.cat, (ins,), {"dim": 1})
    low.layers.append(Layer(low.values[node.name].name, "concat", source, source_type))

