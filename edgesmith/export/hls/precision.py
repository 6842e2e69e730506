"""Automatic fixed-point precision for the HLS target.

Choosing ``ap_fixed<W,I>`` per layer by hand is the most common pain of
hls4ml. Here it is measured instead:

1. **Ranges.** Calibration data runs through the lowered model (float64); for
   every layer we record the largest magnitude of its weights, biases and
   results (a conv/linear layer's result is its accumulator's final value).
2. **Integer bits** come from the range: the fewest that hold ``max|x|`` with a
   sign bit, plus ``margin`` bits for results and accumulators (data not seen
   in calibration may go further); weights are known exactly and get no margin.
3. **Fraction bits** are searched. A numpy-exact emulation of the fixed-point
   model (round-to-nearest and saturation, as the chosen types declare; products
   accumulated exactly, as the accumulator is given the fraction bits of both
   operands) runs the calibration set. Starting from generous widths, each
   tensor in network order gets the fewest fraction bits for which the
   emulated outputs still meet the target (top-1 agreement with the float model
   and output SNR, both above the parity tolerance by a margin), keeping the
   reductions already made. So the width of each tensor is the smallest that
   meets the parity target, given the ones before it.

The chosen table goes into the hls4ml configuration, the manifest and the CLI.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from edgesmith.errors import BadInputError

START_FRACTION = 18  # fraction bits every tensor starts the search from
MAX_FRACTION = 24
ACCUM_CAP = 64  # widest accumulator written (ap_fixed allows up to 1024 bits; wider never helps here)


@dataclasses.dataclass(frozen=True)
class Fixed:
    """A signed fixed-point type: ``width`` bits, ``integer`` of them before the point (sign included)."""

    width: int
    integer: int
    round_saturate: bool = True

    @property
    def fraction(self) -> int:
        return self.width - self.integer

    def hls(self) -> str:
        """The hls4ml spelling: round to nearest and saturate, or truncate and wrap."""
        if self.round_saturate:
            return f"ap_fixed<{self.width},{self.integer},AP_RND,AP_SAT>"
        return f"ap_fixed<{self.width},{self.integer}>"

    def short(self) -> str:
        return f"<{self.width},{self.integer}>"

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Round to nearest (ties up) and saturate, like ``ap_fixed<W,I,AP_RND,AP_SAT>``."""
        scale = 2.0 ** self.fraction
        top = 2.0 ** (self.integer - 1)
        return np.clip(np.floor(x * scale + 0.5) / scale, -top, top - 1.0 / scale)


def integer_bits(max_abs: float, margin: int = 0) -> int:
    """Fewest integer bits (sign included) holding ``max_abs``, plus ``margin``."""
    if not max_abs > 0:
        return 1 + margin
    return max(1, math.floor(math.log2(max_abs)) + 2) + margin


@dataclasses.dataclass
class LayerPrecision:
    """The chosen types of one lowered layer, with the ranges they came from."""

    name: str
    kind: str
    result: Fixed | None = None
    weight: Fixed | None = None
    bias: Fixed | None = None
    accum: Fixed | None = None
    ranges: dict[str, float] = dataclasses.field(default_factory=dict)

    def types(self) -> dict[str, Fixed]:
        return {k: getattr(self, k) for k in ("weight", "bias", "result", "accum") if getattr(self, k) is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "ranges": self.ranges,
                **{k: t.hls() for k, t in self.types().items()}}


