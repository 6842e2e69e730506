"""Feed-forward blocks: finding them in a model, and keeping a subset of their hidden units.

An FFN here is any block whose hidden units are produced by "up" layers, pass through
per-unit layers (activation, BatchNorm, a depthwise convolution) and are consumed by one
"down" layer. Keeping units ``keep`` (in that order) takes their rows of the up layers,
their channels of the per-unit layers and their columns of the down layer: a permutation
is exact, and a subset computes what the full block computes with the other units zeroed.

Recognised: Llama/Qwen2-style gated MLPs (``gate_proj``/``up_proj``/``down_proj``),
BERT-style (``intermediate.dense`` then ``output.dense``), and runs inside an
``nn.Sequential``: Linear-activation-Linear (a BatchNorm1d or Dropout between is sliced
along), and the convolutional MLPs of the zoo backbones, pointwise conv[-BN]-activation
[-depthwise conv[-BN]-activation]-pointwise conv[-BN] back to the input width
(EfficientFormer, LSNet).
"""

from __future__ import annotations

import dataclasses
from typing import Any

ACTIVATIONS = ("ReLU", "GELU", "SiLU", "Tanh", "Sigmoid", "LeakyReLU", "ReLU6", "Hardswish", "Mish", "ELU",
               "GELUActivation", "NewGELUActivation", "SiLUActivation", "PytorchGELUTanh", "GELUTanh")


@dataclasses.dataclass
class Ffn:
    """One feed-forward block found in a model.

    Attributes:
        name: Where it is (the module path of its first projection's parent, or the run's).
        kind: ``gated``, ``bert``, ``sequential`` or ``conv``.
        owner: The module holding the projections.
        ups: Attribute paths (or Sequential indices, ``2.0``) of the layers producing the hidden units.
        down: Attribute path (or index) of the projection consuming them.
        norms: Per-unit BatchNorm layers between them (sliced with the units).
        mids: Per-unit depthwise convolutions between them (sliced with the units).
        axis: The hidden units' axis in the activations (-1 for Linear layers, 1 for convolutions).
    """

    name: str
    kind: str
    owner: Any
    ups: list[str]
    down: str
    norms: list[str] = dataclasses.field(default_factory=list)
    mids: list[str] = dataclasses.field(default_factory=list)
    axis: int = -1

    def layer(self, key: str):
        """The layer under ``key`` (an attribute path like ``intermediate.dense``, or indices like ``2.0``)."""
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
        down = self.layer(self.down)
        return down.in_features if hasattr(down, "in_features") else down.in_channels


def find_ffns(module) -> list[Ffn]:
    """Every FFN recognised, in module order."""
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
            found += _linear_runs(name, m) + _conv_runs(name, m)
    return found


def _label(name: str, i: int, j: int) -> str:
    return f"{name}[{i}:{j + 1}]" if name else f"[{i}:{j + 1}]"


def _linear_runs(name: str, m) -> list[Ffn]:
    from torch import nn

    items, found = list(m), []
    for i, first in enumerate(items):
        if not isinstance(first, nn.Linear):
            continue
        j = i + 1
        while j < len(items) and (type(items[j]).__name__ in ACTIVATIONS
                                  or isinstance(items[j], (nn.Dropout, nn.BatchNorm1d))):
            j += 1
        if (j > i + 1 and j < len(items) and isinstance(items[j], nn.Linear)
                and items[j].in_features == first.out_features
                and any(type(items[k]).__name__ in ACTIVATIONS for k in range(i + 1, j))):
            norms = [str(k) for k in range(i + 1, j) if isinstance(items[k], nn.BatchNorm1d)]
            found.append(Ffn(_label(name, i, j), "sequential", m, [str(i)], str(j), norms))
    return found


def _conv_unit(item):
    """``(conv key, BN key or None)`` of a Conv2d or a Sequential(Conv2d, BatchNorm2d); None otherwise."""
    from torch import nn

    if isinstance(item, nn.Conv2d):
        return "", None
    if (isinstance(item, nn.Sequential) and len(item) == 2 and isinstance(item[0], nn.Conv2d)
            and isinstance(item[1], nn.BatchNorm2d)):
        return "0", "1"
    return None


