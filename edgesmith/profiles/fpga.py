"""Predicted FPGA resources and latency of an hls4ml model, from its layers alone.

Nothing here is synthesised: the vendor tool is not run (it is not installed
here, and a synthesis takes hours). The figures are a documented first-order
model, labelled ``predicted`` wherever they are shown, meant for comparing
precisions, reuse factors and models before a synthesis, not for sign-off.

Per layer with weights (Dense, Conv1D/2D, BatchNormalization), with ``RF`` the
reuse factor and ``nz`` the non-zero weights (hls4ml drops zero products):

- multipliers instantiated ``m = ceil(nz / RF)``;
- **DSP**: a multiplier whose weight is narrower than 9 bits goes to LUTs (the
  threshold hls4ml's own DSP-aware pruning assumes for Vivado); otherwise
  ``ceil(a / 27) * ceil(b / 18)`` DSP48E2 slices for operands of ``a >= b`` bits
  (the slice multiplies 27 x 18 bits);
- **LUT**: ``a * b / 2`` per LUT multiplier (constant-coefficient multiply), one
  LUT per accumulator bit per multiplier (the adder tree), and the layer's
  output conversion (one LUT per output bit);
- **FF**: each multiplier's product registered at accumulator width, and the
  outputs registered at result width;
- **BRAM** (18 Kb blocks): weights only with the Resource strategy
  (``ceil(m * w / 36)`` blocks, ``ceil(RF / 512)`` deep); one per lookup table
  of a sigmoid/tanh/softmax; stream FIFOs with io_stream when a layer's output
  stream holds more than 1 Kb;
- **cycles**: Dense ``RF + ceil(log2 n_in) + 2``; a convolution computes one
  output pixel every ``RF`` cycles in io_parallel (one input pixel in io_stream),
  plus its adder tree; pooling ``ceil(log2 k) + 1``; activations 1 (lookup
  tables 2). Latency is the sum over layers; the interval is the slowest layer's.

Device capacities (for the utilisation shown beside the estimate) come from the
vendors' data sheets for the parts edgesmith knows.

A profiling concern shared by two users: the hls exporter (:mod:`edgesmith.export.hls`) records
the estimate in the bundle's manifest and README, and a prediction on an ``fpga`` device
(:func:`edgesmith.profiles.predict.predict_hls`) sets it against the device's part.
"""

from __future__ import annotations

import math
from typing import Any

# part prefix -> (DSP, LUT, FF, BRAM 18 Kb), from the data sheets named in the comments
PARTS = {
    "xczu7ev": (1728, 230_400, 460_800, 624),  # DS891 Zynq UltraScale+ overview: ZU7EV (ZCU104)
    "xcu280": (9024, 1_304_000, 2_607_000, 4032),  # DS963 Alveo U280 data sheet
    "xcvu13p": (12_288, 1_728_000, 3_456_000, 5376),  # DS923 Virtex UltraScale+: VU13P (hls4ml's default part)
    "xcku115": (5520, 663_360, 1_326_720, 4320),  # DS890 Kintex UltraScale: KU115
}
LUT_MULT_BELOW = 9
TABLE_ACTIVATIONS = ("sigmoid", "tanh", "softmax")


def capacity_of(part: str) -> dict[str, int] | None:
    """``{"dsp", "lut", "ff", "bram18"}`` of a part edgesmith knows (by its family prefix), else None."""
    return next((dict(zip(("dsp", "lut", "ff", "bram18"), v)) for k, v in PARTS.items()
                 if part.lower().startswith(k)), None)


def resources_text(total: dict[str, int], capacity: dict[str, int] | None, *, of: bool = False) -> str:
    """``DSP 80 (5%), LUT 59,566 (26%), ...``: the totals, with their share of the part where known."""
    def one(k: str) -> str:
        if not capacity:
            return f"{k.upper()} {total[k]:,}"
        return f"{k.upper()} {total[k]:,} ({total[k] / capacity[k]:.0%}" + (f" of {capacity[k]:,})" if of else ")")

    return ", ".join(one(k) for k in ("dsp", "lut", "ff", "bram18"))


def latency_text(latency_cycles: int, clock_ns: float, *, batch: int = 1, interval_cycles: int = 1) -> str:
    """One sample's latency in cycles and time (``28 cycles = 140 ns at a 5 ns clock``), and a batch's.

    The one way export, profile and the bundle's README write an HLS latency, so they show the
    same number in the same unit.

    Args:
        latency_cycles: One sample's latency.
        clock_ns: Clock period.
        batch: Samples in a run; above 1 the batch's latency follows (one sample at a time).
        interval_cycles: Cycles between two samples entering the design.
    """
    from edgesmith.units import format_duration

    text = (f"{latency_cycles:,} cycles = {format_duration(latency_cycles * clock_ns / 1e6)} per sample "
            f"at a {clock_ns:g} ns clock")
    if batch > 1:
        cycles = latency_cycles + (batch - 1) * interval_cycles
        every = f"{interval_cycles:,} cycle" + "s" * (interval_cycles != 1)
        text += (f"; a batch of {batch} (a new sample every {every}): {cycles:,} cycles = "
                 f"{format_duration(cycles * clock_ns / 1e6)}")
    return text