@dataclasses.dataclass
class PrecisionPlan:
    """Per-layer types, keyed by layer name (the input layer's is the model input's name).

    Attributes:
        layers: Name -> types, in network order (the input first).
        emulated: Agreement and SNR of the emulated fixed-point model on the calibration set.
        samples: Calibration samples used.
    """

    layers: dict[str, LayerPrecision]
    emulated: dict[str, float]
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "emulated": self.emulated,
                "layers": [p.to_dict() for p in self.layers.values()]}

    def hls_config(self, config: dict) -> dict:
        """Write the types into an hls4ml ``granularity='name'`` configuration (in place)."""
        names = config.setdefault("LayerName", {})
        for name, p in self.layers.items():
            entry = names.setdefault(name, {})
            precision = entry.setdefault("Precision", {})
            if not isinstance(precision, dict):
                precision = entry["Precision"] = {}
            for key, t in p.types().items():
                if p.kind == "batchnorm" and key == "weight":
                    key = "scale"
                precision[key] = t.hls()
        return config

    def widened(self, bits: int) -> "PrecisionPlan":
        """Every fraction widened by ``bits`` (the retry when C simulation misses the target)."""
        def wider(t):
            return None if t is None else dataclasses.replace(t, width=min(t.width + bits, ACCUM_CAP))
        layers = {n: dataclasses.replace(p, **{k: wider(v) for k, v in p.types().items()})
                  for n, p in self.layers.items()}
        return PrecisionPlan(layers, dict(self.emulated), self.samples)


