"""Re-parameterisation: fold inference-time structure into fewer, equivalent layers.

Used by EfficientFormer, LSNet and SLAB (see TECHNIQUES.md, "Re-parameterisation";
RepVGG, Ding et al. 2021, for branch merging). The folds work on the
``torch.export`` graph, so they apply alike to eager modules, ``.pt2`` programs
and Hugging Face models. The main one::

    before:  x -> conv2d(W, b) -> batch_norm(gamma, beta, mean, var, eps) -> y
    after:   x -> conv2d(W * a[:, None, None, None], a * b + c)            -> y
             with a = gamma / sqrt(var + eps), c = beta - a * mean

and, repeated until none applies (:mod:`edgesmith.optimize.reparam.folds`): BatchNorm
into the following linear or unpadded conv, a per-channel constant scale
(LayerScale) into the preceding conv/linear, ``conv3x3(x) + conv1x1(x) + x``
into one conv, ops on weights alone (a bias table indexed by constants)
into one precomputed weight, and SLAB's RepBN (or a BatchNorm over token channels)
into the Linear that reads or produces it (:mod:`edgesmith.optimize.reparam.tokens`). A
norm that cannot fold stays, and the pass says which and why. Every fold is exact up to float rounding; the pass
checks it on the variant's example inputs and reports the largest difference.
"""

from __future__ import annotations

import dataclasses

from edgesmith.optimize.base import PASSES, Pass
from edgesmith.options import option


@dataclasses.dataclass
class ReparamOptions:
    """Options of the ``reparam`` pass.

    Each field's help is its ``help`` metadata (:func:`edgesmith.options.option`).
    """

    check: bool = option(True, "Compare the folded model with the original on the example inputs (fp32 parity "
                               "tolerance of :mod:`edgesmith.parity`).")


@PASSES.register
class Reparam(Pass):
    """Fold BatchNorm, LayerScale and RepVGG branches into convs and linears (exact)."""

    name = "reparam"
    Options = ReparamOptions

    def _apply_impl(self, variant, module):
        from edgesmith.errors import BadInputError
        from edgesmith.models.program import export_program
        from edgesmith.optimize.reparam.tokens import unfolded_norms
        from edgesmith.optimize.reparam.folds import fold_all
        from edgesmith.parity import compare

        gm = export_program(variant).module()
        done = fold_all(gm)
        constants = done.pop("fold_constants", [])
        report = {
            "folded": sum(len(v) for v in done.values()),
            "by_fold": {name.removeprefix("fold_"): len(v) for name, v in done.items()},
            "constants": len(constants),
            "pairs": [line for v in done.values() for line in v],
            "kept": unfolded_norms(gm),
        }
        self.notes += report["kept"]
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
