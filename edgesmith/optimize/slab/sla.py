"""SLAB's simplified linear attention (``sla``): attention whose cost grows linearly with the tokens.

Softmax attention costs ``O(N^2 d)`` for ``N`` tokens. SLAB (Guo et al., 2024, after FLatten,
Han et al., 2023) computes, per head::

    Q = ReLU(x Wq),  K = ReLU(x Wk + P),  V = x Wv
    O = Q (K^T V) / (Q sum_j K_j + 1e-6) + DWConv(V)

``K^T V`` is a ``d x d`` matrix, so the cost is ``O(N d^2)``: linear in ``N``. The ReLU kernels
keep the weights non-negative like softmax's; the normaliser makes each row a weighted mean;
the depthwise convolution on V (5x5 over the token grid for image tokens, a 1-D convolution of
width 5 over a sequence; shared by the heads) restores the local detail linear attention
blurs. ``P`` is a learned position term for a fixed token grid (none for sequences). There is
no ``1/sqrt(d)``.

The pass replaces each recognised attention with SLA initialised from its projections (the
convolution and ``P`` start at zero), then fine-tunes by distillation from the original:
each block in turn learns to reproduce the original attention's output on the inputs it sees
in the partly converted model (``steps``), then the whole model is tuned against the original
model's outputs and the labels where the data has them (``tune_steps``).

Recognised: attention with a fused ``qkv`` Linear laid out ``[q | k | v]`` of ``heads`` each
and a ``proj`` Linear (ViT-style, ``zoo:digits-vit``), and EfficientFormer's token attention
(per-head ``[q | k | v]`` columns).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

from edgesmith.errors import UsageError
from edgesmith.optimize.base import PASSES, Pass
from edgesmith.options import option


@dataclasses.dataclass
class SlaOptions:
    """Options of the ``sla`` pass.

    Each field's help is its ``help`` metadata (:func:`edgesmith.options.option`).
    """

    train: str = option("", "Training data (as ``prepbn``: the model's offline dataset such as ``sklearn-digits``, "
                            "an ``.npz``, an image folder, or text for a model with a tokenizer).")
    data: str = option("", "The same, as ``edgesmith optimize --data`` fills it.")
    steps: int = option(300, "Distillation steps per attention block (each learns the original block's output).")
    tune_steps: int = option(200, "Steps of whole-model tuning afterwards (original outputs, plus labels if any); 0: "
                                  "none.")
    batch: int = option(32, "Samples per step.")
    lr: float = option(1e-3, "Peak learning rate (AdamW, warm-up then cosine).")
    kernel: int = option(5, "Width of the depthwise convolution on V.")
    grid: str = option("auto", "``auto``: image tokens on a square grid (or the model's ``grid``) get a 2-D "
                               "convolution and a position term; ``1d``: treat tokens as a sequence.")
    samples: int = option(1024, "At most this many training samples are cached for the block distillation.")
    label_weight: float = option(0.5, "Share of the tuning loss given to labels when the data has them.")
    seq_len: int = option(128, "Token window for text data.")
    seed: int = option(0, "Seed of the batch order.")

    def __post_init__(self):
        for key in ("steps", "batch", "kernel", "samples", "seq_len"):
            if getattr(self, key) < 1:
                raise UsageError(f"pass 'sla': {key}={getattr(self, key)} must be at least 1")
        if self.kernel % 2 == 0:
            raise UsageError(f"pass 'sla': kernel={self.kernel} must be odd (the convolution keeps the grid)")
        if self.grid not in ("auto", "1d"):
            raise UsageError(f"pass 'sla': grid={self.grid!r} is not auto or 1d")
        if self.tune_steps < 0 or self.lr <= 0:
            raise UsageError("pass 'sla': tune_steps must be at least 0 and lr positive")


@PASSES.register
class Sla(Pass):
    """Replace softmax attention with SLAB's simplified linear attention, distilled from the original."""

    name = "sla"
    Options = SlaOptions
    copies_module = True

    def _apply_impl(self, variant, module):
        from edgesmith.models.inspect import module_kinds
        from edgesmith.optimize.slab.layers import attentions, build_sla
        from edgesmith.training.loop import held_out_accuracy, objective_for

        o = self.options
        if not attentions(variant.module):
            raise self.refuse(f"{variant.name} has no attention the pass recognises "
                              f"(found: {module_kinds(variant.module, 'attention') or 'no attention module'})",
                              hint="sla converts attention with a fused qkv Linear ([q|k|v], `heads`) and a proj "
                                   "Linear, and EfficientFormer's token attention")
        data, objective = objective_for(variant, o, "sla")
        module = module.float().eval()
        report: dict[str, Any] = {"converted": [], "samples": objective.samples}
        grid_hint = getattr(module, "grid", None)
        for name, attn, layout in attentions(module):
            inputs, extra, outputs = _capture(module, attn, objective, min(o.samples, objective.samples))
            n = inputs.shape[1]
            grid, two_d = _grid(n, extra, grid_hint, o.grid)
            sla = build_sla(attn, layout, grid, o.kernel, two_d)
            before = _mse(attn, inputs, extra, outputs)
            fit = _distil_block(sla, inputs, extra, outputs, o, self.progress, name)
            module.set_submodule(name, sla)
            report["converted"].append({"module": name, "tokens": n, "grid": list(grid) if grid else None,
                                        "heads": layout.heads, "relative_mse_first": fit["first"],
                                        "relative_mse_last": fit["last"], "seconds": fit["seconds"],
                                        "original_mse": before})
        if o.tune_steps:
            report["tune"] = _tune(module, objective, o, self.progress)
        accuracy = held_out_accuracy(variant, module, data, "softmax", "sla")
        if accuracy:
            report["test_accuracy"] = accuracy
        return module.eval(), report


