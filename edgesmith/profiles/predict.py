"""Predicting a graph's latency on a device from its per-op costs (always labelled ``predicted``).

Each node's time is a roofline on the device, scaled by its op class's efficiency:

    t(node) = max(flops / peak, bytes / bandwidth) / efficiency[class] + per-node overhead

summed over the nodes that would run, plus a per-run overhead. Nodes a runtime
folds away are not counted: an activation, BatchNorm, bias add or scalar scale
right after the conv/matmul that alone feeds it (fused into it, by ONNX Runtime,
TensorRT and Core ML alike), and nodes that read only weights (constant-folded).

Where the figures come from:

- the host: ``peak`` and ``bandwidth`` measured by the calibration suite
  (:mod:`edgesmith.profiles.calibrate`, the model in :mod:`edgesmith.profiles.roofline`), with its per-class
  efficiencies and overheads;
- CPUs (the host and catalog CPUs): op times scaled by the calibration's
  ``graph_factor`` (a whole reference network against the sum of its one-op times);
- a catalog device: its data-sheet peak for the graph's precision and its memory
  bandwidth, derated by :data:`ATTAINABLE` (the share of a data-sheet figure that
  a large GEMM or a streaming copy reaches in practice), with the host's per-class
  efficiencies and the per-node and per-run overheads of its kind
  (:data:`KIND_OVERHEADS_US`).

An ``hls`` bundle is FPGA logic, not a graph a runtime schedules: on an ``fpga``
device its latency is the cycles its first-order resource model predicts
(:mod:`edgesmith.profiles.fpga`, from the layer sizes, reuse factor and
precisions) times the bundle's clock period, and its DSP/LUT/FF/BRAM are set
against the device's part; the band is :data:`TRANSFER_BAND` of ``fpga``, as no
synthesis checked the cycle model here.

The uncertainty band is ``point / (1 + u)`` to ``point * (1 + u)``: on the host
``u`` is the calibration suite's own median error (at least :data:`MIN_BAND`);
on another device, :data:`TRANSFER_BAND` of its kind is added, because the
host's efficiencies and the kind's overheads are assumptions there, not measurements.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from edgesmith.devices.catalog import Device
from edgesmith.errors import UsageError
from edgesmith.profiles.roofline import Calibration, roofline_ms
from edgesmith.profiles.cost import GraphCost, OpCost

# A large GEMM reaches about 80% of a data-sheet peak and a streaming copy about 80% of the
# data-sheet bandwidth on CPUs and GPUs alike (the host's calibration measures what it reaches).
ATTAINABLE = {"compute": 0.8, "bandwidth": 0.8}
# Per-node dispatch and per-run overheads by device kind, in microseconds: a CUDA kernel launch is a
# few microseconds, an NPU (Core ML on the Neural Engine, QNN) pays more per call and less per layer,
# an FPGA dataflow design has no per-layer dispatch. Order-of-magnitude figures, hence the wider band.
KIND_OVERHEADS_US = {"gpu": (5.0, 30.0), "npu": (2.0, 150.0), "fpga": (0.0, 10.0)}
MIN_BAND = 0.15
TRANSFER_BAND = {"cpu": 0.5, "gpu": 1.0, "npu": 1.0, "fpga": 1.0}
# an op fuses into the conv/matmul that alone feeds it
_FUSABLE = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Add",
            "BatchNormalization", "Mul", "Div"}
_FUSE_INTO = {"conv", "dwconv", "matmul"}
_FALLBACK = {"fp32": ("fp16", "bf16"), "bf16": ("fp16", "fp32"), "fp16": ("bf16", "fp32"),
             "int8": ("fp16", "fp32"), "int4": ("int8", "fp16")}


@dataclass
class Prediction:
    """A predicted latency with its band and where the time goes.

    Attributes:
        device: Device name.
        latency_ms: Point estimate.
        low_ms: Low end of the band.
        high_ms: High end of the band.
        flops: FLOPs of the nodes counted.
        bytes: Bytes they move.
        nodes: Nodes counted (after fusion and folding).
        fused: Nodes folded into their producer.
        compute_bound_share: Share of the op time in compute-bound ops.
        by_class: Predicted ms per op class.
        precision: Precision used for the device's peak (``fp32``...).
        figures: The peak (GFLOP/s), bandwidth (GB/s) and overheads (us) used.
        notes: How this prediction was made, and what it assumes.
        resources: An hls bundle's predicted FPGA resources (``dsp``, ``lut``, ``ff``, ``bram18``,
            ``part``, ``capacity``, ``utilisation``, ``fits``, ``latency_cycles``, ``clock_ns``);
            None for a graph.
        op_ms: Predicted ms per node name (not serialized).
    """

    device: str
    latency_ms: float
    low_ms: float
    high_ms: float
    flops: float
    bytes: float
    nodes: int
    fused: int
    compute_bound_share: float
    by_class: dict[str, float]
    precision: str
    figures: dict[str, float]
    notes: list[str] = field(default_factory=list)
    resources: dict[str, Any] | None = None
    op_ms: dict[str, float] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, without ``op_ms`` (a profile carries the per-layer times instead)."""
        data = asdict(self)
        data.pop("op_ms")
        return data


