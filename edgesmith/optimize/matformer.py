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

FFNs recognised: Llama/Qwen2-style gated MLPs (``gate_proj``/``up_proj``/``down_proj``),
BERT-style (``intermediate.dense`` then ``output.dense``), and Linear-activation-Linear
runs inside an ``nn.Sequential`` (a BatchNorm1d or Dropout between them is sliced along).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from typing import Any

from edgesmith.errors import BadInputError, UsageError
from edgesmith.optimize import PASSES, Pass

_ACTIVATIONS = ("ReLU", "GELU", "SiLU", "Tanh", "Sigmoid", "LeakyReLU", "ReLU6", "Hardswish", "Mish", "ELU",
                "GELUActivation", "NewGELUActivation", "SiLUActivation", "PytorchGELUTanh", "GELUTanh")


@dataclasses.dataclass
class MatformerOptions:
    """Options of the ``matformer`` pass.

    Attributes:
        ratio: Every FFN keeps this share of its hidden units, in (0, 1] (rounded, at least one).
        widths: Per-layer hidden widths, ``/``-separated in the order the FFNs are found
            (``1536/1024/...``); overrides ``ratio``.
        order: ``importance`` (sort units by calibration importance first) or ``first`` (keep the
            first units as they are: the naive slice, for comparison).
        data: Calibration inputs, an ``.npz`` with one array per model input (first axis: samples);
            default: the variant's example inputs.
        text: Calibration text for a language model: ``devils-dictionary`` (the bundled evaluation
            text's train split) or a UTF-8 file, cut into windows of ``seq_len`` tokens with the
            model's tokenizer.
        seq_len: Tokens per calibration window (``text``).
        samples: At most this many calibration samples (windows).
        check: Check that the full-width reordered model equals the original on the example inputs.
    """

    ratio: float = 0.5
    widths: str = ""
    order: str = "importance"
    data: str = ""
    text: str = ""
    seq_len: int = 256
    samples: int = 256
    check: bool = True

    def __post_init__(self):
        if not 0.0 < self.ratio <= 1.0:
            raise UsageError(f"pass 'matformer': ratio={self.ratio} is outside (0, 1]",
                             hint="ratio is the share of hidden units each FFN keeps, e.g. ratio=0.5")
        if self.order not in ("importance", "first"):
            raise UsageError(f"pass 'matformer': order={self.order!r} is not importance or first")
        if self.data and self.text:
            raise UsageError("pass 'matformer': give data or text, not both")
        if self.seq_len < 2:
            raise UsageError(f"pass 'matformer': seq_len={self.seq_len} must be at least 2")
        if self.samples < 1:
            raise UsageError(f"pass 'matformer': samples={self.samples} must be at least 1")
        parse_widths(self.widths)


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


@dataclasses.dataclass
class Ffn:
    """One feed-forward block found in a model.

    Attributes:
        name: Where it is (the module path of its first projection's parent, or the run's).
        kind: ``gated``, ``bert`` or ``sequential``.
        owner: The module holding the projections.
        ups: Attribute names (or Sequential indices) of the layers producing the hidden units.
        down: Attribute name (or index) of the projection consuming them.
        norms: Per-unit BatchNorm1d layers between them (sliced with the units).
    """

    name: str
    kind: str
    owner: Any
    ups: list[str]
    down: str
    norms: list[str] = dataclasses.field(default_factory=list)

    def layer(self, key: str):
        """The projection under ``key`` (an attribute path like ``intermediate.dense``, or an index)."""
        obj = self.owner
        for part in key.split("."):
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        return obj

    def set_layer(self, key: str, module) -> None:
        """Put ``module`` where ``key`` is."""
        *path, last = key.split(".")
        obj = self.owner
        for part in path:
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        if last.isdigit():
            obj[int(last)] = module
        else:
            setattr(obj, last, module)

    @property
    def hidden(self) -> int:
        """Hidden units (the down projection's inputs)."""
        return self.layer(self.down).in_features


def find_ffns(module) -> list[Ffn]:
    """Every FFN the pass recognises, in module order."""
    from torch import nn

    found: list[Ffn] = []
    for name, m in module.named_modules():
        linear = lambda key: isinstance(getattr(m, key, None), nn.Linear)  # noqa: E731
        if linear("gate_proj") and linear("up_proj") and linear("down_proj"):
            found.append(Ffn(name, "gated", m, ["gate_proj", "up_proj"], "down_proj"))
        elif (isinstance(getattr(getattr(m, "intermediate", None), "dense", None), nn.Linear)
              and isinstance(getattr(getattr(m, "output", None), "dense", None), nn.Linear)
              and m.intermediate.dense.out_features == m.output.dense.in_features):
            found.append(Ffn(name, "bert", m, ["intermediate.dense"], "output.dense"))
        elif isinstance(m, nn.Sequential):
            items = list(m)
            for i, first in enumerate(items):
                if not isinstance(first, nn.Linear):
                    continue
                j = i + 1
                while j < len(items) and (type(items[j]).__name__ in _ACTIVATIONS
                                          or isinstance(items[j], (nn.Dropout, nn.BatchNorm1d))):
                    j += 1
                if (j > i + 1 and j < len(items) and isinstance(items[j], nn.Linear)
                        and items[j].in_features == first.out_features
                        and any(type(items[k]).__name__ in _ACTIVATIONS for k in range(i + 1, j))):
                    norms = [str(k) for k in range(i + 1, j) if isinstance(items[k], nn.BatchNorm1d)]
                    found.append(Ffn(f"{name}[{i}:{j + 1}]" if name else f"[{i}:{j + 1}]", "sequential", m,
                                     [str(i)], str(j), norms))
    return found


