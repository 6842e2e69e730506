"""MatFormer nested FFN slicing: importance-ordered hidden units, sliced to per-layer widths.

MatFormer (Devvrit, Kudugunta et al., "MatFormer: Nested Transformer for Elastic
Inference", 2023) trains a transformer whose every FFN holds nested sub-FFNs: the
first ``m`` hidden units form a smaller FFN that works on its own. Given such a
model (or any trained one), a smaller dense model is the first ``m_l`` units of each
layer ``l``. This pass does the two steps that need no training:

1. **Order** each FFN's hidden units by importance on calibration data (the mean of
   ``|h_i| * ||W_down[:, i]||`` over tokens: what unit ``i`` adds to the output).
   Permuting hidden units is exact by itself.
2. **Slice** to per-layer widths (``ratio`` or ``widths``): a genuinely smaller dense
   model, which saves, exports and profiles like any other.

::

    before:  x -> up (H x d) [, gate (H x d)] -> act -> down (d x H) -> y
    after:   x -> up[:m] [, gate[:m]]         -> act -> down[:, :m]  -> y   (units sorted, m <= H)

With ``train=...`` the reordered full-width model is first fine-tuned with MatFormer's
nested loss (:mod:`edgesmith.optimize.matformer.train`); with ``budget_params=`` or
``budget_ms=`` the per-layer widths come from a Mix'n'Match search within the budget
(:mod:`edgesmith.optimize.matformer.mixnmatch`) instead of ``ratio``/``widths``.

FFNs recognised (:mod:`edgesmith.optimize.matformer.ffns`): Llama/Qwen2-style gated MLPs, BERT-style,
Linear-activation-Linear runs inside an ``nn.Sequential``, and the zoo backbones'
pointwise-convolution MLPs (a BatchNorm or depthwise convolution between is sliced along).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from edgesmith.errors import BadInputError, UsageError
from edgesmith.models.inspect import module_kinds
from edgesmith.optimize.base import PASSES, Pass
from edgesmith.optimize.matformer.ffns import Ffn, channels_last, find_ffns, reorder_and_slice, unit_scale
from edgesmith.optimize.matformer.mixnmatch import parse_count
from edgesmith.options import option

@dataclasses.dataclass
class MatformerOptions:
    """Options of the ``matformer`` pass.

    Each field's help is its ``help`` metadata (:func:`edgesmith.options.option`).
    """

    ratio: float = option(0.5, "Every FFN keeps this share of its hidden units, in (0, 1] (rounded, at least one).")
    widths: str = option("", "Per-layer hidden widths, ``/``-separated in the order the FFNs are found "
                             "(``1536/1024/...``); overrides ``ratio``.")
    order: str = option("auto", "``importance`` (sort units by calibration importance first), ``first`` (keep the "
                                "first units as they are: the naive slice, for comparison), or ``auto``: ``first`` "
                                "for a model an earlier ``matformer`` pass trained nested (its order is what it was "
                                "trained with), else ``importance``.")
    data: str = option("", "Calibration inputs, an ``.npz`` with one array per model input (first axis: samples); "
                           "default: the variant's example inputs.")
    text: str = option("", "Calibration text for a language model: ``devils-dictionary`` (the bundled evaluation "
                           "text's train split) or a UTF-8 file, cut into windows of ``seq_len`` tokens with the "
                           "model's tokenizer.")
    seq_len: int = option(256, "Tokens per calibration (and training) window.")
    samples: int = option(256, "At most this many calibration samples (windows).")
    check: bool = option(True, "Check that the full-width reordered model equals the original on the example inputs.")
    train: str = option("", "Fine-tune with the nested loss first, on this: for a language model, "
                            "``devils-dictionary`` (the evaluation text's train split) or a UTF-8 text file, cut "
                            "into windows of ``seq_len`` tokens; for any model, an ``.npz`` of inputs (one array per "
                            "model input; the targets are the original model's outputs).")
    steps: int = option(60, "Training steps (each: one batch at every granularity).")
    batch: int = option(4, "Training samples (windows) per step.")
    lr: float = option(1e-4, "Peak learning rate (AdamW; warm-up over a tenth of the steps, then cosine to a tenth).")
    granularities: str = option("", "Shares of units trained together, ``/``-separated (``0.5/1``); default: the "
                                    "target widths and full width, or ``levels`` with a budget.")
    tune: str = option("ffn", "``ffn`` (only the FFN weights train) or ``all``.")
    seed: int = option(0, "Seed of the batch order.")
    save_every: int = option(10, "Steps between checkpoints.")
    checkpoint: str = option("", "Directory of the training checkpoint (``edgesmith optimize`` uses ``OUT.ckpt``); "
                                 "empty: none.")
    resume: bool = option(False, "Continue the training from the checkpoint.")
    force: bool = option(False, "Start the training over even if ``checkpoint`` holds a run.")
    budget_params: str = option("", "Mix'n'Match: the most parameters the sliced model may have (``95M``, ``9.5e7``).")
    budget_ms: float = option(0.0, "Mix'n'Match: the most latency (p50 ms on the example inputs, ONNX Runtime) on "
                                   "``device``.")
    device: str = option("host", "Where ``budget_ms`` holds: ``host`` (measured) or a catalog device (predicted).")
    headroom: float = option(0.05, "Mix'n'Match with ``budget_ms``: the share of the budget the profiled choice must "
                                   "stay under, so the device's run-to-run noise does not take it over (0.05: at "
                                   "most 95%).")
    levels: str = option("0.25/0.5/0.75/1", "Mix'n'Match: shares of its units each layer may keep, ``/``-separated.")
    search_samples: int = option(4, "Mix'n'Match: calibration samples (windows) every candidate is scored on.")

    def __post_init__(self):
        if not 0.0 < self.ratio <= 1.0:
            raise UsageError(f"pass 'matformer': ratio={self.ratio} is outside (0, 1]",
                             hint="ratio is the share of hidden units each FFN keeps, e.g. ratio=0.5")
        if self.order not in ("auto", "importance", "first"):
            raise UsageError(f"pass 'matformer': order={self.order!r} is not auto, importance or first")
        if self.data and self.text:
            raise UsageError("pass 'matformer': give data or text, not both")
        if self.tune not in ("ffn", "all"):
            raise UsageError(f"pass 'matformer': tune={self.tune!r} is not ffn or all")
        for key in ("seq_len", "samples", "steps", "batch", "save_every", "search_samples"):
            least = 2 if key == "seq_len" else 1
            if getattr(self, key) < least:
                raise UsageError(f"pass 'matformer': {key}={getattr(self, key)} must be at least {least}")
        if self.lr <= 0 or self.budget_ms < 0:
            raise UsageError(f"pass 'matformer': {'lr' if self.lr <= 0 else 'budget_ms'} must be positive")
        if not 0.0 <= self.headroom < 0.5:
            raise UsageError(f"pass 'matformer': headroom={self.headroom} is outside [0, 0.5)",
                             hint="headroom is the share of budget_ms kept free for noise, e.g. headroom=0.05")
        if self.budget_ms and self.budget_params:
            raise UsageError("pass 'matformer': give budget_ms or budget_params, not both")
        if (self.budget_ms or self.budget_params) and self.widths:
            raise UsageError("pass 'matformer': give widths or a budget, not both",
                             hint="with a budget the search chooses the widths")
        parse_widths(self.widths)
        parse_count(self.budget_params)
        parse_shares(self.levels, "levels")
        parse_shares(self.granularities, "granularities")

    @property
    def budget(self) -> bool:
        """A Mix'n'Match budget was given."""
        return bool(self.budget_ms or self.budget_params)


def parse_shares(text: str, key: str) -> list[float]:
    """``0.25/0.5/1`` -> ``[0.25, 0.5, 1.0]``, each in (0, 1].

    Raises:
        UsageError: A share that is not a number in (0, 1].
    """
    shares = []
    for item in filter(None, (t.strip() for t in text.split("/"))):
        try:
            value = float(item)
        except ValueError:
            value = -1.0
        if not 0.0 < value <= 1.0:
            raise UsageError(f"pass 'matformer': {key} share {item!r} is not a number in (0, 1]",
                             hint=f"write {key}=0.25/0.5/0.75/1")
        shares.append(value)
    return sorted(set(shares))


def parse_widths(text: str) -> list[int]:
    """``1536/1024/768`` -> ``[1536, 1024, 768]`` (empty text: none).

    Raises:
        UsageError: A width that is not a positive integer.
    """
    widths = []
    for item in filter(None, (t.strip() for t in text.replace(",", "/").split("/"))):
        if not item.isdigit() or int(item) < 1:
            raise UsageError(f"pass 'matformer': width {item!r} is not a positive integer",
                             hint="write widths=1536/1024/... (one per FFN layer)")
        widths.append(int(item))
    return widths


def _feeds(variant, source: str, seq_len: int, samples: int | None, what: str, arrays: bool = False):
    """Model inputs from ``source`` (:func:`edgesmith.training.loop.feeds_from`)."""
    from edgesmith.training.loop import feeds_from

    return feeds_from(variant, source, "pass 'matformer'", seq_len, samples, what, arrays)


def _calibration(variant, options):
    """Calibration feeds: token windows of ``text``, the ``data`` file's arrays, else the example inputs."""
    return _feeds(variant, options.text or options.data, options.seq_len, options.samples, "calibration",
                  arrays=bool(options.data))