def device_figures(device: Device, precision: str, calibration: Calibration) -> tuple[float, float, float, float,
                                                                                       str, list[str]]:
    """(peak GFLOP/s, bandwidth GB/s, per-node us, per-run us, precision used, notes) for a device.

    Raises:
        UsageError: A catalog device without a peak for the precision (or a close one) or a bandwidth.
    """
    if device.name == "host":
        return (calibration.peak_gflops, calibration.bandwidth_gbs, calibration.op_overhead_us,
                calibration.run_overhead_us, precision,
                [f"host figures measured by the calibration suite: {calibration.peak_gflops:.0f} GFLOP/s, "
                 f"{calibration.bandwidth_gbs:.1f} GB/s, {calibration.op_overhead_us:.2f} us per node"])
    notes = []
    used = precision
    if used not in device.peak_tflops:
        used = next((p for p in _FALLBACK.get(precision, ()) if p in device.peak_tflops), "")
        if not used:
            raise UsageError(f"device {device.name!r} lists no peak for {precision} (it has "
                             f"{', '.join(device.peak_tflops) or 'none'})",
                             hint=f"add peak_tflops.{precision} to its device file")
        notes.append(f"{device.name} has no {precision} figure; its {used} peak is used "
                     f"(the runtime computes in {used} there)")
    if not device.memory_bandwidth_gbs:
        raise UsageError(f"device {device.name!r} has no memory_bandwidth_gbs", hint="add it to its device file")
    peak = device.peak_tflops[used] * 1e3 * ATTAINABLE["compute"]
    bandwidth = device.memory_bandwidth_gbs * ATTAINABLE["bandwidth"]
    if device.kind == "cpu":
        op_us, run_us = calibration.op_overhead_us, calibration.run_overhead_us
    else:
        op_us, run_us = KIND_OVERHEADS_US[device.kind]
    notes.append(f"data-sheet {used} peak {device.peak_tflops[used]:g} TFLOP/s and "
                 f"{device.memory_bandwidth_gbs:g} GB/s, derated to {ATTAINABLE['compute']:.0%}; "
                 "the host's per-class efficiencies; "
                 f"{op_us:g} us per node and {run_us:g} us per run ({device.kind})")
    return peak, bandwidth, op_us, run_us, used, notes


def fused_nodes(costs: list[OpCost], producers: dict[str, str], consumers: dict[str, int]) -> set[str]:
    """Nodes that fold into the conv/matmul that alone feeds them (at most two per conv/matmul).

    Args:
        costs: The graph's op costs.
        producers: Node name -> name of the node producing its first non-weight input.
        consumers: Node name -> how many nodes read its outputs.
    """
    by_name = {c.node: c for c in costs}
    fused: set[str] = set()
    depth: dict[str, int] = {}
    for c in costs:
        src = producers.get(c.node)
        if c.op_type not in _FUSABLE or src is None or src not in by_name or consumers.get(src, 0) != 1:
            continue
        head_class = by_name[src].op_class
        if head_class in _FUSE_INTO or (src in fused and depth.get(src, 0) < 2):
            fused.add(c.node)
            depth[c.node] = depth.get(src, 0) + 1
    return fused


