"""The ``torch.export`` graph pieces every reparam fold works with: op names, constants, layers.

Shared by the folds of :mod:`edgesmith.optimize.reparam.folds` and the token-norm folds of
:mod:`edgesmith.optimize.reparam.tokens`.
"""

from __future__ import annotations

import torch

_LAYERS = ("conv1d", "conv2d", "conv3d", "linear")


def op_name(node) -> str:
    """The aten op name of a call_function node (``conv2d`` for ``aten.conv2d.default``)."""
    target = node.target
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def is_call(node, *names) -> bool:
    """Whether ``node`` calls one of the aten ops ``names``."""
    return getattr(node, "op", None) == "call_function" and op_name(node) in names


def get_const(gm, node):
    """The tensor behind a ``get_attr`` node, None for a None argument; LookupError otherwise."""
    if node is None:
        return None
    if getattr(node, "op", None) != "get_attr":
        raise LookupError(node)
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, torch.Tensor):
        return obj
    raise LookupError(node)


def new_const(gm, value, before, stem: str = "_reparam"):
    """Register ``value`` as a frozen parameter of ``gm`` and return a get_attr node placed before ``before``."""
    idx = 0
    while hasattr(gm, f"{stem}{idx}"):
        idx += 1
    name = f"{stem}{idx}"
    gm.register_parameter(name, torch.nn.Parameter(value.detach().clone(), requires_grad=False))
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(name)


def module_path(node) -> str:
    """The source module a node came from (``stages.0.conv``), else the node name."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return node.name
    return list(stack.values())[-1][0] or node.name


class Layer:
    """A conv or linear call with its constant weight, bias and geometry.

    Raises:
        LookupError: The node is not a conv/linear with constant weights and plain numeric geometry.
    """

    def __init__(self, gm, node):
        if not is_call(node, *_LAYERS) or node.target.__name__.endswith("padding"):
            raise LookupError(node)
        self.node = node
        self.kind = op_name(node)
        args = list(node.args) + [None] * (7 - len(node.args))
        self.weight = get_const(gm, args[1])
        self.bias = get_const(gm, args[2])
        if self.kind == "linear":
            return
        n = self.weight.dim() - 2
        self.stride = list(args[3] if args[3] is not None else [1] * n)
        self.padding = list(args[4] if args[4] is not None else [0] * n)
        self.dilation = list(args[5] if args[5] is not None else [1] * n)
        self.groups = int(args[6] if args[6] is not None else 1)
        for seq in (self.stride, self.padding, self.dilation):
            if len(seq) == 1:
                seq *= n
            if not all(isinstance(v, int) for v in seq):
                raise LookupError(node)

    def replace(self, gm, weight, bias, padding=None):
        """Point the node at new (float64-computed) weight and bias, cast to the old dtype."""
        dtype = self.weight.dtype
        w = new_const(gm, weight.to(dtype), self.node)
        b = new_const(gm, bias.to(dtype), self.node)
        if self.kind == "linear":
            self.node.args = (self.node.args[0], w, b)
        else:
            pad = self.padding if padding is None else padding
            self.node.args = (self.node.args[0], w, b, self.stride, pad, self.dilation, self.groups)

    def bias64(self):
        out = self.weight.shape[0]
        return self.bias.double() if self.bias is not None else torch.zeros(out, dtype=torch.float64)


def bn_affine(gm, bn):
    """(scale, shift) float64 of an inference batch_norm node, so that bn(x) = scale * x + shift per channel."""
    if not is_call(bn, "batch_norm") or bn.args[5]:  # training=True uses batch statistics
        raise LookupError(bn)
    gamma, beta, mean, var = (get_const(gm, a) for a in bn.args[1:5])
    if mean is None or var is None:
        raise LookupError(bn)
    scale = torch.rsqrt(var.double() + float(bn.args[7]))
    if gamma is not None:
        scale = scale * gamma.double()
    shift = -scale * mean.double()
    if beta is not None:
        shift = shift + beta.double()
    return scale, shift


def finish(gm, changes: list[str]) -> list[str]:
    """Clean ``gm`` up after a fold's rewrites (dead nodes, unused weights) and return ``changes``."""
    if changes:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        # Weights no node reads any more: folded away, or made by a fold and replaced by a later one
        # (BN, then LayerScale, into one conv). Left in place they would count and be saved.
        used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
        for name, _ in [*gm.named_parameters(), *gm.named_buffers()]:
            if name not in used:
                owner, _, attr = name.rpartition(".")
                delattr(gm.get_submodule(owner) if owner else gm, attr)
        gm.recompile()
    return changes
