"""Calibrating the latency predictor on this machine, with ONNX Runtime.

A suite of one-op ONNX graphs, sized like the layers of the zoo models (convs at
224x224 input, MiniLM-sized matmuls, norms, pools, data movement), runs in ONNX
Runtime; its profiler gives each op's kernel time. From them:

- ``peak_gflops`` and ``bandwidth_gbs``: what this machine reaches on a large
  GEMM and a large elementwise add (measured, not from a data sheet);
- ``efficiency[class]``: per op class, the median over its ops of
  roofline time / (kernel time - the smallest kernel's time). It is a speed factor,
  not a share: the roofline's bandwidth is DRAM's (a 96 MB add), and the suite's
  elementwise and pool ops move a few MB that stay in cache, so they beat it (above 1);
- ``op_overhead_us``: what one more (trivial) node adds to a run, from a chain of
  100 tiny adds against a chain of 1;
- ``kernel_floor_us``: the shortest kernel of the suite, what any op that spreads over
  the thread pool costs however small (added to every op that is not a view);
- ``run_overhead_us``: what a run costs beyond its nodes;
- ``spread``: how far the calibrated roofline misses the suite's own kernel
  times (median absolute relative error), the base of the uncertainty band;
- ``graph_factor``: measured / predicted whole-run time of a made-up reference
  network (convs, depthwise blocks, attention; not a zoo model): what ops cost
  inside a model beyond their one-op times (caches that a lone op keeps warm,
  layout changes, thread hand-offs). Predictions for CPUs are scaled by it.

Every op is timed in two sessions and the faster kept (other work on a shared
machine only slows ops down). Calibration takes a few seconds and is cached per
machine, ONNX Runtime version and thread count in ``$EDGESMITH_CACHE`` (default
``~/.cache/edgesmith``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgesmith.errors import require
from edgesmith.profiles.cost import CLASSES, op_class
from edgesmith.profiles.roofline import CALIBRATION_VERSION, Calibration, roofline_ms

_RUNS = 30


# ---------------------------------------------------------------- the suite

def _suite() -> list[tuple[str, str, dict[str, Any], list[tuple[int, ...]], list[np.ndarray]]]:
    """(label, op_type, attributes, input shapes, initializers) per benchmark op."""
    rng = np.random.default_rng(0)

    def w(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.05

    s = []

    def conv(c_in, c_out, hw, k, stride=1, groups=1):
        s.append((f"conv {c_in}->{c_out} {k}x{k}/{stride} g{groups} @{hw}", "Conv",
                  {"kernel_shape": [k, k], "strides": [stride, stride], "pads": [k // 2] * 4, "group": groups},
                  [(1, c_in, hw, hw)], [w(c_out, c_in // groups, k, k), w(c_out)]))

    conv(3, 24, 224, 3, 2)
    conv(32, 32, 112, 3)
    conv(48, 192, 56, 1)
    conv(192, 48, 56, 1)
    conv(64, 64, 56, 3, groups=64)
    conv(96, 96, 28, 7, groups=96)
    conv(128, 128, 28, 3)
    conv(224, 224, 14, 3)
    conv(448, 1792, 7, 1)
    conv(256, 256, 14, 3, groups=256)
    conv(128, 128, 28, 3, groups=128)
    conv(32, 32, 112, 3, groups=32)

    def matmul(a, b):
        s.append((f"matmul {a}x{b}", "MatMul", {}, [a], [w(*b)]))

    matmul((34, 384), (384, 384))
    matmul((34, 384), (384, 1536))
    matmul((34, 1536), (1536, 384))
    matmul((1, 49, 448), (448, 448))
    matmul((1, 196, 64), (64, 256))
    matmul((1, 448), (448, 1000))
    matmul((256, 512), (512, 512))
    s.append(("attention scores 2x12x17x32 @ 32x17", "MatMul", {}, [(2, 12, 17, 32), (2, 12, 32, 17)], []))
    s.append(("attention 8x49x49 @ 49x32", "MatMul", {}, [(1, 8, 49, 49), (1, 8, 49, 32)], []))

    def ew(op, shape, second=None, attrs=None):
        shapes = [shape] + ([second] if second else [])
        s.append((f"{op.lower()} {shape}", op, attrs or {}, shapes, []))

    ew("Add", (1, 64, 56, 56), (1, 64, 56, 56))
    ew("Mul", (1, 64, 56, 56), (1, 64, 1, 1))
    ew("Relu", (1, 32, 112, 112))
    ew("Gelu", (1, 196, 448))
    ew("Gelu", (1, 64, 56, 56))
    ew("Erf", (2, 17, 1536))
    ew("Sigmoid", (1, 96, 28, 28))
    ew("Tanh", (1, 128, 28, 28))
    s.append(("resize x2 bilinear (1,64,28,28)", "Resize", {"mode": "linear"}, [(1, 64, 28, 28)],
              [np.array([], np.float32), np.array([1, 1, 2, 2], np.float32)]))
    ew("Add", (2, 17, 384), (2, 17, 384))
    ew("Mul", (1, 448, 7, 7), (1, 448, 7, 7))
    ew("Add", (8_000_000,), (8_000_000,))  # the bandwidth probe
    s.append(("layernorm (2,17,384)", "LayerNormalization", {"axis": -1}, [(2, 17, 384)], [w(384), w(384)]))
    s.append(("layernorm (1,49,448)", "LayerNormalization", {"axis": -1}, [(1, 49, 448)], [w(448), w(448)]))
    s.append(("softmax (2,12,17,17)", "Softmax", {"axis": -1}, [(2, 12, 17, 17)], []))
    s.append(("softmax (1,8,196,196)", "Softmax", {"axis": -1}, [(1, 8, 196, 196)], []))
    s.append(("batchnorm (1,64,56,56)", "BatchNormalization", {}, [(1, 64, 56, 56)],
              [w(64) + 1, w(64), w(64), np.abs(w(64)) + 1]))
    s.append(("avgpool 3x3 (1,48,56,56)", "AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                          "strides": [1, 1]}, [(1, 48, 56, 56)], []))
    s.append(("maxpool 3x3/2 (1,64,112,112)", "MaxPool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                          "strides": [2, 2]}, [(1, 64, 112, 112)], []))
    s.append(("reducemean hw (1,448,7,7)", "GlobalAveragePool", {}, [(1, 448, 7, 7)], []))
    s.append(("transpose (1,64,56,56)", "Transpose", {"perm": [0, 2, 3, 1]}, [(1, 64, 56, 56)], []))
    s.append(("transpose (2,17,12,32)", "Transpose", {"perm": [0, 2, 1, 3]}, [(2, 17, 12, 32)], []))
    s.append(("concat 2x(1,64,28,28)", "Concat", {"axis": 1}, [(1, 64, 28, 28), (1, 64, 28, 28)], []))
    s.append(("pad (1,96,28,28)", "Pad", {}, [(1, 96, 28, 28)], [np.array([0, 0, 3, 3, 0, 0, 3, 3], np.int64)]))
    return s


def _one_op_model(op: str, attrs: dict[str, Any], shapes: list[tuple[int, ...]], inits: list[np.ndarray]):
    """``op`` on the inputs, then a ReduceMax to a scalar so the op's output is an arena buffer."""
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, list(sh)) for i, sh in enumerate(shapes)]
    init_names = [f"w{i}" for i in range(len(inits))]
    initializers = [numpy_helper.from_array(a, n) for a, n in zip(inits, init_names)]
    nodes = [helper.make_node(op, [f"x{i}" for i in range(len(shapes))] + init_names, ["y"], name="op", **attrs)]
    if op == "Transpose":  # ORT would push a transpose through any sink, so it stays the output
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    else:
        nodes.append(helper.make_node("ReduceMax", ["y"], ["z"], name="sink", keepdims=0))
        outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, [])]
    graph = helper.make_graph(nodes, "calib", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)