def _width(t) -> int:
    return int(t.precision.width) if hasattr(t, "precision") else int(t)


def _dsp_per_mult(a: int, b: int) -> int:
    a, b = max(a, b), min(a, b)
    return math.ceil(a / 27) * math.ceil(b / 18)


def estimate(hls_model, *, reuse_factor: int, io: str, strategy: str, clock_ns: float, part: str) -> dict[str, Any]:
    """Predicted DSP/LUT/FF/BRAM and cycles per layer and in total.

    Returns:
        ``{"layers": [...], "total": {...}, "latency_cycles", "interval_cycles", "latency_us",
        "clock_ns", "part", "capacity", "utilisation", "kind": "predicted", "model": <doc line>}``.
    """
    rows = []
    for layer in hls_model.get_layers():
        rows.append(_layer(layer, reuse_factor, io, strategy))
    total = {k: sum(r[k] for r in rows) for k in ("dsp", "lut", "ff", "bram18")}
    latency = sum(r["cycles"] for r in rows)
    interval = max((r["interval"] for r in rows), default=1)
    capacity = capacity_of(part)
    utilisation = {k: total[k] / capacity[k] for k in total} if capacity else None
    return {
        "kind": "predicted",
        "model": "first-order model of edgesmith.profiles.fpga (no synthesis was run)",
        "layers": rows, "total": total,
        "latency_cycles": latency, "interval_cycles": interval,
        "latency_us": latency * clock_ns / 1000.0, "clock_ns": clock_ns,
        "part": part, "capacity": capacity, "utilisation": utilisation,
    }


def _layer(layer, rf: int, io: str, strategy: str) -> dict[str, Any]:
    cls = layer.class_name
    out = layer.get_output_variable()
    n_out = int(math.prod(out.shape))
    out_w = _width(out.type)
    in_var = layer.get_input_variable() if layer.inputs else None
    in_w = _width(in_var.type) if in_var is not None else out_w
    row = {"layer": layer.name, "class": cls, "multipliers": 0, "dsp": 0, "lut": 0, "ff": 0, "bram18": 0,
           "cycles": 0, "interval": 1}
    weight = layer.weights.get("weight") if hasattr(layer, "weights") else None
    if weight is None and cls.startswith("BatchNormalization"):
        weight = layer.weights.get("scale")
    if weight is not None:
        w_w = _width(weight.type)
        nz = int(weight.nonzeros)
        mults = math.ceil(nz / rf)
        accum = layer.get_attr("accum_t")
        acc_w = _width(accum) if accum is not None else w_w + in_w
        dsp_each = 0 if w_w < LUT_MULT_BELOW else _dsp_per_mult(w_w, in_w)
        row["multipliers"] = mults
        row["dsp"] = mults * dsp_each
        row["lut"] = (0 if dsp_each else mults * math.ceil(w_w * in_w / 2)) + mults * acc_w + n_out * out_w
        row["ff"] = mults * acc_w + n_out * out_w
        if strategy == "resource":
            row["bram18"] = math.ceil(mults * w_w / 36) * math.ceil(rf / 512)
        if cls.startswith("Conv"):
            kernel = int(layer.get_attr("n_chan") or 1) * int(layer.get_attr("filt_height") or 1) * int(
                layer.get_attr("filt_width") or 1)
            pixels_out = int(layer.get_attr("out_height") or 1) * int(layer.get_attr("out_width") or 1)
            pixels_in = int(layer.get_attr("in_height") or 1) * int(layer.get_attr("in_width") or 1)
            row["interval"] = (pixels_in if io == "stream" else pixels_out) * rf
            row["cycles"] = row["interval"] + math.ceil(math.log2(max(kernel, 2))) + 3
        else:
            n_in = int(layer.get_attr("n_in") or nz)
            row["interval"] = rf
            row["cycles"] = rf + math.ceil(math.log2(max(n_in, 2))) + 2
    elif cls.startswith("Pooling") or cls.startswith("GlobalPooling"):
        k = int(layer.get_attr("pool_height") or 1) * int(layer.get_attr("pool_width") or 1)
        row["lut"] = n_out * k * out_w
        row["ff"] = n_out * out_w
        row["cycles"] = math.ceil(math.log2(max(k, 2))) + 1
    elif cls in ("Activation", "ReLU", "LeakyReLU", "Softmax", "ParametrizedActivation"):
        table = str(layer.get_attr("activation", "")).lower() in TABLE_ACTIVATIONS
        row["lut"] = n_out * out_w
        row["ff"] = n_out * out_w
        row["bram18"] = 1 if table else 0
        row["cycles"] = 2 if table else 1
    elif cls in ("Merge", "Concatenate"):
        row["lut"] = n_out * out_w
        row["ff"] = n_out * out_w
        row["cycles"] = 1
    if io == "stream" and cls not in ("Input", "Reshape"):
        channels = int(out.shape[-1]) if out.shape else 1
        depth = max(n_out // max(channels, 1), 1)
        if depth * channels * out_w > 1024:
            row["bram18"] += math.ceil(channels * out_w / 36) * math.ceil(depth / 512)
    return row
