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
import math
import time
from typing import Any, Callable

import numpy as np

from edgesmith.errors import BadInputError
from edgesmith.optimize.checkpoint import Checkpoint

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


class Objective:
    """What the nested model is scored on: batches of a task, and the loss of the model on one.

    Args:
        variant: The original variant (its inputs name the feeds; its module is the teacher).
        feeds: Training inputs, one array per model input (first axis: samples).

    Raises:
        BadInputError: An array whose shape the input does not take.
    """

    def __init__(self, variant, feeds: dict[str, np.ndarray]):
        self.variant = variant
        self.feeds = feeds
        for spec in variant.inputs:
            got = feeds[spec.name].shape
            fixed = [(axis, d) for axis, d in enumerate(spec.shape)  # a language model takes any window length
                     if axis > 0 and axis not in spec.dynamic and variant.task != "lm"]
            if len(got) != len(spec.shape) or any(got[axis] != d for axis, d in fixed):
                raise BadInputError(f"pass 'matformer': data for input {spec.name!r} has shape {tuple(got)}; "
                                    f"{variant.name} takes {spec.describe()}",
                                    hint="store one array per input, samples along the first axis")
        self.samples = len(next(iter(feeds.values())))
        self.lm = variant.task == "lm"
        names = [s.name for s in variant.inputs]
        self.ids = names.index("input_ids") if "input_ids" in names else 0

    def args(self, index) -> list:
        """The module's positional arguments for samples ``index``."""
        import torch

        return [torch.from_numpy(np.ascontiguousarray(self.feeds[s.name][index])) for s in self.variant.inputs]

    def targets(self, args):
        """What the loss compares with: the next tokens, or the original model's outputs."""
        import torch

        from edgesmith.models.variant import flatten_outputs

        if self.lm:
            return args[self.ids][:, 1:]
        with torch.no_grad():
            return [t.detach() for t in flatten_outputs(self.variant.module(*args))]

    def loss(self, module, args, targets):
        """The task loss of ``module`` on one batch (a scalar tensor)."""
        import torch
        from torch.nn import functional as F

        from edgesmith.models.variant import flatten_outputs

        outputs = flatten_outputs(module(*args))
        if self.lm:
            logits = outputs[0][:, :-1]
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        total = 0.0
        for out, ref in zip(outputs, targets):
            if out.is_floating_point() and out.dim() == 2 and out.shape[-1] > 1:
                total = total + F.kl_div(torch.log_softmax(out, -1), torch.softmax(ref, -1), reduction="batchmean")
            elif out.is_floating_point():
                total = total + F.mse_loss(out, ref)
        return total

    def evaluate(self, module, ffns, widths, index, batch: int = 8) -> float:
        """Mean loss of ``module`` masked to ``widths`` over samples ``index``, without gradients."""
        import torch

        total, count = 0.0, 0
        with torch.no_grad(), masked(ffns, widths):
            for start in range(0, len(index), batch):
                part = index[start:start + batch]
                args = self.args(part)
                total += float(self.loss(module, args, self.targets(args))) * len(part)
                count += len(part)
        return max(total / max(count, 1), 0.0)  # a KL of equal outputs can round below zero


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
    import torch

    o = options
    if objective.samples < o.batch:
        raise BadInputError(f"pass 'matformer': {objective.samples} training samples, fewer than one batch of {o.batch}",
                            hint="give more training text/data, a shorter seq_len or a smaller batch")
    ffn_params = {id(p) for f in ffns for key in [*f.ups, *f.norms, f.down] for p in f.layer(key).parameters()}
    named = [(n, p) for n, p in module.named_parameters()
             if p.is_floating_point() and (o.tune == "all" or id(p) in ffn_params)]
    for p in module.parameters():
        p.requires_grad_(False)
    for _, p in named:
        p.requires_grad_(True)
    params = [p for _, p in named]
    optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=0.0)
    warmup = max(1, o.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine down to a tenth
        optimizer, lambda s: (s + 1) / warmup if s < warmup else
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, o.steps - warmup))))
    generator = torch.Generator().manual_seed(o.seed)
    history: list[list[float]] = []
    start = 0
    if state is not None:
        with torch.no_grad():
            trained = state["weights"]
            for name, p in named:
                p.copy_(trained[name])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        history = [list(h) for h in state["history"]]
        start = int(state["step"])

    def save(step: int) -> None:
        checkpoint.save({"step": step, "orders": orders, "weights": {n: p.detach() for n, p in named},
                         "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                         "generator": generator.get_state(), "history": history})

    began = time.perf_counter()
    module.train()
    try:
        for step in range(start, o.steps):
            index = torch.randperm(objective.samples, generator=generator)[:o.batch].numpy()
            args = objective.args(index)
            targets = objective.targets(args)
            losses = []
            for widths in granularities:
                with masked(ffns, widths):
                    loss = objective.loss(module, args, targets) / len(granularities)
                loss.backward()  # one granularity at a time: only one graph is held
                losses.append(float(loss.detach()) * len(granularities))
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            history.append(losses)
            if progress:
                progress(f"matformer nested training, loss {' / '.join(f'{x:.3f}' for x in losses)}", step + 1, o.steps)
            if (step + 1) % o.save_every == 0 or step + 1 == o.steps:
                save(step + 1)
    finally:
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)

    def mean(rows):
        return [round(sum(r[i] for r in rows) / len(rows), 4) for i in range(len(granularities))] if rows else []

    return {"steps": o.steps, "resumed_at": start, "batch": o.batch, "samples": objective.samples,
            "trained_parameters": sum(p.numel() for p in params), "granularities": granularities,
            "loss_first": mean(history[:5]), "loss_last": mean(history[-5:]),
            "seconds": round(time.perf_counter() - began, 1)}
