"""SLAB's progressive re-parameterised BatchNorm (``prepbn``): LayerNorm out, foldable BatchNorm in.

SLAB (Guo et al., 2024, arXiv 2405.11582) replaces the LayerNorms of transformer blocks with
RepBN, a BatchNorm over the channels plus a learned multiple of its input::

    RepBN(x) = BN(x) + alpha * x            (per token, over the last axis; alpha a scalar)

At inference BN is a per-channel affine of fixed statistics, so RepBN is ``a * x + b`` with
``a = gamma / sqrt(var + eps) + alpha`` and ``b = beta - gamma * mean / sqrt(var + eps)``, which
the ``reparam`` pass folds into the adjacent Linear: no statistics are computed at run time.
Switching a trained model from LayerNorm to BatchNorm at once collapses it, so training moves
progressively::

    Norm(x) = lam * LN(x) + (1 - lam) * RepBN(x),    lam: 1 -> 0 linearly over the first
                                                     ``decay`` share of the steps, then 0

Here the LayerNorm keeps the model's trained weights, RepBN starts from them (gamma and beta
copied), and the loss is distillation from the original model plus the labels' cross-entropy
where the data has labels (:mod:`edgesmith.training.loop`). After training the BatchNorm
statistics are re-estimated over the training data and only RepBN remains.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edgesmith.errors import UsageError
from edgesmith.optimize.base import PASSES, Pass
from edgesmith.options import option

CHECKPOINT_FORMAT = "edgesmith-prepbn-1"


def layer_norms(module) -> list[tuple[str, Any]]:
    """``[(name, nn.LayerNorm)]`` over one (last) axis: what ``prepbn`` converts."""
    from torch import nn

    return [(n, m) for n, m in module.named_modules()
            if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1]


@dataclasses.dataclass
class PrepbnOptions:
    """Options of the ``prepbn`` pass.

    Each field's help is its ``help`` metadata (:func:`edgesmith.options.option`).
    """

    train: str = option("", "Training data: the model's offline dataset (``sklearn-digits`` for the digits zoo "
                            "models), an ``.npz`` (one array per input, or ``x_train``/``y_train`` images), an image "
                            "folder, or for a model with a tokenizer ``devils-dictionary`` / a text file.")
    data: str = option("", "The same, as ``edgesmith optimize --data`` fills it (``train`` wins when both are given).")
    steps: int = option(1000, "Training steps.")
    batch: int = option(32, "Samples per step.")
    lr: float = option(5e-4, "Peak learning rate (AdamW; warm-up over a tenth of the steps, then cosine to a tenth).")
    decay: float = option(0.8, "Share of the steps over which LayerNorm's weight ``lam`` falls from 1 to 0; the rest "
                               "train RepBN alone. SLAB uses about 0.8; a decay as long as the run leaves no step "
                               "for BatchNorm alone and diverged in users' reports.")
    alpha: float = option(0.0, "RepBN's ``alpha`` at the start. The paper's 1 suits training from scratch; "
                               "converting a trained model, 0 starts RepBN as a per-channel norm with LayerNorm's "
                               "weights, which kept digits-vit at 98.9-99.2% over three seeds (98.1-98.6% at 1; "
                               "LayerNorm: 98.3%) and keeps a post-norm (BERT) residual stream from growing while "
                               "LayerNorm fades.")
    label_weight: float = option(0.5, "Share of the loss given to labels when the data has them (the rest: "
                                      "distillation).")
    seq_len: int = option(128, "Token window for text data.")
    samples: int = option(0, "At most this many training samples (text windows); 0: all.")
    seed: int = option(0, "Seed of the batch order.")
    save_every: int = option(50, "Steps between checkpoints.")
    checkpoint: str = option("", "Directory of the training checkpoint (``edgesmith optimize`` uses ``OUT.ckpt``).")
    resume: bool = option(False, "Continue the training from the checkpoint.")
    force: bool = option(False, "Start over even if ``checkpoint`` holds a run.")

    def __post_init__(self):
        for key in ("steps", "batch", "seq_len", "save_every"):
            if getattr(self, key) < 1:
                raise UsageError(f"pass 'prepbn': {key}={getattr(self, key)} must be at least 1")
        if not 0.0 < self.decay <= 1.0:
            raise UsageError(f"pass 'prepbn': decay={self.decay} is outside (0, 1]",
                             hint="decay is the share of the steps over which LayerNorm fades out, e.g. 0.8")
        if self.lr <= 0 or not 0.0 <= self.label_weight <= 1.0:
            raise UsageError("pass 'prepbn': lr must be positive and label_weight within [0, 1]")


@PASSES.register
class Prepbn(Pass):
    """Replace LayerNorms with RepBN, trained progressively (SLAB's PRepBN); ``reparam`` then folds them."""

    name = "prepbn"
    Options = PrepbnOptions
    copies_module = True

    def _apply_impl(self, variant, module):
        import torch

        from edgesmith.models.inspect import module_kinds
        from edgesmith.training.checkpoint import Checkpoint
        from edgesmith.optimize.slab.layers import ProgressiveNorm
        from edgesmith.training.loop import Trainer, held_out_accuracy, objective_for

        o = self.options
        norms = layer_norms(variant.module)
        if not norms:
            raise self.refuse(f"{variant.name} has no LayerNorm to convert "
                              f"(found: {module_kinds(variant.module, 'norm') or 'no normalisation layer'})",
                              hint="prepbn converts torch.nn.LayerNorm over the channel axis (ViT, BERT, "
                                   "EfficientFormer's 3D blocks); RMSNorm and BatchNorm models have none")
        data, objective = objective_for(variant, o, "prepbn", o.samples or None)
        run = {**{k: getattr(o, k) for k in ("train", "data", "steps", "batch", "lr", "decay", "alpha",
                                               "label_weight", "seq_len", "samples", "seed")},
               "model": variant.source.get("sha256") or variant.name}
        checkpoint = Checkpoint("prepbn", CHECKPOINT_FORMAT, o.checkpoint, run, o.resume, o.force)
        state = checkpoint.load()

        module = module.float()
        mixed = []
        for name, norm in layer_norms(module):
            mixed.append((name, ProgressiveNorm(norm, o.alpha)))
            module.set_submodule(name, mixed[-1][1])
        named = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
        trainer = Trainer("prepbn", module, named, o, checkpoint, state, progress=self.progress)
        fade = max(1, round(o.decay * o.steps))

        def step(i: int) -> list[float]:
            lam = max(0.0, 1.0 - i / fade)
            for _, m in mixed:
                m.lam.fill_(lam)
            loss = objective.batch_loss(module, trainer.batch_index(objective.samples, o.batch))
            loss.backward()
            return [float(loss.detach()), lam]

        report: dict[str, Any] = {"converted": [n for n, _ in mixed], "samples": objective.samples,
                                  "fade_steps": fade}
        report["training"] = trainer.run(step, lambda v: f"prepbn training, loss {v[0]:.4f}, LayerNorm share {v[1]:.2f}")
        for name, m in mixed:
            module.set_submodule(name, m.repbn)
        report["recalibrated_batches"] = _recalibrate(module, objective, trainer, o.batch)
        accuracy = held_out_accuracy(variant, module, data, "layernorm", "repbn")
        if accuracy:
            report["test_accuracy"] = accuracy
        with torch.no_grad():
            report["alpha"] = [round(float(m.repbn.alpha), 4) for _, m in mixed]
        return module.eval(), report


def _recalibrate(module, objective, trainer, batch: int, batches: int = 32) -> int:
    """Re-estimate every RepBN's statistics as a plain average over training batches, without gradients."""
    import torch

    from edgesmith.optimize.slab.layers import RepBN

    norms = [m for m in module.modules() if isinstance(m, RepBN)]
    for m in norms:
        m.bn.reset_running_stats()
        m.bn.momentum = None  # cumulative average
        m.bn.train()  # only these: the model's other BatchNorms and dropouts stay in eval mode
    count = min(batches, max(1, objective.samples // batch))
    try:
        with torch.no_grad():
            for _ in range(count):
                module(*objective.args(trainer.batch_index(objective.samples, batch)))
    finally:
        module.eval()
        for m in norms:
            m.bn.momentum = 0.1
    return count
