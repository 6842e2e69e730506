"""MatFormer's nested fine-tune: every FFN granularity trained at once, in one set of weights.

MatFormer (Devvrit, Kudugunta et al., 2023) trains the nested sub-models jointly: each
step sums the loss of the model at several granularities, where granularity ``g`` runs
every FFN on its first ``g`` hidden units only. The first units then learn to work on
their own, so any prefix (and any per-layer mix of prefixes) is a usable smaller model.

Here the granularities run as masks on the full-width model (units past the width are
zeroed where they enter the down projection), which computes exactly what the sliced
model computes::

    one step:  for each widths w in granularities:  loss += L(model with FFN units >= w zeroed)
               backward, AdamW step (by default only the FFN weights train)

The loss is the next-token cross-entropy for a language model on training text; for any
other model, distillation from the original model's outputs on training inputs (KL of
the softmax for (N, K) logits, mean squared error otherwise).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

from edgesmith.errors import BadInputError
from edgesmith.training.checkpoint import Checkpoint
from edgesmith.training.loop import Objective, Trainer

CHECKPOINT_FORMAT = "edgesmith-matformer-1"


@contextlib.contextmanager
def masked(ffns, widths: list[int] | None):
    """Within the block, each FFN uses only its first ``widths[i]`` hidden units (None: all)."""
    import torch

    if widths is None:
        yield
        return

    def hook(width, axis):
        def zero_tail(_module, args):
            h = args[0]
            if width >= h.shape[axis]:
                return None
            shape = [1] * h.dim()
            shape[axis] = h.shape[axis]
            keep = (torch.arange(h.shape[axis], device=h.device) < width).to(h.dtype).reshape(shape)
            return (h * keep, *args[1:])
        return zero_tail

    handles = [f.layer(f.down).register_forward_pre_hook(hook(w, f.axis)) for f, w in zip(ffns, widths)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def evaluate(objective: Objective, module, ffns, widths, index) -> float:
    """Mean loss of ``module`` masked to ``widths`` over samples ``index``, without gradients."""
    with masked(ffns, widths):
        return objective.evaluate(module, index)


def train_nested(module, ffns, granularities: list[list[int]], objective: Objective, options,
                 checkpoint: Checkpoint, state: dict[str, Any] | None, orders: list,
                 progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Fine-tune ``module`` (full width, units already ordered) with the nested loss, in place.

    Args:
        module: The full-width model; trained in place.
        ffns: Its FFNs (:func:`edgesmith.optimize.matformer.find_ffns` of ``module``).
        granularities: Per-layer widths to train together, one list per granularity.
        objective: Batches and loss.
        options: The pass options (``steps``, ``batch``, ``lr``, ``tune``, ``seed``, ``save_every``).
        checkpoint: Where progress is saved (the saved state holds ``orders`` too).
        state: The checkpoint's state when resuming (:meth:`Checkpoint.load`), else None.
        orders: The unit orders applied to ``module`` (saved, so a resumed run applies the same).
        progress: Called as ``progress(description, step, steps)``.

    Returns:
        The training report: steps, samples, granularities, first and last losses per granularity, seconds.
    """
    o = options
    if objective.samples < o.batch:
        raise BadInputError(f"pass 'matformer': {objective.samples} training samples, fewer than one batch of {o.batch}",
                            hint="give more training text/data, a shorter seq_len or a smaller batch")
    ffn_params = {id(p) for f in ffns for key in [*f.ups, *f.norms, f.down] for p in f.layer(key).parameters()}
    named = [(n, p) for n, p in module.named_parameters()
             if p.is_floating_point() and (o.tune == "all" or id(p) in ffn_params)]
    trainer = Trainer("matformer", module, named, o, checkpoint, state, {"orders": orders}, progress)

    def step(_i: int) -> list[float]:
        index = trainer.batch_index(objective.samples, o.batch)
        args = objective.args(index)
        targets = objective.targets(args, index)
        losses = []
        for widths in granularities:
            with masked(ffns, widths):
                loss = objective.loss(module, args, targets) / len(granularities)
            loss.backward()  # one granularity at a time: only one graph is held
            losses.append(float(loss.detach()) * len(granularities))
        return losses

    report = trainer.run(step, lambda losses: f"matformer nested training, loss {' / '.join(f'{x:.3f}' for x in losses)}")
    return {**report, "batch": o.batch, "samples": objective.samples, "granularities": granularities}
