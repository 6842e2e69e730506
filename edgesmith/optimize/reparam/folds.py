"""Exact inference folds on a ``torch.export`` graph (aten ops), used by the ``reparam`` pass.

Each fold rewrites a pattern whose weights are constants into fewer ops with the
same outputs up to float rounding (arithmetic in float64, stored in the
weight's dtype). Every function takes ``gm`` (``ExportedProgram.module()``),
edits it in place and returns one line per rewrite. A pattern that does not
match exactly (a shared intermediate, a padded conv after a BatchNorm, a
non-constant scale) is left alone.

==========================  ===============================================================
fold                        before -> after
==========================  ===============================================================
``fold_constants``          ops whose inputs are all weights (``ls.unsqueeze(-1)``, a bias
                            table indexed by a constant) -> one precomputed weight
``fold_bn_forward``         conv/linear -> batch_norm -> conv/linear with scaled weights
``fold_bn_backward``        batch_norm -> linear, or -> unpadded conv -> one linear/conv
``fold_channel_scale``      conv/linear -> mul by a per-channel constant (LayerScale) -> conv/linear
``fold_branches``           conv_kxk(x) + conv_1x1(x) + x (RepVGG, Ding et al. 2021) -> one conv
``fold_token_norms``        RepBN / BatchNorm over token channels -> the adjacent linear(s)
                            (:mod:`edgesmith.optimize.reparam.tokens`)
==========================  ===============================================================
"""

from __future__ import annotations

import torch

from edgesmith.optimize.reparam.graph import (Layer, bn_affine, finish, get_const, is_call, module_path, new_const,
                                              op_name)
from edgesmith.optimize.reparam.tokens import fold_token_norms

# Ops that are pure functions of their tensor inputs: safe to evaluate ahead of time.
_PURE = {
    "unsqueeze", "squeeze", "view", "reshape", "_unsafe_view", "permute", "transpose", "t", "flatten",
    "expand", "contiguous", "clone", "alias", "detach", "_to_copy", "to", "type_as", "select", "slice",
    "index", "index_select", "gather", "cat", "stack", "repeat", "mul", "add", "sub", "div", "neg",
    "reciprocal", "sqrt", "rsqrt", "pow", "exp", "log", "abs", "sigmoid", "tanh", "softmax", "_softmax",
    "upsample_bilinear2d", "upsample_nearest2d", "flip", "roll", "sum", "mean", "matmul", "mm",
}
_CONST_LIMIT = 1 << 24  # elements: never materialise a huge constant (an expand to a batch, say)


def fold_constants(gm) -> list[str]:
    """Evaluate pure ops whose tensor inputs are all constants; the result becomes one constant."""
    changes = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or op_name(node) not in _PURE:
            continue
        inputs = node.all_input_nodes
        if not inputs or not all(n.op == "get_attr" for n in inputs):
            continue
        try:
            values = {n: get_const(gm, n) for n in inputs}
        except LookupError:
            continue
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), values.__getitem__)
        with torch.no_grad():
            value = node.target(*args, **kwargs)
        if not isinstance(value, torch.Tensor) or value.numel() > _CONST_LIMIT:
            continue
        node.replace_all_uses_with(new_const(gm, value, node, stem="_const"))
        gm.graph.erase_node(node)
        changes.append(f"constant {node.name}")
    return finish(gm, changes)


def fold_bn_forward(gm) -> list[str]:
    """conv/linear -> batch_norm: scale the layer's output channels and shift its bias."""
    changes = []
    for bn in list(gm.graph.nodes):
        if not is_call(bn, "batch_norm") or len(bn.args[0].users) != 1:
            continue
        try:
            layer = Layer(gm, bn.args[0])
            scale, shift = bn_affine(gm, bn)
        except LookupError:
            continue
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        layer.replace(gm, layer.weight.double() * scale.reshape(shape), scale * layer.bias64() + shift)
        bn.replace_all_uses_with(layer.node)
        gm.graph.erase_node(bn)
        changes.append(f"{module_path(layer.node)} <- {module_path(bn)}")
    return finish(gm, changes)