def predict(graph: GraphCost, device: Device, calibration: Calibration) -> Prediction:
    """Predict a graph's latency on ``device``.

    Args:
        graph: Per-node costs and links (:func:`edgesmith.profiles.cost.graph_costs`).
        device: The device (``host`` or a catalog device).
        calibration: The host's calibration.

    Raises:
        UsageError: The device lacks a figure the prediction needs (named).
    """
    costs = graph.costs
    precisions = defaultdict(float)
    for c in costs:
        precisions[c.precision] += c.flops
    precision = max(precisions, key=precisions.get) if precisions else "fp32"
    peak, bandwidth, op_us, run_us, used, notes = device_figures(device, precision, calibration)
    floor_us = calibration.kernel_floor_us if device.kind == "cpu" else 0.0
    fused = fused_nodes(costs, graph.producers, graph.consumers)
    folded = graph.folded
    op_ms: dict[str, float] = {}
    by_class: dict[str, float] = defaultdict(float)
    compute_ms = flops = nbytes = 0.0
    for c in costs:
        if c.node in fused or c.node in folded:
            continue
        if c.op_class == "free":
            t = op_us / 1e3
        else:
            compute = c.flops / (peak * 1e6)
            memory = c.bytes / (bandwidth * 1e6)
            t = roofline_ms(c.flops, c.bytes, peak, bandwidth) / calibration.efficiency.get(c.op_class, 1.0)
            # the suite's weights stay in cache between runs; a model's weights stream in from memory
            t += c.weight_bytes / (bandwidth * 1e6)
            if compute >= memory:
                compute_ms += t
            # an op too small to be split over the thread pool does not pay its start-up
            t += (op_us + floor_us * min(1.0, t * 1e3 / floor_us if floor_us else 0.0)) / 1e3
        op_ms[c.node] = t
        by_class[c.op_class] += t
        flops += c.flops
        nbytes += c.bytes
    factor = calibration.graph_factor if device.kind == "cpu" else 1.0
    if factor != 1.0:
        op_ms = {k: v * factor for k, v in op_ms.items()}
        by_class = {k: v * factor for k, v in by_class.items()}
        compute_ms *= factor
        notes.append(f"op times x {factor:.2f}, the calibration's reference-network factor (CPU)")
    total_ops = sum(op_ms.values())
    latency = total_ops + run_us / 1e3
    u = max(calibration.spread, MIN_BAND) + (0.0 if device.name == "host" else TRANSFER_BAND[device.kind])
    if fused:
        notes.append(f"{len(fused)} activation/norm/bias nodes fused into their conv or matmul")
    return Prediction(device=device.name, latency_ms=latency, low_ms=latency / (1 + u), high_ms=latency * (1 + u),
                      flops=flops, bytes=nbytes, nodes=len(op_ms), fused=len(fused),
                      compute_bound_share=compute_ms / total_ops if total_ops else 0.0, by_class=dict(by_class),
                      precision=used, figures={"peak_gflops": peak, "bandwidth_gbs": bandwidth,
                                               "op_overhead_us": op_us, "run_overhead_us": run_us},
                      notes=notes, op_ms=op_ms)


def bundle_graph(bundle) -> tuple[Any, str | None]:
    """The ONNX graph a bundle's prediction reads, and a note when it is not the bundle's own.

    onnx and tensorrt bundles carry ``model.onnx``. For a torch, coreml or mlx bundle the graph of
    the same variant's onnx bundle beside it (``NAME.onnx``, same source and passes) is used: the
    computation is the same, only the file format differs.

    Raises:
        UsageError: No ONNX graph in the bundle nor beside it, with what to do instead.
    """
    from edgesmith.bundle import Bundle
    from edgesmith.errors import EdgesmithError

    own = bundle.path / "model.onnx"
    if own.is_file():
        return own, None
    sibling = bundle.path.parent / f"{bundle.manifest.name}.onnx"
    if (sibling / "model.onnx").is_file():
        try:
            other = Bundle.open(sibling)
        except EdgesmithError:
            other = None
        if (other is not None and other.manifest.source == bundle.manifest.source
                and _pass_params(other.manifest.passes) == _pass_params(bundle.manifest.passes)):
            return other.model_path, f"graph read from {sibling.name}, the same variant's onnx bundle"
    raise UsageError(f"bundle {bundle.path.name} ({bundle.manifest.target}) has no ONNX graph to predict from",
                     hint=f"export the same variant with -t onnx next to it and profile again "
                          f"(edgesmith export {bundle.manifest.source.get('reference', 'MODEL')} -t onnx)")