def _conv_runs(name: str, m) -> list[Ffn]:
    """Pointwise conv -> activation [-> depthwise conv -> activation] -> pointwise conv, back to the input width."""
    items, found = list(m), []

    def pointwise(item):
        unit = _conv_unit(item)
        conv = item if unit and not unit[0] else (item[0] if unit else None)
        ok = conv is not None and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
        return (conv, unit) if ok else (None, None)

    def key(i, sub):
        return f"{i}.{sub}" if sub else str(i)

    for i, item in enumerate(items):
        up, unit = pointwise(item)
        if up is None:
            continue
        hidden, norms, mids, j, acts = up.out_channels, [key(i, unit[1])] if unit[1] else [], [], i + 1, 0
        while j < len(items):
            mid_unit = _conv_unit(items[j])
            mid = items[j] if mid_unit and not mid_unit[0] else (items[j][0] if mid_unit else None)
            if type(items[j]).__name__ in ACTIVATIONS:
                acts += 1
            elif mid is not None and mid.groups == mid.in_channels == mid.out_channels == hidden and mid.groups > 1:
                mids.append(key(j, mid_unit[0]))
                norms += [key(j, mid_unit[1])] if mid_unit[1] else []
            else:
                break
            j += 1
        if j == len(items) or not acts:
            continue
        down, down_unit = pointwise(items[j])
        if down is not None and down.in_channels == hidden and down.out_channels == up.in_channels:
            found.append(Ffn(_label(name, i, j), "conv", m, [key(i, unit[0])], key(j, down_unit[0]), norms, mids, 1))
    return found


def reorder_and_slice(ffn: Ffn, keep) -> None:
    """Keep hidden units ``keep`` (an index tensor, in the new order) of one FFN, in place."""
    for key in ffn.ups:
        ffn.set_layer(key, _rows(ffn.layer(key), keep))
    for key in ffn.mids:
        ffn.set_layer(key, _depthwise(ffn.layer(key), keep))
    for key in ffn.norms:
        ffn.set_layer(key, _batch_norm(ffn.layer(key), keep))
    ffn.set_layer(ffn.down, _columns(ffn.layer(ffn.down), keep))


def _like(layer, weight, bias, **shape):
    """A new layer of ``layer``'s type holding ``weight``/``bias``, with the given shape arguments."""
    import torch

    if isinstance(layer, torch.nn.Linear):
        new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                              device=weight.device, dtype=weight.dtype)
    else:
        new = torch.nn.Conv2d(shape.get("cin", weight.shape[1]), weight.shape[0], layer.kernel_size, layer.stride,
                              layer.padding, layer.dilation, shape.get("groups", layer.groups), bias=bias is not None,
                              padding_mode=layer.padding_mode, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _rows(layer, keep):
    bias = None if layer.bias is None else layer.bias.detach()[keep]
    return _like(layer, layer.weight.detach()[keep], bias)


def _columns(layer, keep):
    bias = None if layer.bias is None else layer.bias.detach()
    return _like(layer, layer.weight.detach()[:, keep], bias)


def _depthwise(layer, keep):
    bias = None if layer.bias is None else layer.bias.detach()[keep]
    return _like(layer, layer.weight.detach()[keep], bias, cin=len(keep), groups=len(keep))


def _batch_norm(norm, keep):
    """A BatchNorm of the kept units (same type), with their statistics and affine parameters."""
    import torch

    new = type(norm)(len(keep), eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
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


def unit_scale(ffn: Ffn):
    """Per hidden unit, the norm of its column of the down projection (what one unit of activation adds)."""
    w = ffn.layer(ffn.down).weight.detach().double()
    return w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)


def channels_last(h, axis: int):
    """Activations ``h`` as rows of hidden units: ``(tokens or pixels, units)``."""
    return (h if axis == -1 else h.movedim(axis, -1)).reshape(-1, h.shape[axis])
