"""Tests for the latency predictor: per-op costs, fusion and folding, the roofline, devices, the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgesmith import api as es
from edgesmith.cli import main
from edgesmith.devices.catalog import get_device
from edgesmith.errors import UsageError
from edgesmith.profiles import calibrate
from edgesmith.profiles.calibrate import host_calibration
from edgesmith.profiles.cost import CLASSES, graph_costs
from edgesmith.profiles.predict import ATTAINABLE, predict, predict_bundle
from edgesmith.profiles.roofline import Calibration

RNG = np.random.default_rng(0)


def _calibration(**kw) -> Calibration:
    """A fixed calibration (no measurement): 100 GFLOP/s, 10 GB/s, efficiency 1, no overheads."""
    fields = dict(peak_gflops=100.0, bandwidth_gbs=10.0, efficiency={c: 1.0 for c in CLASSES},
                  op_overhead_us=0.0, kernel_floor_us=0.0, run_overhead_us=0.0, spread=0.1, threads=0)
    fields.update(kw)
    return Calibration(**fields)


def _model(tmp_path, nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


def _conv_relu(tmp_path, extra_consumer: bool = False):
    w = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_consumer:  # the conv's output is read twice: the relu cannot fold into it
        nodes.append(helper.make_node("Sigmoid", ["c"], ["s"], name="sig"))
        outputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, None))
    return _model(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 16, 16])],
                  outputs, [("w", w)])


def test_conv_and_matmul_flops_at_the_inputs_shapes(tmp_path):
    path = _conv_relu(tmp_path)
    costs = {c.node: c for c in graph_costs(path, {"x": np.zeros((2, 3, 16, 16), np.float32)}).costs}
    assert costs["conv"].flops == 2 * (2 * 8 * 16 * 16) * 3 * 9  # batch 2 resolved from the input
    assert costs["conv"].op_class == "conv" and costs["relu"].op_class == "elementwise"
    assert costs["conv"].weight_bytes == 8 * 3 * 9 * 4
    assert costs["conv"].bytes == (2 * 3 * 16 * 16 + 8 * 27 + 2 * 8 * 16 * 16) * 4

    b = RNG.standard_normal((7, 4)).astype(np.float32)
    path = _model(tmp_path, [helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")],
                  [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 5, 7])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [("b", b)])
    (mm,) = graph_costs(path, {"a": np.zeros((2, 5, 7), np.float32)}).costs
    assert mm.flops == 2 * (2 * 5 * 4) * 7 and mm.op_class == "matmul" and mm.precision == "fp32"


def test_depthwise_and_gather_costs(tmp_path):
    w = RNG.standard_normal((4, 1, 3, 3)).astype(np.float32)
    table = RNG.standard_normal((1000, 16)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=4, pads=[1, 1, 1, 1]),
             helper.make_node("Gather", ["table", "ids"], ["e"], name="embed")]
    path = _model(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8]),
                                    helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                   helper.make_tensor_value_info("e", TensorProto.FLOAT, None)], [("w", w), ("table", table)])
    costs = {c.node: c for c in graph_costs(path, {"x": np.zeros((1, 4, 8, 8), np.float32),
                                                   "ids": np.array([1, 2, 3])}).costs}
    assert costs["dw"].op_class == "dwconv" and costs["dw"].flops == 2 * (4 * 8 * 8) * 1 * 9
    # a lookup reads the rows it returns, not the whole table
    assert costs["embed"].weight_bytes == 3 * 16 * 4 and costs["embed"].flops == 0


def test_activation_fuses_into_a_conv_only_when_it_alone_reads_it(tmp_path):
    x = {"x": np.zeros((1, 3, 16, 16), np.float32)}
    host = get_device("host")
    alone = predict(graph_costs(_conv_relu(tmp_path), x), host, _calibration())
    assert alone.fused == 1 and alone.nodes == 1
    shared = predict(graph_costs(_conv_relu(tmp_path, extra_consumer=True), x), host, _calibration())
    assert shared.fused == 0 and shared.nodes == 3


def test_nodes_on_weights_alone_are_folded(tmp_path):
    a = np.ones((4,), np.float32)
    nodes = [helper.make_node("Mul", ["a", "a"], ["a2"], name="const"),
             helper.make_node("Add", ["x", "a2"], ["y"], name="add")]
    path = _model(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [("a", a)])
    graph = graph_costs(path, {"x": np.zeros(4, np.float32)})
    assert graph.folded == {"const"}
    assert graph.costs[1].weight_bytes == 16  # what the folded node computes is a weight its reader streams
    assert set(predict(graph, get_device("host"), _calibration()).op_ms) == {"add"}


def test_roofline_on_the_host_and_on_a_device(tmp_path):
    graph = graph_costs(_conv_relu(tmp_path), {"x": np.zeros((1, 3, 16, 16), np.float32)})
    conv = next(c for c in graph.costs if c.node == "conv")
    cal = _calibration()
    host = predict(graph, get_device("host"), cal)
    roof = max(conv.flops / 100e9, conv.bytes / 10e9) * 1e3
    assert host.latency_ms == pytest.approx(roof + conv.weight_bytes / 10e9 * 1e3)
    assert host.low_ms < host.latency_ms < host.high_ms
    assert host.high_ms / host.latency_ms == pytest.approx(1 + max(cal.spread, 0.15))

    orin = get_device("jetson-orin-nano")
    pred = predict(graph, orin, cal)
    bw = orin.memory_bandwidth_gbs * ATTAINABLE["bandwidth"]
    peak = orin.peak_tflops["fp32"] * 1e3 * ATTAINABLE["compute"]
    assert pred.figures == pytest.approx({"peak_gflops": peak, "bandwidth_gbs": bw, "op_overhead_us": 5.0,
                                          "run_overhead_us": 30.0})
    # a band wider than the host's: the host's efficiencies are an assumption on another device
    assert pred.high_ms / pred.latency_ms > host.high_ms / host.latency_ms
    # the reference-network factor scales CPU predictions only
    doubled = dataclasses.replace(cal, graph_factor=2.0)
    assert predict(graph, get_device("host"), doubled).latency_ms == pytest.approx(2 * host.latency_ms)
    assert predict(graph, orin, doubled).latency_ms == pytest.approx(pred.latency_ms)
    faster = dataclasses.replace(orin, name="orin-2x", memory_bandwidth_gbs=orin.memory_bandwidth_gbs * 2,
                                 peak_tflops={k: v * 2 for k, v in orin.peak_tflops.items()})
    assert predict(graph, faster, cal).latency_ms < pred.latency_ms


def test_device_precision_fallback_and_missing_figures(tmp_path):
    graph = graph_costs(_conv_relu(tmp_path), {"x": np.zeros((1, 3, 16, 16), np.float32)})
    ane = get_device("apple-a17-pro-ane")
    assert "fp32" not in ane.peak_tflops
    pred = predict(graph, ane, _calibration())
    assert pred.precision == "fp16" and any("no fp32 figure" in n for n in pred.notes)
    bare = dataclasses.replace(ane, name="int-only", peak_tflops={"int4": 1.0})
    with pytest.raises(UsageError, match="int-only.*no peak for fp32"):
        predict(graph, bare, _calibration())
    no_bw = dataclasses.replace(ane, name="no-bw", memory_bandwidth_gbs=None)
    with pytest.raises(UsageError, match="no-bw.*memory_bandwidth_gbs"):
        predict(graph, no_bw, _calibration())


def test_calibration_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESMITH_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(calibrate, "run_calibration", lambda threads, progress=None: calls.append(1) or _calibration())
    first = host_calibration()
    assert host_calibration() == first and len(calls) == 1
    host_calibration(refresh=True)
    assert len(calls) == 2
    (cached,) = (tmp_path / "cache").glob("calibration-*.json")
    cached.write_text("{not json")  # a damaged cache entry is measured again, not an error
    host_calibration()
    assert len(calls) == 3


def test_real_calibration_measures_this_machine():
    cal = host_calibration()
    assert cal.peak_gflops > 1 and cal.bandwidth_gbs > 0.5
    assert set(CLASSES) <= set(cal.efficiency) and all(0.01 <= e <= 4 for e in cal.efficiency.values())
    assert cal.op_overhead_us > 0 and len(cal.suite) > 30
    assert 0.2 < cal.graph_factor < 5 and cal.reference["measured_ms"] > 0
    assert all(r["kernel_ms"] > 0 for r in cal.suite)


@pytest.fixture(scope="module")
def digits_bundles(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles")
    variant = es.load("zoo:digits-cnn")
    return {t: es.export(variant, out, target=t)[0].path for t in ("onnx", "torch")}


def test_profile_measures_the_host_and_predicts_devices(digits_bundles):
    doc = es.profile([digits_bundles["onnx"]], device=["host", "jetson-orin-nano", "raspberry-pi-5"], runs=5,
                     warmup=1)
    host, orin, pi = doc["entries"]
    assert (host["mode"], orin["mode"], pi["mode"]) == ("measured", "predicted", "predicted")
    assert host["lm"] is None and orin["lm"] is None  # not a language model: no TTFT or tokens/s
    assert host["prediction"]["error"] == pytest.approx(
        (host["prediction"]["latency_ms"] - host["latency_ms"]["p50"]) / host["latency_ms"]["p50"])
    assert orin["samples_ms"] == [] and orin["runs"] == 0 and orin["timing"] == "predicted"
    assert orin["prediction"]["low_ms"] < orin["latency_ms"]["p50"] < orin["prediction"]["high_ms"]
    assert orin["layers"] and abs(sum(x["share"] for x in orin["layers"]) - 1) < 1e-6
    assert doc["calibration"]["peak_gflops"] > 0 and "suite" not in doc["calibration"]


def test_a_bundle_without_an_onnx_graph_borrows_its_onnx_siblings(digits_bundles, tmp_path):
    doc = es.profile([digits_bundles["torch"]], device=["host", "jetson-orin-nano"], runs=3, warmup=1)
    measured, predicted = doc["entries"]
    assert measured["prediction"] is None  # the host calibration is ONNX Runtime's, not torch's
    assert any("digits-cnn.onnx, the same variant's onnx bundle" in n for n in predicted["prediction"]["notes"])
    alone, _ = es.export(es.load("zoo:digits-cnn"), tmp_path, target="torch")
    with pytest.raises(UsageError, match="no ONNX graph") as err:
        es.profile([alone.path], device="jetson-orin-nano", runs=3)
    assert "-t onnx" in err.value.hint
    es.export(es.optimize(es.load("zoo:digits-cnn"), ["reparam"]), tmp_path, target="onnx")
    with pytest.raises(UsageError, match="no ONNX graph"):  # an onnx bundle of another variant is not used
        es.profile([alone.path], device="jetson-orin-nano", runs=3)
    prediction, _ = predict_bundle(digits_bundles["onnx"], get_device("apple-a17-pro-ane"), _calibration())
    assert any("would run it exported to coreml" in n for n in prediction.notes)


def test_a_device_that_cannot_take_the_graph_is_skipped_among_others(digits_bundles):
    npu = get_device("snapdragon-8-gen-3-npu")
    assert set(npu.peak_tflops) == {"int8"}  # no floating-point figure for an fp32 graph
    doc = es.profile([digits_bundles["onnx"]], device=["host", npu.name], runs=3, warmup=1)
    assert [e["device"] for e in doc["entries"]] == ["host"]
    (skipped,) = doc["not_predicted"]
    assert skipped["device"] == npu.name and "no peak for fp32" in skipped["reason"]
    with pytest.raises(UsageError, match="no peak for fp32"):  # alone, it is an error
        es.profile([digits_bundles["onnx"]], device=npu.name)


def test_cli_profile_devices_and_errors(digits_bundles, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["profile", str(digits_bundles["onnx"]), "-d", "host", "-d", "xilinx-zcu104", "--runs", "3",
                 "-o", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "predicted" in shown and "xilinx-zcu104" in shown
    assert [e["device"] for e in json.loads(out.read_text())["entries"]] == ["host", "xilinx-zcu104"]
    assert main(["profile", str(digits_bundles["onnx"]), "-d", "jetson-orin-nan"]) == 2
    assert "unknown device 'jetson-orin-nan'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text((get_device("raspberry-pi-5").origin and open(get_device("raspberry-pi-5").origin).read())
                   .replace("memory_bandwidth_gbs:", "memory_bandwith_gbs:").replace("raspberry-pi-5", "my-pi"))
    assert main(["profile", str(digits_bundles["onnx"]), "-d", "my-pi", "--device-file", str(bad)]) == 3
    assert "unknown key 'memory_bandwith_gbs'" in capsys.readouterr().err


def test_cli_devices_calibrate_json(capsys):
    assert main(["devices", "calibrate", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["peak_gflops"] > 0 and data["suite"]