def _pass_params(passes: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """What defines a variant: its passes' names and parameters (not their timings or reports)."""
    return [(p.get("name"), p.get("params")) for p in passes]


def predict_bundle(bundle, device: Device, calibration: Calibration,
                   inputs: dict[str, Any] | None = None) -> tuple[Prediction, GraphCost]:
    """Predict a bundle's latency on a device, at its golden inputs' shapes (or ``inputs``').

    Args:
        bundle: A bundle folder (verified on opening) or an open :class:`~edgesmith.bundle.Bundle`.
        device: The device.
        calibration: The host's calibration.
        inputs: Inputs whose shapes to predict at (default: the bundle's golden inputs).

    Raises:
        UsageError: No ONNX graph in the bundle, or a device figure missing.
    """
    from edgesmith.bundle import Bundle
    from edgesmith.profiles.cost import graph_costs

    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle)
    path, note = bundle_graph(bundle)
    graph = graph_costs(path, inputs if inputs is not None else bundle.golden()[0])
    prediction = predict(graph, device, calibration)
    if note:
        prediction.notes.append(note)
    if device.targets and bundle.manifest.target not in device.targets:
        prediction.notes.append(f"the graph of the {bundle.manifest.target} bundle, as {device.name} would run "
                                f"it exported to {' or '.join(device.targets)}")
    return prediction, graph


def predict_hls(bundle, device: Device, batch: int = 1) -> Prediction:
    """An hls bundle's latency and resources on an FPGA device, from the estimates made at export.

    The design takes one sample at a time: a batch is ``batch`` inferences, one initiation
    interval apart.

    Raises:
        UsageError: A device that is not an FPGA, or a bundle without estimates.
    """
    from edgesmith.profiles.fpga import PARTS, capacity_of

    if device.kind != "fpga":
        raise UsageError(f"bundle {bundle.path.name} is FPGA logic (hls); {device.name} is a {device.kind}",
                         hint="predict it on an fpga device (edgesmith devices list), or export the variant "
                              "with -t onnx for this device")
    info = bundle.manifest.details.get("hls") or {}
    est = info.get("estimates")
    if not est:
        raise UsageError(f"bundle {bundle.path.name} has no resource estimates", hint="export it again")
    cycles = est["latency_cycles"] + (batch - 1) * est["interval_cycles"]
    latency = cycles * est["clock_ns"] / 1e6
    u = TRANSFER_BAND["fpga"]
    total = est["total"]
    notes = [f"{cycles:,} cycles (first-order model of edgesmith.profiles.fpga) at the bundle's "
             f"{est['clock_ns']:g} ns clock; the design is assumed to close timing there, and host transfers "
             "are not counted"]
    if batch > 1:
        notes.append(f"batch {batch}: one sample at a time, a new one every {est['interval_cycles']:,} cycles")
    part = device.part or est["part"]
    capacity = capacity_of(part)
    if device.part and device.part.lower() != str(est["part"]).lower():
        notes.append(f"built for {est['part']}; {device.name} has {device.part}: export with --part "
                     f"{device.part} for that part's project")
    if capacity is None:
        notes.append(f"no capacity known for part {part} (edgesmith knows {', '.join(PARTS)})")
    utilisation = {k: total[k] / capacity[k] for k in total} if capacity else None
    resources = {**total, "part": part, "capacity": capacity, "utilisation": utilisation,
                 "fits": all(v <= 1.0 for v in utilisation.values()) if utilisation else None,
                 "latency_cycles": est["latency_cycles"], "interval_cycles": est["interval_cycles"],
                 "clock_ns": est["clock_ns"]}
    if utilisation and not resources["fits"]:
        over = max(utilisation, key=utilisation.get)
        notes.append(f"does not fit {part}: {over.upper()} {utilisation[over]:.0%} of the part (raise the reuse "
                     "factor, use io=stream or the resource strategy)")
    op_ms = {r["layer"]: r["cycles"] * est["clock_ns"] / 1e6 for r in est["layers"] if r["cycles"]}
    by_class = defaultdict(float)
    for row in est["layers"]:
        by_class[row["class"]] += row["cycles"] * est["clock_ns"] / 1e6
    return Prediction(device=device.name, latency_ms=latency, low_ms=latency / (1 + u), high_ms=latency * (1 + u),
                      flops=0.0, bytes=0.0, nodes=len(est["layers"]), fused=0, compute_bound_share=1.0,
                      by_class=dict(by_class), precision=str(info.get("precision_mode", "fixed")),
                      figures={"clock_ns": est["clock_ns"], "reuse_factor": float(info.get("reuse_factor", 1))},
                      notes=notes, resources=resources, op_ms=op_ms)