def fold_bn_backward(gm) -> list[str]:
    """batch_norm -> linear (on 2-D features) or -> conv without padding: fold into the layer's inputs."""
    changes = []
    for bn in list(gm.graph.nodes):
        if not is_call(bn, "batch_norm") or len(bn.users) != 1:
            continue
        user = next(iter(bn.users))
        try:
            layer = Layer(gm, user)
            scale, shift = bn_affine(gm, bn)
        except LookupError:
            continue
        val = bn.args[0].meta.get("val")
        if user.args[0] is not bn or val is None:
            continue
        w = layer.weight.double()
        if layer.kind == "linear":
            if val.dim() != 2:  # BN normalises dim 1; linear mixes the last dim: same only for (N, C)
                continue
            new_w = w * scale[None, :]
            new_b = layer.bias64() + w @ shift
        else:
            if any(layer.padding):  # padded zeros would not be shifted: not exact
                continue
            out, in_per_group = w.shape[:2]
            group_of_out = torch.arange(out) // (out // layer.groups)
            chans = group_of_out[:, None] * in_per_group + torch.arange(in_per_group)[None, :]
            extra = (1,) * (w.dim() - 2)
            new_w = w * scale[chans].reshape(out, in_per_group, *extra)
            new_b = layer.bias64() + (w * shift[chans].reshape(out, in_per_group, *extra)).flatten(1).sum(1)
        layer.replace(gm, new_w, new_b)
        user.replace_input_with(bn, bn.args[0])
        gm.graph.erase_node(bn)
        changes.append(f"{module_path(bn)} -> {module_path(user)}")
    return finish(gm, changes)


def fold_channel_scale(gm) -> list[str]:
    """conv/linear -> mul by a constant that varies only along the output channels (LayerScale)."""
    changes = []
    for mul in list(gm.graph.nodes):
        if not is_call(mul, "mul") or len(mul.args) != 2:
            continue
        for layer_node, const_node in (mul.args, mul.args[::-1]):
            if getattr(layer_node, "op", None) != "call_function" or len(layer_node.users) != 1:
                continue
            try:
                layer = Layer(gm, layer_node)
                s = get_const(gm, const_node)
            except LookupError:
                continue
            scale = _channel_vector(s, layer, layer_node.meta.get("val"))
            if scale is None:
                continue
            shape = (-1,) + (1,) * (layer.weight.dim() - 1)
            layer.replace(gm, layer.weight.double() * scale.reshape(shape), layer.bias64() * scale)
            mul.replace_all_uses_with(layer_node)
            gm.graph.erase_node(mul)
            changes.append(f"{module_path(layer_node)} <- scale {module_path(mul)}")
            break
    return finish(gm, changes)


def _channel_vector(s, layer, out_val):
    """The per-output-channel vector behind a broadcast constant, or None if it varies along another axis."""
    if out_val is None or s.dim() > out_val.dim():
        return None
    out = layer.weight.shape[0]
    channel_axis = out_val.dim() - 1 if layer.kind == "linear" else 1
    shape = (1,) * (out_val.dim() - s.dim()) + tuple(s.shape)
    if any(size != 1 for axis, size in enumerate(shape) if axis != channel_axis):
        return None
    vec = s.reshape(-1).double()
    if vec.numel() == 1:
        return vec.expand(out).clone()
    return vec if vec.numel() == out else None