def _chain_model(n: int):
    """``n`` adds of a one-element tensor in a row: what a trivial node costs."""
    from onnx import TensorProto, helper

    nodes, prev = [], "x"
    for i in range(n):
        nodes.append(helper.make_node("Add", [prev, "x"], [f"a{i}"], name=f"add{i}"))
        prev = f"a{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)


def _reference_net():
    """A small made-up vision transformer hybrid (convs, depthwise blocks, attention, MLP, head).

    Not any zoo model: what its whole-run time says beyond the sum of its ops' times (caches
    that one-op graphs keep warm, layout changes between ops, thread hand-offs) becomes the
    calibration's ``graph_factor``.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    inits, nodes = [], []
    count = iter(range(10_000))

    def w(*shape):
        name = f"w{next(count)}"
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.05, name))
        return name

    def node(op, inputs, **attrs):
        out = f"v{next(count)}"
        nodes.append(helper.make_node(op, inputs, [out], name=f"n_{out}", **attrs))
        return out

    def conv(x, c_in, c_out, k=3, stride=1, groups=1):
        return node("Conv", [x, w(c_out, c_in // groups, k, k), w(c_out)], kernel_shape=[k, k],
                    strides=[stride, stride], pads=[k // 2] * 4, group=groups)

    def block(x, c):
        y = conv(x, c, c, 3, groups=c)
        y = node("Gelu", [conv(y, c, 4 * c, 1)])
        return node("Add", [x, conv(y, 4 * c, c, 1)])

    x = node("Relu", [conv("image", 3, 32, 3, 2)])
    x = node("Relu", [conv(x, 32, 64, 3, 2)])
    x = block(block(x, 64), 64)
    x = conv(x, 64, 128, 3, 2)
    x = block(block(x, 128), 128)
    x = conv(x, 128, 256, 3, 2)  # 14x14 tokens
    shape = numpy_helper.from_array(np.array([1, 256, 196], np.int64), "tok_shape")
    inits.append(shape)
    t = node("Transpose", [node("Reshape", [x, "tok_shape"])], perm=[0, 2, 1])
    for _ in range(2):
        h = node("LayerNormalization", [t, w(256), w(256)], axis=-1)
        q, k, v = (node("MatMul", [h, w(256, 256)]) for _ in range(3))
        scores = node("Softmax", [node("Mul", [node("MatMul", [q, node("Transpose", [k], perm=[0, 2, 1])]),
                                               w(1)])], axis=-1)
        t = node("Add", [t, node("MatMul", [node("MatMul", [scores, v]), w(256, 256)])])
        h = node("LayerNormalization", [t, w(256), w(256)], axis=-1)
        h = node("Gelu", [node("Add", [node("MatMul", [h, w(256, 1024)]), w(1024)])])
        t = node("Add", [t, node("MatMul", [h, w(1024, 256)])])
    pooled = node("ReduceMean", [t, "axes"], keepdims=0)
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    logits = node("Gemm", [pooled, w(1000, 256), w(1000)], transB=1)
    graph = helper.make_graph(nodes, "reference", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                  [1, 3, 224, 224])],
                              [helper.make_tensor_value_info(logits, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)


def _graph_factor(calibration: "Calibration", threads: int, tmp: str) -> tuple[float, float, float]:
    """(measured / predicted, measured ms, predicted ms) of the reference net's whole run."""
    import onnx

    from edgesmith.devices.catalog import host_device
    from edgesmith.profiles.cost import graph_costs
    from edgesmith.profiles.predict import predict

    model = _reference_net()
    path = Path(tmp) / "reference.onnx"
    onnx.save(model, path)
    feeds = {"image": np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    measured = min(_wall_us(model, feeds, threads, runs=30) for _ in range(2)) / 1e3
    predicted = predict(graph_costs(path, feeds), host_device(), calibration).latency_ms
    return measured / predicted, measured, predicted


def calibrated_runtime() -> str:
    """The registry name of the runtime whose kernels the calibration suite times.

    On the host, a prediction of that runtime's bundles is comparable with their measurement;
    another runtime's kernels are not what the calibration measured.
    """
    from edgesmith.runtimes.onnxruntime import OnnxRuntime

    return OnnxRuntime.name


def _session(model, threads: int, profile_prefix: str | None = None):
    """An ONNX Runtime session with the options the runtime loader uses (so the timings match)."""
    from edgesmith.runtimes.onnxruntime import _options

    ort = require("onnxruntime", "all")
    return ort.InferenceSession(model.SerializeToString(), _options(threads, profile_prefix),
                                providers=["CPUExecutionProvider"])


def _kernel_ms(model, op: str, feeds: dict[str, np.ndarray], threads: int, tmp: str) -> float:
    """Median kernel time of the ``op`` node over the timed runs, from ORT's profiler (layout
    reorders that ORT adds around it are not counted: in a model they happen once per run)."""
    session = _session(model, threads, os.path.join(tmp, "calib"))
    for _ in range(3):
        session.run(None, feeds)
    for _ in range(_RUNS):
        session.run(None, feeds)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    times = [e["dur"] / 1000.0 for e in events
             if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
             and e.get("args", {}).get("op_name") == op and not e["name"].startswith("sink")]
    times = times[3:] if len(times) > _RUNS else times  # drop the warm-up runs
    return statistics.median(times) if times else float("nan")


def _wall_us(model, feeds: dict[str, np.ndarray], threads: int, runs: int = 300) -> float:
    session = _session(model, threads)
    for _ in range(20):
        session.run(None, feeds)
    samples = []
    for _ in range(runs):
        t = time.perf_counter_ns()
        session.run(None, feeds)
        samples.append((time.perf_counter_ns() - t) / 1000.0)
    return statistics.median(samples)


def run_calibration(threads: int = 0, progress: Callable[[str], None] | None = None) -> Calibration:
    """Measure the suite on this machine and fit the predictor's figures (a few seconds).

    Raises:
        RuntimeUnavailableError: onnx (the build stack, which builds the suite's models) is not installed.
    """
    from edgesmith.devices.host import fingerprint

    require("onnx", "build")
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgesmith-calib-") as tmp:
        for label, op, attrs, shapes, inits in _suite():
            if progress:
                progress(label)
            model = _one_op_model(op, attrs, shapes, inits)
            rng = np.random.default_rng(1)
            feeds = {f"x{i}": rng.standard_normal(sh).astype(np.float32) for i, sh in enumerate(shapes)}
            # the better of two sessions: other work on a shared machine only ever slows an op down
            ms = min(_kernel_ms(model, op, feeds, threads, tmp) for _ in range(2))
            flops, nbytes = _op_cost(op, attrs, shapes, inits)
            rows.append({"label": label, "op_type": op, "op_class": op_class(op, attrs.get("group", 1)), "flops": flops,
                         "bytes": nbytes, "kernel_ms": ms})
        one = np.ones(1, np.float32)
        chain1 = min(_wall_us(_chain_model(1), {"x": one}, threads) for _ in range(2))
        chain100 = min(_wall_us(_chain_model(100), {"x": one}, threads) for _ in range(2))
    op_overhead_us = max((chain100 - chain1) / 99, 0.1)
    run_overhead_us = max(chain1 - op_overhead_us, 0.0)
    gemm = [r for r in rows if r["op_class"] == "matmul"]
    peak_gflops = max(r["flops"] / r["kernel_ms"] / 1e6 for r in gemm)
    probe = next(r for r in rows if r["label"].startswith("add (8000000,)"))
    bandwidth_gbs = probe["bytes"] / probe["kernel_ms"] / 1e6
    floor_ms = min(r["kernel_ms"] for r in rows)
    efficiency = {}
    for cls in CLASSES:
        ratios = []
        for r in rows:
            if r["op_class"] != cls:
                continue
            roof = roofline_ms(r["flops"], r["bytes"], peak_gflops, bandwidth_gbs)
            ratios.append(roof / max(r["kernel_ms"] - floor_ms, 1e-4))
        if ratios:
            efficiency[cls] = float(min(max(statistics.median(ratios), 0.01), 4.0))
    efficiency.setdefault("elementwise", 1.0)
    for cls in CLASSES:  # classes the suite does not time borrow the elementwise figure
        efficiency.setdefault(cls, efficiency["elementwise"])
    errors = []
    for r in rows:
        pred = roofline_ms(r["flops"], r["bytes"], peak_gflops, bandwidth_gbs) / efficiency[r["op_class"]] + floor_ms
        r["predicted_ms"] = pred
        errors.append(abs(pred - r["kernel_ms"]) / r["kernel_ms"])
    host = fingerprint(threads)
    machine = {k: host[k] for k in ("cpu", "cores_usable", "machine", "os")}
    machine["onnxruntime"] = host["libraries"].get("onnxruntime", "")
    calibration = Calibration(peak_gflops=peak_gflops, bandwidth_gbs=bandwidth_gbs, efficiency=efficiency,
                              op_overhead_us=op_overhead_us, kernel_floor_us=floor_ms * 1e3,
                              run_overhead_us=run_overhead_us, spread=float(statistics.median(errors)),
                              threads=threads, machine=machine, suite=rows)
    if progress:
        progress("reference net")
    with tempfile.TemporaryDirectory(prefix="edgesmith-calib-") as tmp:
        factor, measured, predicted = _graph_factor(calibration, threads, tmp)
    return dataclasses.replace(calibration, graph_factor=factor,
                               reference={"measured_ms": measured, "predicted_ms": predicted})


def _op_cost(op, attrs, shapes, inits) -> tuple[float, float]:
    """FLOPs and bytes of a suite op, by the same rules as :func:`edgesmith.profiles.cost.graph_costs`."""
    import onnx
    from onnx import helper

    from edgesmith.profiles.cost import _flops, _Value

    model = _one_op_model(op, attrs, shapes, inits)
    model = onnx.shape_inference.infer_shapes(model)
    y = next(v for v in [*model.graph.value_info, *model.graph.output] if v.name == "y")
    out = _Value(tuple(d.dim_value for d in y.type.tensor_type.shape.dim), "float32")
    ins = [_Value(tuple(sh), "float32") for sh in shapes] + [_Value(a.shape, str(a.dtype)) for a in inits]
    node = helper.make_node(op, [], [], **attrs)
    flops = _flops(node, op_class(op, attrs.get("group", 1)), ins, [out])
    return flops, float(sum(v.nbytes for v in ins) + out.nbytes)


# ---------------------------------------------------------------- the cache

def _cache_dir() -> Path:
    from edgesmith.runtimes.base import cache_dir

    return cache_dir()


def _cache_key(threads: int) -> str:
    from importlib import metadata

    from edgesmith.devices.host import cpu_model, usable_cores

    try:
        ort = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        ort = "none"
    text = f"{CALIBRATION_VERSION}|{cpu_model()}|{usable_cores()}|{ort}|{threads}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def host_calibration(threads: int = 0, refresh: bool = False,
                     progress: Callable[[str], None] | None = None) -> Calibration:
    """The host's calibration: from the cache, else measured now and cached.

    Args:
        threads: ONNX Runtime intra-op threads it applies to (0 = runtime default).
        refresh: Measure again even when cached.
        progress: Called with each suite op's label while measuring.
    """
    path = _cache_dir() / f"calibration-{_cache_key(threads)}.json"
    if not refresh and path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("version") == CALIBRATION_VERSION:
                return Calibration.from_dict(data)
        except (OSError, ValueError, TypeError):
            pass  # a damaged cache entry is measured again
    calibration = run_calibration(threads, progress)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(calibration.to_dict(), f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home still predicts, it just measures every time
    return calibration