def importance(variant, ffns: list[Ffn], feeds) -> list[Any]:
    """Per FFN, the importance of each hidden unit: mean over tokens of ``|h_i| * ||W_down[:, i]||``."""
    import torch

    from edgesmith.models.variant import run_module

    sums = [torch.zeros(f.hidden, dtype=torch.float64) for f in ffns]
    counts = [0] * len(ffns)

    def hook(index):
        def record(_module, args):
            h = channels_last(args[0].detach(), ffns[index].axis).double()
            sums[index] += h.abs().sum(0)
            counts[index] += h.shape[0]
        return record

    handles = [f.layer(f.down).register_forward_pre_hook(hook(i)) for i, f in enumerate(ffns)]
    n = len(next(iter(feeds.values())))
    try:
        for start in range(0, n, 8):  # a few samples at a time: a language model's logits are large
            run_module(variant.module, variant.inputs, variant.outputs,
                       {k: v[start:start + 8] for k, v in feeds.items()})
    finally:
        for h in handles:
            h.remove()
    return [(s / max(c, 1)) * unit_scale(f) for s, c, f in zip(sums, counts, ffns)]


@PASSES.register
class Matformer(Pass):
    """Order FFN hidden units by importance and slice each FFN to a width (MatFormer)."""

    name = "matformer"
    Options = MatformerOptions
    copies_module = True

    def _apply_impl(self, variant, module):
        import torch

        from edgesmith.optimize.matformer.mixnmatch import ffn_params, level_widths

        o = self.options
        ffns = find_ffns(module)
        if not ffns:
            raise BadInputError(f"{self.owner} found no FFN it recognises in {variant.name} "
                                f"(it has: {module_kinds(variant.module)})",
                                hint="it slices gated (gate/up/down_proj), BERT-style (intermediate/output.dense), "
                                     "Linear-activation-Linear and pointwise-conv FFNs")
        widths = parse_widths(o.widths)
        if widths and len(widths) != len(ffns):
            raise self.refuse(f"widths gives {len(widths)} width(s), {variant.name} has {len(ffns)} FFN layers",
                              hint=f"give {len(ffns)} widths, one per layer, or a ratio")
        widths = widths or [max(1, round(o.ratio * f.hidden)) for f in ffns]
        for f, w in zip(ffns, widths):
            if w > f.hidden:
                raise self.refuse(f"width {w} for FFN {f.name} exceeds its {f.hidden} hidden units")
        from edgesmith.models.complexity import count_params

        before = count_params(module)  # a tied embedding/lm_head counted once
        hidden = [f.hidden for f in ffns]
        if o.budget_ms and o.device != "host":
            from edgesmith.devices.catalog import get_device

            get_device(o.device)  # an unknown name fails here, before any work
        if o.budget_params:  # refused before any work when even the smallest choice is too big
            levels = parse_shares(o.levels, "levels")
            smallest = before - ffn_params(ffns, hidden) + ffn_params(ffns, [ws[0] for ws in level_widths(ffns, levels)])
            if smallest > parse_count(o.budget_params):
                from edgesmith.optimize.matformer.mixnmatch import refuse

                raise refuse(f"budget_params={parse_count(o.budget_params):,}", f"{smallest:,} parameters", levels)
        order = o.order
        if order == "auto":
            nested = any(p.get("name") == "matformer" and p.get("params", {}).get("train") for p in variant.passes)
            order = "first" if nested else "importance"
        checkpoint, state = self._checkpoint(variant, hidden)
        if state is not None:  # resuming: the saved order, so the trained weights match their units
            orders = [torch.as_tensor(x) for x in state["orders"]]
        elif order == "importance":
            view = dataclasses.replace(variant, module=module)
            scores = importance(view, ffns, _calibration(variant, o))
            orders = [torch.argsort(s, descending=True, stable=True) for s in scores]
        else:
            orders = [torch.arange(f.hidden) for f in ffns]
        for f, units in zip(ffns, orders):
            reorder_and_slice(f, units)
        ffns = find_ffns(module)
        if o.check and order == "importance" and state is None:
            self._check_same(variant, module)
        report = {"ffns": len(ffns), "kinds": dict(Counter(f.kind for f in ffns)), "hidden": hidden,
                  "order": order, "calibration": o.text or o.data or "example inputs"}
        if o.train:
            report["train"] = self._train(variant, module, ffns, widths, checkpoint, state, orders)
        if o.budget:
            widths, report["search"] = self._search(variant, module, ffns)
        for f, w in zip(ffns, widths):
            reorder_and_slice(f, torch.arange(w))
        module.eval()
        return module, {**report, "widths": widths, "params_before": before,
                        "params_after": count_params(module)}

    def _checkpoint(self, variant, hidden: list[int]):
        """The training checkpoint and, when resuming, its state (None, None without training)."""
        from edgesmith.optimize.matformer.train import CHECKPOINT_FORMAT
        from edgesmith.training.checkpoint import Checkpoint

        o = self.options
        if not o.train:
            return None, None
        keys = ("ratio", "widths", "order", "data", "text", "seq_len", "samples", "train", "steps", "batch", "lr",
                "granularities", "tune", "seed", "levels", "budget_params", "budget_ms")
        run = {**{k: getattr(o, k) for k in keys}, "model": variant.source.get("sha256") or variant.name,
               "hidden": hidden}
        checkpoint = Checkpoint("matformer", CHECKPOINT_FORMAT, o.checkpoint, run, o.resume, o.force)
        return checkpoint, checkpoint.load()

    def _train(self, variant, module, ffns, widths, checkpoint, state, orders):
        """The nested fine-tune of the reordered full-width ``module``, in place; its report."""
        from edgesmith.optimize.matformer.train import Objective, train_nested

        o = self.options
        shares = parse_shares(o.granularities, "granularities") or (parse_shares(o.levels, "levels") if o.budget else [])
        sets = [[max(1, round(s * f.hidden)) for f in ffns] for s in shares] or [widths]
        granularities = []
        for ws in sets + [[f.hidden for f in ffns]]:
            if ws not in granularities:
                granularities.append(ws)
        objective = Objective(variant, _feeds(variant, o.train, o.seq_len, None, "training"), self.owner)
        return train_nested(module, ffns, granularities, objective, o, checkpoint, state,
                            [order.clone() for order in orders], self.progress)

    def _search(self, variant, module, ffns):
        """Mix'n'Match within the budget: the chosen widths and the search's report."""
        import numpy as np

        from edgesmith.optimize.matformer.train import Objective, evaluate
        from edgesmith.optimize.matformer.mixnmatch import Search, front, refuse, sliced_copy

        o = self.options
        levels = parse_shares(o.levels, "levels")
        objective = Objective(variant, _feeds(variant, o.text or o.data, o.seq_len, o.search_samples, "calibration",
                                              arrays=bool(o.data)), self.owner)
        index = np.arange(objective.samples)
        search = Search(module, ffns, levels, lambda ws: evaluate(objective, module, ffns, ws, index), self.progress)
        report: dict[str, Any] = {"levels": levels, "samples": objective.samples}
        if o.budget_params:
            limit = float(parse_count(o.budget_params))
            report["budget"] = f"budget_params={int(limit):,}"
            cost = lambda c: c.params  # noqa: E731
        else:
            probe = self.context.probe(self.owner, variant, o.device)
            if self.progress:
                self.progress(f"mix'n'match: latency at full and smallest width on {o.device}", 0, 2)
            full_ms, mode = probe(sliced_copy(module, search.full))
            small_ms, _ = probe(sliced_copy(module, search.smallest))
            headroom = o.headroom if mode == "measured" else 0.0  # a prediction has no run-to-run noise
            limit = o.budget_ms * (1.0 - headroom)  # the profiled choice must land here, under the budget
            budget = f"budget_ms={o.budget_ms:g} on {o.device}" + (f" (at most {limit:.4g} ms measured, "
                                                                    f"headroom={headroom:g})" if headroom else "")
            if small_ms > limit:
                raise refuse(budget, f"{small_ms:.3f} ms ({mode})", levels)
            search.measured = {search.params(search.full): full_ms, search.params(search.smallest): small_ms}
            report.update(budget=budget, target_ms=round(limit, 6), anchors_ms=[round(full_ms, 3), round(small_ms, 3)],
                          latency_mode=mode)
            cost = lambda c: c.latency_ms  # noqa: E731
        fits = lambda c: cost(c) <= limit  # noqa: E731
        path = search.path()
        found = search.candidates(path, fits, levels)
        if o.budget_ms:  # the estimate proposes; the sliced model itself must meet the budget
            chosen = search.within_latency(found, path, limit, probe)
        else:
            chosen = min((c for c in found if fits(c)), key=lambda c: c.loss)
        report.update(evaluated=len(found), chosen=chosen.row(True),
                      front=[c.row(fits(c)) for c in front(found, cost)])
        return list(chosen.widths), report

    def _check_same(self, variant, module) -> None:
        """The full-width reordered model computes what the original does (a permutation is exact)."""
        from edgesmith.models.variant import run_module
        from edgesmith.parity import compare

        result = compare(variant.run(), run_module(module, variant.inputs, variant.outputs, variant.example),
                         precision="fp32")
        if not result.passed:
            raise BadInputError(f"matformer's unit reordering changed {variant.name}'s outputs: "
                                f"{'; '.join(result.failures)}",
                                hint="a module reads the FFN's hidden units elsewhere; report the model")