def _grid(n: int, extra: tuple, hint, mode: str):
    """``(grid, two_d)`` for ``n`` tokens: the forward's own (height, width), the model's ``grid``, a square."""
    if mode == "1d":
        return None, False
    if len(extra) >= 2 and all(isinstance(v, int) for v in extra[:2]) and extra[0] * extra[1] == n:
        return (extra[0], extra[1]), True
    if hint is not None and len(hint) == 2 and hint[0] * hint[1] == n:
        return (int(hint[0]), int(hint[1])), True
    side = int(round(n ** 0.5))
    if side * side == n:
        return (side, side), True
    return None, False


def _capture(module, attn, objective, samples: int):
    """The attention's inputs, extra positional arguments and outputs over ``samples`` training samples."""
    import torch

    xs, outs, extra = [], [], ()

    def hook(_m, args, out):
        nonlocal extra
        xs.append(args[0].detach())
        outs.append(out.detach())
        extra = tuple(args[1:])

    handle = attn.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for start in range(0, samples, 64):
                module(*objective.args(list(range(start, min(start + 64, samples)))))
    finally:
        handle.remove()
    return torch.cat(xs), extra, torch.cat(outs)


def _mse(attn, inputs, extra, outputs) -> float:
    import torch
    from torch.nn import functional as F

    with torch.no_grad():
        return round(float(F.mse_loss(attn(inputs[:64], *extra), outputs[:64])), 8)


def _distil_block(sla, inputs, extra, outputs, o, progress, name: str) -> dict[str, Any]:
    """Fit ``sla`` to the original attention's outputs (MSE relative to their mean square)."""
    import torch
    from torch.nn import functional as F

    from edgesmith.training.checkpoint import Checkpoint
    from edgesmith.training.loop import Trainer

    scale = float(outputs.pow(2).mean()) or 1.0
    options = types.SimpleNamespace(steps=o.steps, lr=o.lr, seed=o.seed, save_every=o.steps)
    trainer = Trainer("sla", sla, list(sla.named_parameters()), options,
                      Checkpoint("sla", "", "", {}, False, False), None, progress=progress)

    def step(_i: int) -> list[float]:
        index = torch.from_numpy(trainer.batch_index(len(inputs), o.batch))
        loss = F.mse_loss(sla(inputs[index], *extra), outputs[index]) / scale
        loss.backward()
        return [float(loss.detach())]

    done = trainer.run(step, lambda v: f"sla: distilling {name}, relative error {v[0]:.4f}")
    return {"first": done["loss_first"][0], "last": done["loss_last"][0], "seconds": done["seconds"]}


def _tune(module, objective, o, progress) -> dict[str, Any]:
    """Tune the whole converted model against the original's outputs (and labels)."""
    from edgesmith.training.checkpoint import Checkpoint
    from edgesmith.training.loop import Trainer

    options = types.SimpleNamespace(steps=o.tune_steps, lr=o.lr / 3, seed=o.seed + 1, save_every=o.tune_steps)
    named = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
    trainer = Trainer("sla", module, named, options, Checkpoint("sla", "", "", {}, False, False), None,
                      progress=progress)

    def step(_i: int) -> list[float]:
        loss = objective.batch_loss(module, trainer.batch_index(objective.samples, o.batch))
        loss.backward()
        return [float(loss.detach())]

    return trainer.run(step, lambda v: f"sla: tuning the whole model, loss {v[0]:.4f}")