def _what_it_has(module) -> str:
    counts = Counter(type(m).__name__ for m in module.modules())
    return ", ".join(f"{n} x{c}" for n, c in counts.most_common(8))


def _calibration(variant, options):
    """Calibration feeds: token windows of ``text``, the ``data`` file's arrays, else the example inputs."""
    import numpy as np

    if options.text:
        from edgesmith.models.hf import tokenizer_for
        from edgesmith.models.lm_eval import lm_feeds, text_source, token_windows

        windows = token_windows(tokenizer_for(variant), text_source(options.text), options.seq_len, options.samples)
        return lm_feeds(variant, windows)
    if not options.data:
        return variant.example
    try:
        with np.load(options.data, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise BadInputError(f"pass 'matformer': cannot read calibration data {options.data}: {exc}") from None
    names = [s.name for s in variant.inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise BadInputError(f"pass 'matformer': calibration data {options.data} has no array {missing[0]!r}",
                            hint=f"store one array per model input: {', '.join(names)}")
    return {n: arrays[n][: options.samples] for n in names}


def importance(variant, ffns: list[Ffn], feeds) -> list[Any]:
    """Per FFN, the importance of each hidden unit: mean over tokens of ``|h_i| * ||W_down[:, i]||``."""
    import torch

    from edgesmith.models.variant import run_module

    sums = [torch.zeros(f.hidden, dtype=torch.float64) for f in ffns]
    counts = [0] * len(ffns)

    def hook(index):
        def record(_module, args):
            h = args[0].detach().reshape(-1, args[0].shape[-1]).double()
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
    return [(s / max(c, 1)) * f.layer(f.down).weight.detach().double().norm(dim=0)
            for s, c, f in zip(sums, counts, ffns)]


def _linear(weight, bias):
    """A new ``nn.Linear`` holding these tensors (same dtype and device)."""
    import torch

    out_f, in_f = weight.shape
    layer = torch.nn.Linear(in_f, out_f, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def reorder_and_slice(ffn: Ffn, keep) -> None:
    """Keep hidden units ``keep`` (an index tensor, in the new order) of one FFN, in place."""
    for key in ffn.ups:
        up = ffn.layer(key)
        ffn.set_layer(key, _linear(up.weight.detach()[keep], None if up.bias is None else up.bias.detach()[keep]))
    for key in ffn.norms:
        ffn.set_layer(key, _batch_norm(ffn.layer(key), keep))
    down = ffn.layer(ffn.down)
    bias = None if down.bias is None else down.bias.detach()
    ffn.set_layer(ffn.down, _linear(down.weight.detach()[:, keep], bias))


def _batch_norm(norm, keep):
    """A BatchNorm1d of the kept units, with their statistics and affine parameters."""
    import torch

    new = torch.nn.BatchNorm1d(len(keep), eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                               track_running_stats=norm.track_running_stats,
                               device=norm.running_mean.device if norm.running_mean is not None else None)
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            value = getattr(norm, attr)
            if value is not None:
                getattr(new, attr).copy_(value.detach()[keep])
    if norm.num_batches_tracked is not None:
        new.num_batches_tracked = norm.num_batches_tracked.clone()
    return new.train(norm.training)


@PASSES.register("matformer")
class Matformer(Pass):
    """Order FFN hidden units by importance and slice each FFN to a width (MatFormer)."""

    name = "matformer"
    Options = MatformerOptions

    def _apply_impl(self, variant):
        import torch

        o = self.options
        module = copy.deepcopy(variant.module)
        ffns = find_ffns(module)
        if not ffns:
            raise BadInputError(f"pass 'matformer' found no FFN it recognises in {variant.name} "
                                f"(it has: {_what_it_has(variant.module)})",
                                hint="it slices gated (gate/up/down_proj), BERT-style (intermediate/output.dense) "
                                     "and Linear-activation-Linear FFNs")
        widths = parse_widths(o.widths)
        if widths and len(widths) != len(ffns):
            raise BadInputError(f"pass 'matformer': widths gives {len(widths)} width(s), {variant.name} has "
                                f"{len(ffns)} FFN layers", hint=f"give {len(ffns)} widths, one per layer, or a ratio")
        widths = widths or [max(1, round(o.ratio * f.hidden)) for f in ffns]
        for f, w in zip(ffns, widths):
            if w > f.hidden:
                raise BadInputError(f"pass 'matformer': width {w} for FFN {f.name} exceeds its {f.hidden} hidden units")
        before = sum(p.numel() for p in module.parameters())
        hidden = [f.hidden for f in ffns]
        if o.order == "importance":
            view = dataclasses.replace(variant, module=module)
            scores = importance(view, ffns, _calibration(variant, o))
            orders = [torch.argsort(s, descending=True, stable=True) for s in scores]
        else:
            orders = [torch.arange(f.hidden) for f in ffns]
        if o.check and o.order == "importance":
            full = copy.deepcopy(module)
            for f, order in zip(find_ffns(full), orders):
                reorder_and_slice(f, order)
            self._check_same(variant, full)
        for f, order, w in zip(ffns, orders, widths):
            reorder_and_slice(f, order[:w])
        module.eval()
        after = sum(p.numel() for p in module.parameters())
        return module, {
            "ffns": len(ffns), "kinds": dict(Counter(f.kind for f in ffns)),
            "hidden": hidden, "widths": widths, "order": o.order,
            "params_before": before, "params_after": after,
            "calibration": o.text or o.data or "example inputs",
        }

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
