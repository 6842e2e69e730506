"""Re-parameterisation: fold inference BatchNorm into the preceding Conv or Linear.

Used by EfficientFormer, LSNet and SLAB (see TECHNIQUES.md, "Re-parameterisation").
The fold works on the ``torch.export`` graph, so it applies alike to eager
modules, ``.pt2`` programs and Hugging Face models::

    before:  x -> conv2d(W, b) -> batch_norm(gamma, beta, mean, var, eps) -> y
    after:   x -> conv2d(W * a[:, None, None, None], a * b + c)            -> y
             with a = gamma / sqrt(var + eps), c = beta - a * mean

(``linear`` likewise, with ``W * a[:, None]``.) A convolution or linear layer
without bias gets one. The fold is exact up to float rounding; the pass checks
it on the variant's example inputs and reports the largest difference.
"""

from __future__ import annotations

import dataclasses

from edgesmith.optimize import PASSES, Pass

_FOLDABLE = ("conv1d", "conv2d", "conv3d", "linear")


@dataclasses.dataclass
class ReparamOptions:
    """Options of the ``reparam`` pass.

    Attributes:
        check: Compare the folded model with the original on the example inputs
            (fp32 parity tolerance of :mod:`edgesmith.parity`).
    """

    check: bool = True


def _target_name(node) -> str:
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def _attr(gm, node):
    """The tensor behind a get_attr node (or None for a None argument)."""
    if node is None:
        return None
    if getattr(node, "op", None) != "get_attr":
        raise LookupError(node)
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def fold_batchnorm(gm) -> list[tuple[str, str]]:
    """Fold every ``conv/linear -> batch_norm (inference)`` pair of an exported graph module in place.

    Args:
        gm: ``ExportedProgram.module()`` output; its graph uses aten ops.

    Returns:
        ``(layer, batchnorm)`` module paths of each folded pair.
    """
    import torch

    folded = []
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or _target_name(bn) != "batch_norm":
            continue
        layer = bn.args[0]
        if (
            getattr(layer, "op", None) != "call_function"
            or _target_name(layer) not in _FOLDABLE
            or len(layer.users) != 1
            or bn.args[5]  # training=True: statistics come from the batch, not foldable
        ):
            continue
        try:
            w = _attr(gm, layer.args[1])
            b = _attr(gm, layer.args[2]) if len(layer.args) > 2 else None
            gamma, beta, mean, var = (_attr(gm, a) for a in bn.args[1:5])
        except LookupError:
            continue  # a weight computed in the graph, not a parameter: leave it
        eps = float(bn.args[7])
        with torch.no_grad():
            a = torch.rsqrt(var.double() + eps)
            if gamma is not None:
                a = a * gamma.double()
            c = -a * mean.double()
            if beta is not None:
                c = c + beta.double()
            shape = (-1,) + (1,) * (w.dim() - 1)
            new_w = (w.double() * a.reshape(shape)).to(w.dtype)
            base = b.double() if b is not None else torch.zeros_like(a)
            new_b = (a * base + c).to(w.dtype)
        idx = len(folded)
        wname, bname = f"_reparam{idx}_weight", f"_reparam{idx}_bias"
        while hasattr(gm, wname):
            idx += 1
            wname, bname = f"_reparam{idx}_weight", f"_reparam{idx}_bias"
        gm.register_parameter(wname, torch.nn.Parameter(new_w, requires_grad=False))
        gm.register_parameter(bname, torch.nn.Parameter(new_b, requires_grad=False))
        with gm.graph.inserting_before(layer):
            wnode = gm.graph.get_attr(wname)
            bnode = gm.graph.get_attr(bname)
        args = list(layer.args)
        args[1] = wnode
        if len(args) > 2:
            args[2] = bnode
        else:
            args.append(bnode)
        layer.args = tuple(args)
        bn.replace_all_uses_with(layer)
        gm.graph.erase_node(bn)
        folded.append((_module_path(layer), _module_path(bn)))
    if folded:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return folded


def _module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return node.name
    return list(stack.values())[-1][0] or node.name


@PASSES.register("reparam")
class Reparam(Pass):
    """Fold inference BatchNorm into the preceding Conv or Linear (exact)."""

    name = "reparam"
    Options = ReparamOptions

    def _apply_impl(self, variant):
        from edgesmith.errors import BadInputError
        from edgesmith.models.program import export_program
        from edgesmith.parity import compare

        gm = export_program(variant).module()
        folded = fold_batchnorm(gm)
        report = {"folded": len(folded), "pairs": [f"{a} <- {b}" for a, b in folded]}
        if self.options.check:
            from edgesmith.models.variant import run_module

            ref = variant.run()
            new = run_module(gm, variant.inputs, variant.outputs, variant.example)
            result = compare(ref, new, precision="fp32", tier="verified")
            worst = result.worst
            report["max_abs"] = worst.max_abs if worst else 0.0
            if not result.passed:
                raise BadInputError(
                    f"reparam changed {variant.name}'s outputs: {'; '.join(result.failures)}",
                    hint="the model may use BatchNorm in a way the fold does not cover; report it",
                )
        return gm, report