def predicted_profile(bundle_path, device: Device, calibration: Calibration) -> Any:
    """A ``predicted`` :class:`~edgesmith.profiles.profile.Profile` of a bundle on a device."""
    from edgesmith.bundle import Bundle
    from edgesmith.profiles.profile import LatencyStats, LayerTime, Profile

    bundle = Bundle.open(bundle_path)
    m = bundle.manifest
    golden = bundle.golden()[0]
    first = next(iter(golden.values()), None)
    batch = int(first.shape[0]) if first is not None and first.ndim else 1
    if m.target == "hls":
        prediction = predict_hls(bundle, device, batch)
        total = sum(prediction.op_ms.values()) or 1.0
        kinds = {r["layer"]: r["class"] for r in m.details["hls"]["estimates"]["layers"]}
        layers = [LayerTime(name=k, op_types=[kinds[k]], mean_ms=v, share=v / total)
                  for k, v in sorted(prediction.op_ms.items(), key=lambda kv: -kv[1])]
        memory_mb = prediction.resources["bram18"] * 18 * 1024 / 8 / 2**20  # on-chip block RAM
        memory_means = "on-chip block RAM the design uses"
    else:
        prediction, graph = predict_bundle(bundle, device, calibration)
        layers = layers_of(prediction, graph)
        weights = sum(c.weight_bytes for c in graph.costs)
        activations = max((c.bytes - c.weight_bytes for c in graph.costs), default=0.0)
        memory_mb = (weights + activations) / 2**20
        memory_means = "the model's weights and its largest activation (not a process's memory)"
    point = prediction.latency_ms
    stats = LatencyStats(p50=point, p90=point, p99=point, min=point, max=point, mean=point, std=0.0)
    return Profile(
        name=m.name, target=m.target, runtime=m.runtime, device=device.name, mode="predicted",
        latency_ms=stats, samples_ms=[], throughput_per_s=batch * 1e3 / point if point else 0.0, batch=batch,
        load_time_ms=0.0, peak_memory_mb=None, file_size_bytes=bundle.size_bytes(),
        warmup=0, runs=0, threads=0, layers=layers, parity=m.parity, passes=m.passes,
        bundle=str(bundle_path), timing="predicted",
        # not a peak memory: measured entries' figure is a whole process's, this is the model's data
        prediction={**prediction.to_dict(), "memory_mb": memory_mb, "memory_means": memory_means},
    )


def layers_of(prediction: Prediction, graph: GraphCost) -> list:
    """Predicted time per source module (``op:<type>`` where none is known), largest first."""
    from edgesmith.profiles.profile import LayerTime

    by_layer: dict[str, float] = defaultdict(float)
    ops: dict[str, set[str]] = defaultdict(set)
    for c in graph.costs:
        if c.node in prediction.op_ms:
            key = c.scope or f"op:{c.op_type}"
            by_layer[key] += prediction.op_ms[c.node]
            ops[key].add(c.op_type)
    total = sum(by_layer.values()) or 1.0
    return [LayerTime(name=k, op_types=sorted(ops[k]), mean_ms=v, share=v / total)
            for k, v in sorted(by_layer.items(), key=lambda kv: -kv[1])]
