"""Folds of per-channel norms over token features (RepBN, BatchNorm1d) into the adjacent Linear.

A norm whose statistics are fixed at inference is, per channel of the last axis, an affine
``y = a * x + b``. SLAB's RepBN (:mod:`edgesmith.optimize.slab.prepbn`) is ``BN(x) + alpha * x``,
so ``a = gamma / sqrt(var + eps) + alpha`` and ``b = beta - gamma * mean / sqrt(var + eps)``.
The affine folds, exactly, into

- every Linear that reads it (backward: ``W' = W diag(a)``, ``bias' = bias + W b``), also through
  ops that commute with a per-channel affine: views that keep the last axis, a mean or a token
  ``select``/``slice`` over other axes (the pooled or class token before a head);
- else the Linear that alone produces its input (forward: ``W' = diag(a) W``,
  ``bias' = a * bias + b``: the upstream bias is scaled too, not dropped).

A norm with neither, e.g. after a residual add whose output also feeds the next residual,
stays; :func:`unfolded_norms` says which and why.
"""

from __future__ import annotations

from edgesmith.optimize.reparam.graph import Layer, bn_affine, finish, get_const, is_call, module_path, op_name

_VIEWS = ("view", "reshape", "_unsafe_view", "clone", "contiguous", "alias", "detach", "dropout")


def _affine(gm, node):
    """``(a, b, input)`` float64 if ``node`` is a per-last-axis affine norm (RepBN or 2-D BatchNorm), else None."""
    if is_call(node, "batch_norm"):
        val = node.args[0].meta.get("val")
        inside_repbn = len(node.users) == 1 and _affine(gm, next(iter(node.users))) is not None
        if val is None or val.dim() != 2 or inside_repbn:
            return None
        try:
            a, b = bn_affine(gm, node)
        except LookupError:
            return None
        return a, b, node.args[0]
    if not is_call(node, "add") or len(node.args) != 2:
        return None
    for bn, mul in (node.args, node.args[::-1]):
        if not (is_call(bn, "batch_norm") and is_call(mul, "mul")) or len(bn.users) != 1 or len(mul.users) != 1:
            continue
        x = bn.args[0]
        others = [m for m in mul.args if m is not x]
        val = getattr(x, "meta", {}).get("val")
        if len(others) != 1 or len(mul.args) != 2 or val is None or val.dim() != 2:
            continue
        try:
            alpha = get_const(gm, others[0]).double()
            a, b = bn_affine(gm, bn)
        except LookupError:
            continue
        if alpha.numel() not in (1, a.numel()):
            continue
        return a + alpha.reshape(-1), b, x
    return None


def _keeps_last(node) -> bool:
    """``node`` maps each last-axis channel to itself (so a per-channel affine commutes with it)."""
    src, out = node.args[0], node.meta.get("val")
    src_val = getattr(src, "meta", {}).get("val")
    if out is None or src_val is None:
        return False
    if op_name(node) in _VIEWS:
        return out.dim() >= 1 and out.shape[-1] == src_val.shape[-1]
    dims = None
    if op_name(node) == "mean":
        dims = node.args[1] if len(node.args) > 1 else None
        dims = list(range(src_val.dim())) if dims is None else [dims] if isinstance(dims, int) else list(dims)
    elif op_name(node) in ("select", "slice"):
        dims = [node.args[1] if len(node.args) > 1 else 0]
    if dims is None:
        return False
    return all(d % src_val.dim() != src_val.dim() - 1 for d in dims) and out.shape[-1] == src_val.shape[-1]


def _readers(node):
    """The Linear nodes reading ``node`` through channel-keeping ops, or the first other reader."""
    layers, stack = [], [node]
    while stack:
        n = stack.pop()
        for user in n.users:
            if is_call(user, "linear") and user.args[0] is n:
                layers.append(user)
            elif user.op == "call_function" and user.args and user.args[0] is n and _keeps_last(user):
                stack.append(user)
            else:
                return layers, user
    return layers, None


def _producer(node):
    """The Linear that alone produces ``node`` (through channel-keeping views), or the op that does instead."""
    n = node
    while True:
        if is_call(n, "linear"):
            return n, None
        if n.op == "call_function" and op_name(n) in _VIEWS and _keeps_last(n) and len(n.args[0].users) == 1:
            n = n.args[0]
            continue
        return None, n


def fold_token_norms(gm) -> list[str]:
    """Fold every per-channel affine norm over the last axis into the adjacent Linear (see the module doc)."""
    changes = []
    for node in list(gm.graph.nodes):
        if node._erased:
            continue
        found = _affine(gm, node)
        if found is None:
            continue
        a, b, x = found
        layers, other = _readers(node)
        if layers and other is None:
            try:
                parts = [Layer(gm, n) for n in layers]
            except LookupError:
                parts = []
            if parts:
                for layer in parts:
                    w = layer.weight.double()
                    layer.replace(gm, w * a[None, :], layer.bias64() + w @ b)
                node.replace_all_uses_with(x)
                changes.append(f"{module_path(node)} -> {', '.join(module_path(n) for n in layers)}")
                continue
        if len(x.users) > (1 if is_call(node, "batch_norm") else 2):
            continue
        producer, _ = _producer(x)
        if producer is None or len(producer.users) != 1:
            continue
        try:
            layer = Layer(gm, producer)
        except LookupError:
            continue
        layer.replace(gm, layer.weight.double() * a[:, None], a * layer.bias64() + b)
        node.replace_all_uses_with(x)
        changes.append(f"{module_path(producer)} <- {module_path(node)}")
    return finish(gm, changes)


def unfolded_norms(gm) -> list[str]:
    """One line per normalisation left in the graph: which, and why it did not fold."""
    lines = []
    for node in gm.graph.nodes:
        if is_call(node, "layer_norm"):
            lines.append(f"LayerNorm {module_path(node)} stays: it computes statistics at run time, nothing folds "
                         "it (convert it to RepBN with the prepbn pass first)")
            continue
        found = _affine(gm, node)
        if found is None:
            if is_call(node, "batch_norm") and not (len(node.users) == 1 and _affine(gm, next(iter(node.users)))):
                lines.append(f"BatchNorm {module_path(node)} stays: no conv or Linear next to it takes its scale "
                             "exactly (a padded conv, or a shared input or output)")
            continue
        _, _, x = found
        _, reader = _readers(node)
        _, source = _producer(x)
        kind = "RepBN" if is_call(node, "add") else "BatchNorm"
        why_out = (f"its output also feeds {op_name(reader)} ({module_path(reader)}), not only Linears"
                   if reader is not None else "no Linear reads its output")
        why_in = (f"its input comes from {op_name(source)} ({module_path(source)}), not from a Linear alone"
                  if source is not None else "the Linear before it has other readers")
        lines.append(f"{kind} {module_path(node)} stays: {why_out}, and {why_in}")
    return lines