class Emulator:
    """The lowered model run in float64 with fixed-point rounding at every typed tensor."""

    def __init__(self, lowered, x: np.ndarray):
        import copy

        import torch

        self.torch = torch
        self.lowered = lowered
        self.module = copy.deepcopy(lowered.module).double()
        x = np.asarray(x, dtype=np.float64)
        self.x = torch.from_numpy(x.reshape(len(x), *lowered.input_shape))
        self.nodes = list(self.module.graph.nodes)
        self.modules = dict(self.module.named_modules())
        self.reference = self.run(None)
        self._weights: dict[tuple, Any] = {}

    def _qweights(self, name: str, p: LayerPrecision):
        key = (name, p.weight, p.bias)
        if key not in self._weights:
            m = self.modules[name]
            w = m.weight.detach().double().numpy()
            b = m.bias.detach().double().numpy()
            self._weights[key] = (self.torch.from_numpy(p.weight.quantize(w)), self.torch.from_numpy(p.bias.quantize(b)))
        return self._weights[key]

    def run(self, plan: PrecisionPlan | None) -> np.ndarray:
        """Outputs on the calibration set: float (``plan`` None) or fixed-point."""
        torch = self.torch
        F = torch.nn.functional
        values: dict[str, Any] = {}
        with torch.no_grad():
            for node in self.nodes:
                p = plan.layers.get(node.name) if plan else None
                if node.op == "placeholder":
                    out = self.x
                elif node.op == "output":
                    return values[node.args[0].name].numpy()
                else:
                    args = [values[a.name] if hasattr(a, "name") else a for a in node.args]
                    if node.op == "call_module":
                        m = self.modules[node.target]
                        if p is not None and p.weight is not None and isinstance(
                                m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
                            w, b = self._qweights(node.target, p)
                            if isinstance(m, torch.nn.Linear):
                                out = F.linear(args[0], w, b)
                            else:
                                conv = F.conv2d if isinstance(m, torch.nn.Conv2d) else F.conv1d
                                out = conv(args[0], w, b, m.stride, m.padding)
                        else:
                            out = m(args[0])
                    else:
                        if node.target is torch.cat:
                            out = torch.cat([values[a.name] for a in node.args[0]], dim=1)
                        else:
                            out = node.target(*args)
                if p is not None and p.result is not None:
                    out = torch.from_numpy(p.result.quantize(out.numpy()))
                values[node.name] = out
        raise AssertionError("graph without output")

    def score(self, plan: PrecisionPlan, classify: bool) -> dict[str, float]:
        """Top-1 agreement (classifiers) and SNR of the fixed-point outputs against float."""
        out = self.run(plan)
        ref = self.reference
        noise = float(np.sum((ref - out) ** 2))
        signal = float(np.sum(ref * ref))
        snr = float("inf") if noise == 0 else 10 * math.log10(max(signal, 1e-300) / noise)
        result = {"snr_db": snr}
        if classify and ref.ndim >= 1 and ref.shape[-1] > 1:
            result["top1"] = float(np.mean(ref.argmax(-1) == out.argmax(-1)))
        return result


def measure_ranges(emulator: Emulator) -> dict[str, dict[str, float]]:
    """max|x| of each layer's result (and weights, biases) on the calibration set."""
    torch = emulator.torch
    ranges: dict[str, dict[str, float]] = {}
    values: dict[str, Any] = {}
    with torch.no_grad():
        for node in emulator.nodes:
            if node.op == "placeholder":
                values[node.name] = emulator.x
                ranges[node.name] = {"result": float(emulator.x.abs().max())}
                continue
            if node.op == "output":
                break
            args = [values[a.name] if hasattr(a, "name") else a for a in node.args]
            if node.op == "call_module":
                m = emulator.modules[node.target]
                out = m(args[0])
            elif node.target is torch.cat:
                out = torch.cat([values[a.name] for a in node.args[0]], dim=1)
            else:
                out = node.target(*args)
            values[node.name] = out
            r = {"result": float(out.abs().max())}
            m = emulator.modules.get(node.target) if node.op == "call_module" else None
            if m is not None and hasattr(m, "weight") and m.weight is not None:
                r["weight"] = float(m.weight.detach().abs().max())
                r["bias"] = float(m.bias.detach().abs().max()) if m.bias is not None else 0.0
            ranges[node.name] = r
    return ranges


def choose_precision(lowered, x: np.ndarray, *, classify: bool, min_top1: float, min_snr_db: float,
                     margin: int = 1, progress=None) -> PrecisionPlan:
    """Pick per-layer ``ap_fixed`` types meeting the target on calibration data ``x``.

    Args:
        lowered: The lowered model (:func:`edgesmith.export.hls.graph.lower`).
        x: Calibration inputs, in the model's input layout.
        classify: Whether top-1 agreement is part of the target.
        min_top1: Agreement target (classifiers).
        min_snr_db: Output SNR target.
        margin: Extra integer bits for results and accumulators.
        progress: Optional ``callable(done, total)``.

    Raises:
        BadInputError: Even the starting widths miss the target (the model's range is too wide).
    """
    emulator = Emulator(lowered, x)
    ranges = measure_ranges(emulator)
    kinds = {layer.name: layer.kind for layer in lowered.layers}
    layers: dict[str, LayerPrecision] = {}
    inputs = _input_names(emulator)

    def fixed(max_abs: float, extra: int, fraction: int) -> Fixed:
        i = integer_bits(max_abs, extra)
        return Fixed(i + fraction, i)

    for node in emulator.nodes:
        if node.op == "placeholder":
            r = ranges[node.name]
            layers[node.name] = LayerPrecision(node.name, "input", result=fixed(r["result"], 0, START_FRACTION),
                                               ranges=r)
        if node.op not in ("call_module", "call_function") or kinds.get(node.name) == "reshape":
            continue
        r = ranges[node.name]
        p = LayerPrecision(node.name, kinds.get(node.name, "add"), ranges=r,
                           result=fixed(r["result"], margin, START_FRACTION))
        if "weight" in r:
            p.weight = fixed(r["weight"], 0, START_FRACTION)
            p.bias = fixed(r["bias"], 0, START_FRACTION)
        layers[node.name] = p
    plan = PrecisionPlan(layers, {}, len(x))
    _set_accumulators(plan, emulator, inputs, ranges, margin)

    def meets(candidate: PrecisionPlan) -> dict[str, float] | None:
        s = emulator.score(candidate, classify)
        ok = s["snr_db"] >= min_snr_db and s.get("top1", 1.0) >= min_top1
        return s if ok else None

    if meets(plan) is None:
        s = emulator.score(plan, classify)
        raise BadInputError(
            f"automatic precision: even {START_FRACTION} fraction bits per tensor miss the target on the calibration "
            f"set (SNR {s['snr_db']:.1f} dB, top-1 {s.get('top1', 1.0):.1%})",
            hint="check the calibration data is in the model's input layout and range, or give precision=ap_fixed<W,I>")
    slots = [(name, key) for name, p in plan.layers.items() for key in ("weight", "bias", "result")
             if getattr(p, key) is not None]
    for done, (name, key) in enumerate(slots):
        lo, hi = 0, START_FRACTION
        while lo < hi:  # fewest fraction bits that still meet the target
            mid = (lo + hi) // 2
            trial = _with_fraction(plan, name, key, mid)
            _set_accumulators(trial, emulator, inputs, ranges, margin)
            if meets(trial) is not None:
                hi = mid
            else:
                lo = mid + 1
        plan = _with_fraction(plan, name, key, lo)
        _set_accumulators(plan, emulator, inputs, ranges, margin)
        if progress:
            progress(done + 1, len(slots))
    plan.emulated = emulator.score(plan, classify)
    return plan


def _with_fraction(plan: PrecisionPlan, name: str, key: str, fraction: int) -> PrecisionPlan:
    p = plan.layers[name]
    t = getattr(p, key)
    layers = dict(plan.layers)
    layers[name] = dataclasses.replace(p, **{key: Fixed(t.integer + fraction, t.integer)})
    return PrecisionPlan(layers, plan.emulated, plan.samples)


def _input_names(emulator: Emulator) -> dict[str, str]:
    """Layer name -> the typed layer its input comes from (through reshapes; the input layer's own name)."""
    kinds = {layer.name: layer.kind for layer in emulator.lowered.layers}
    source: dict[str, str] = {}
    for node in emulator.nodes:
        if node.op == "placeholder":
            source[node.name] = node.name
        elif node.op in ("call_module", "call_function"):
            first = node.args[0][0] if node.target is emulator.torch.cat else node.args[0]
            source[node.name] = source[first.name] if kinds.get(node.name) == "reshape" else node.name
    return {node.name: source[(node.args[0][0] if node.target is emulator.torch.cat else node.args[0]).name]
            for node in emulator.nodes if node.op in ("call_module", "call_function")}


def _set_accumulators(plan: PrecisionPlan, emulator, inputs: dict[str, str], ranges, margin: int) -> None:
    """Accumulators exact: fraction bits of weight plus input, integer bits from the range plus a margin."""
    for name, p in plan.layers.items():
        if p.kind not in ("conv", "linear", "pool"):
            continue
        source = plan.layers[inputs[name]].result
        frac = source.fraction + (p.weight.fraction if p.weight is not None else 0)
        if p.kind == "pool":
            frac += 4  # the average's division keeps some of the bits it shifts out
        span = ranges[name]["result"]
        if p.kind == "pool":  # an average pool sums its window before dividing
            kernel = getattr(emulator.modules.get(name), "kernel_size", 1)
            span = ranges[inputs[name]]["result"] * math.prod(kernel if isinstance(kernel, tuple) else (kernel,))
        integer = integer_bits(span, margin + 1)
        p.accum = Fixed(min(integer + frac, ACCUM_CAP), integer, round_saturate=False)  # exact: no rounding


def format_table(plan: PrecisionPlan) -> list[list[str]]:
    """Rows ``layer, kind, weight, bias, result, accum, max|result|`` for the CLI and the manifest."""
    rows = []
    for name, p in plan.layers.items():
        rows.append([name, p.kind, *(t.short() if t else "" for t in (p.weight, p.bias, p.result, p.accum)),
                     f"{p.ranges.get('result', 0.0):.3g}"])
    return rows


def check_calibration(x: np.ndarray, shape: tuple) -> np.ndarray:
    """Calibration inputs shaped like the model's input (all but the batch axis)."""
    x = np.asarray(x, dtype=np.float32)
    if tuple(x.shape[1:]) != tuple(shape[1:]):
        raise BadInputError(f"calibration data has shape {tuple(x.shape)}, the model takes (N, "
                            f"{', '.join(map(str, shape[1:]))})", hint="give data in the model's input layout")
    return x