def fold_branches(gm) -> list[str]:
    """A sum of convs of one input (and the input itself) -> one conv with the summed, padded kernels."""
    changes = []
    # Outermost adds first, so a RepVGG block merges in one step; an add tree that does not merge
    # (it also sums an unrelated tensor) is retried from its inner adds.
    for node in reversed(list(gm.graph.nodes)):
        if node._erased or not node.users or not is_call(node, "add"):
            continue
        terms = _add_terms(node)
        merged = _merge(gm, terms) if terms is not None else None
        if merged is None:
            continue
        node.replace_all_uses_with(merged)
        gm.graph.eliminate_dead_code()  # the merged adds and branches, so no later candidate sees them
        changes.append(f"{module_path(merged)}: {len(terms)} branches -> one conv")
    return finish(gm, changes)


def _add_terms(node):
    """The leaves of an add tree whose inner adds have one user, or None."""
    terms, stack = [], [node]
    while stack:
        n = stack.pop()
        if is_call(n, "add") and len(n.args) == 2 and n.kwargs.get("alpha", 1) == 1 and (
                n is node or len(n.users) == 1):
            if not all(isinstance(a, torch.fx.Node) for a in n.args):
                return None
            stack.extend(n.args)
        else:
            terms.append(n)
    return terms if len(terms) >= 2 else None


def _merge(gm, terms):
    """Build the merged conv for ``terms`` (convs of one input, plus that input), or None."""
    convs, identity = [], 0
    source = None
    for t in terms:
        try:
            layer = Layer(gm, t)
        except LookupError:
            layer = None
        if layer is not None and layer.kind != "linear" and len(t.users) == 1:
            convs.append(layer)
            x = t.args[0]
        else:
            identity += 1
            x = t
        if source is None:
            source = x
        elif x is not source:
            return None
    if not convs:
        return None
    first = convs[0]
    if any(c.stride != first.stride or c.dilation != first.dilation or c.groups != first.groups
           or c.weight.shape[:2] != first.weight.shape[:2] or set(c.dilation) != {1} for c in convs):
        return None
    # Each branch must centre its kernel on the same input pixel: padding - (k - 1) / 2 equal for all.
    size = [max(c.weight.shape[2 + i] for c in convs) for i in range(first.weight.dim() - 2)]
    offsets = set()
    for c in convs:
        for i, k in enumerate(c.weight.shape[2:]):
            if k % 2 == 0:
                return None
            offsets.add((i, c.padding[i] - (k - 1) // 2))
    if len(offsets) != len(size):
        return None
    out, in_per_group = first.weight.shape[:2]
    weight = torch.zeros((out, in_per_group, *size), dtype=torch.float64)
    bias = torch.zeros(out, dtype=torch.float64)
    for c in convs:
        weight += _pad_kernel(c.weight.double(), size)
        bias += c.bias64()
    if identity:
        if any(s != 1 for s in first.stride) or out != in_per_group * first.groups:
            return None
        centre = tuple(k // 2 for k in size)
        for o in range(out):
            weight[(o, o % in_per_group, *centre)] += identity
    padding = [c + k // 2 for (_, c), k in zip(sorted(offsets), size)]
    first.replace(gm, weight, bias, padding=padding)
    return first.node


def _pad_kernel(w, size):
    """Zero-pad a kernel symmetrically to ``size`` (odd sizes), centre kept."""
    pads = []
    for k, target in zip(reversed(w.shape[2:]), reversed(size)):
        p = (target - k) // 2
        pads += [p, p]
    return torch.nn.functional.pad(w, pads)


FOLDS = (fold_constants, fold_bn_forward, fold_channel_scale, fold_branches, fold_bn_backward)


def fold_all(gm, max_rounds: int = 10) -> dict[str, list[str]]:
    """Apply every fold until none applies (a merge can expose a new BN fold, and so on).

    Returns:
        Fold name -> the rewrites it made.
    """
    done: dict[str, list[str]] = {}
    for _ in range(max_rounds):
        changed = False
        for fold in (*FOLDS, fold_token_norms):
            changes = fold(gm)
            if changes:
                done.setdefault(fold.__name__, []).extend(changes)
                changed = True
        if not changed:
            break
    return done
