"""The tensorrt target: the support check, structural bundles here, engines where TensorRT and a GPU are.

Tests that need TensorRT and an NVIDIA GPU are marked ``needs_tensorrt`` and are reported as skipped,
with the reason, where either is missing; the rest run everywhere.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgesmith import api as es
from edgesmith.bundle import Bundle, sha256_tree
from edgesmith.cli import main
from edgesmith.errors import BadInputError, RuntimeUnavailableError, UsageError, exit_code_for
from edgesmith.export import get_exporter
from edgesmith.export.tensorrt.rules import RULES
from edgesmith.export.tensorrt.support import check_onnx, support_table
from edgesmith.models.offline import minilm_dir
from edgesmith.models.variant import Variant
from edgesmith.runtimes import check_bundle, open_runtime
from edgesmith.runtimes.tensorrt import tensorrt_unavailable
from edgesmith.specs import TensorSpec

WHY_NOT = tensorrt_unavailable()
needs_tensorrt = pytest.mark.skipif(WHY_NOT is not None, reason=f"TensorRT cannot run here: {WHY_NOT}")
without_tensorrt = pytest.mark.skipif(WHY_NOT is None, reason="TensorRT and a GPU are here: engines get built")


# ---------------------------------------------------------------- the support table and the check


def test_the_table_names_its_version_and_every_rule_exists():
    table = support_table()
    assert table["tensorrt"] == "10.1" and table["opsets"] == [9, 20]
    assert len(table["ops"]) > 190 and table["ops"]["Det"] is None and "FP32" in table["ops"]["Conv"]
    for op, rules in table["rules"].items():
        assert op in table["ops"], op
        assert all(r in RULES for r in rules), (op, rules)


def _model(nodes, inputs, outputs, initializers=(), opset=20):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _t(name, elem=TensorProto.FLOAT, shape=(2, 4)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def test_a_clean_graph():
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 1, 3, 3], np.ones(27, np.float32))
    model = _model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                    helper.make_node("Relu", ["c"], ["y"], name="relu")],
                   [_t("x", shape=(1, 1, 8, 8))], [_t("y", shape=(1, 3, 8, 8))], [w])
    report = check_onnx(model)
    assert report.clean and report.nodes == 2 and report.op_counts == {"Conv": 1, "Relu": 1}


@pytest.mark.parametrize("case,expected", [
    ("det", "node 'det' (Det): TensorRT 10.1 does not support Det"),
    ("unknown", "node 'stft' (MysteryOp): not in TensorRT 10.1's ONNX operator table"),
    ("custom", "node 'fused' (com.microsoft::FusedGemm): domain 'com.microsoft' has no TensorRT importer"),
    ("int_sqrt", "node 'sqrt' (Sqrt): takes FP32, FP16, BF16, not INT32"),
    ("axes", "node 'sum' (ReduceSum): its axes input 'ax' must be a constant"),
    ("indices", "node 'pool' (MaxPool): only its first output is supported"),
    ("cubic", "node 'resize' (Resize): mode='cubic' is not supported"),
    ("topk", "node 'topk' (TopK): K=5000 is too large"),
    ("opset", "opset 21 is outside TensorRT 10.1's range 9-20"),
])
def test_each_refusal_names_the_node_op_and_reason(case, expected):
    x4 = _t("x", shape=(1, 1, 8, 8))
    models = {
        "det": lambda: _model([helper.make_node("Det", ["x"], ["y"], name="det")],
                              [_t("x", shape=(2, 3, 3))], [_t("y", shape=(2,))]),
        "unknown": lambda: _model([helper.make_node("MysteryOp", ["x"], ["y"], name="stft")], [_t("x")], [_t("y")]),
        "custom": lambda: _model([helper.make_node("FusedGemm", ["x"], ["y"], name="fused", domain="com.microsoft")],
                                 [_t("x")], [_t("y")]),
        "int_sqrt": lambda: _model([helper.make_node("Sqrt", ["x"], ["y"], name="sqrt")],
                                   [_t("x", TensorProto.INT32)], [_t("y", TensorProto.INT32)]),
        "axes": lambda: _model([helper.make_node("ReduceSum", ["x", "ax"], ["y"], name="sum")],
                               [_t("x"), _t("ax", TensorProto.INT64, (1,))], [_t("y", shape=(2, 1))]),
        "indices": lambda: _model([helper.make_node("MaxPool", ["x"], ["y", "idx"], name="pool", kernel_shape=[2, 2]),
                                   helper.make_node("Cast", ["idx"], ["z"], to=TensorProto.FLOAT, name="cast")],
                                  [x4], [_t("y", shape=(1, 1, 4, 4)), _t("z", shape=(1, 1, 4, 4))]),
        "cubic": lambda: _model([helper.make_node("Resize", ["x", "", "s"], ["y"], name="resize", mode="cubic")],
                                [x4], [_t("y", shape=(1, 1, 16, 16))],
                                [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2])]),
        "topk": lambda: _model([helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk")],
                               [_t("x", shape=(1, 8000))], [_t("v", shape=(1, 5000)), _t("i", TensorProto.INT64, (1, 5000))],
                               [helper.make_tensor("k", TensorProto.INT64, [1], [5000])]),
        "opset": lambda: _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_t("x")], [_t("y")], opset=21),
    }
    report = check_onnx(models[case]())
    assert not report.clean
    assert any(expected in str(p) for p in report.problems), [str(p) for p in report.problems]


def test_double_is_a_note_not_a_refusal():
    model = _model([helper.make_node("Add", ["x", "x"], ["y"], name="add64")],
                   [_t("x", TensorProto.DOUBLE)], [_t("y", TensorProto.DOUBLE)])
    report = check_onnx(model)
    assert report.clean and "DOUBLE" in report.notes[0] and "add64" in report.notes[0]


# ---------------------------------------------------------------- exports


class _Det(torch.nn.Module):
    """A determinant (ONNX Det): TensorRT 10.1's parser has no importer for it."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, x):
        return torch.linalg.det(self.proj(x).reshape(-1, 4, 4)).reshape(-1, 1)


def _variant(name, module, shape, out_shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return Variant(name=name, module=module.eval(), inputs=[TensorSpec("x", shape, "float32", {0: "batch"})],
                   outputs=[TensorSpec("y", out_shape, "float32", {0: "batch"})], example={"x": x},
                   source={"reference": f"test:{name}", "format": "test", "sha256": ""})


def test_an_unsupported_op_is_named_before_anything_is_written(tmp_path):
    with pytest.raises(BadInputError) as info:
        es.export(_variant("det-net", _Det(), (2, 16), (2, 1)), tmp_path, target="tensorrt")
    text = str(info.value)
    assert exit_code_for(info.value) == 3
    assert "TensorRT 10.1 cannot take det-net" in text and "(Det, from aten.linalg_det" in text, text
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def digits_trt(tmp_path_factory):
    out = tmp_path_factory.mktemp("trt")
    return es.export(es.load("zoo:digits-cnn"), out, target="tensorrt", options={"build": "false"})


def test_a_structural_bundle_holds_what_the_target_machine_needs(digits_trt):
    bundle, parity = digits_trt
    assert parity.tier == "structural" and parity.passed
    assert "all in TensorRT 10.1's ONNX support table" in parity.checks[0] and "static shapes" in parity.checks
    # no engine here, but the TensorRT-ready graph ran on ONNX Runtime: its numbers are shown, at fp32
    assert parity.outputs and parity.worst.max_abs < 1e-4 and parity.precision == "fp32"
    assert any("model.onnx's (fp32) on ONNX Runtime" in c for c in parity.checks)
    m = Bundle.open(bundle.path).manifest
    assert m.target == "tensorrt" and m.runtime == "tensorrt" and m.model_file == "model.onnx"
    assert {"model.onnx", "golden.npz", "build_engine.sh", "README.md"} <= set(m.files)
    assert m.parity["tier"] == "structural" and m.precision == "fp16"
    assert m.inputs[0].dynamic == {} and m.inputs[0].shape == tuple(bundle.golden()[0]["image"].shape)
    info = m.details["tensorrt"]
    assert info["engine"] is None and "build=false" in info["not_built"]
    assert info["support"]["clean"] and info["support"]["op_counts"]["Conv"] == 3
    assert info["trtexec"] == ("trtexec --onnx=model.onnx --saveEngine=model.engine --fp16 "
                               "--memPoolSize=workspace:1024M --timingCacheFile=timing.cache")
    assert info["trtexec"] in (bundle.path / "build_engine.sh").read_text()
    assert "edgesmith build-engine" in (bundle.path / "README.md").read_text()
    graph = onnx.load(str(bundle.path / "model.onnx"))
    assert all(d.dim_value > 0 for i in graph.graph.input for d in i.type.tensor_type.shape.dim)  # static


@pytest.mark.parametrize("model", ["zoo:lsnet-t", "minilm"])
def test_lsnet_and_minilm_make_structural_bundles_with_a_clean_check(model, tmp_path):
    ref = str(minilm_dir()) if model == "minilm" else model
    bundle, parity = es.export(es.load(ref), tmp_path, target="tensorrt", options={"build": "false"})
    info = bundle.manifest.details["tensorrt"]
    assert parity.passed and parity.tier == "structural"
    assert info["support"]["clean"] and info["support"]["problems"] == [] and info["support"]["nodes"] > 100
    ops = info["support"]["op_counts"]
    assert ("LayerNormalization" in ops and "Gather" in ops) if model == "minilm" else ("Conv" in ops)
    assert not {"Shape", "ConstantOfShape", "Constant"} & set(ops)  # static shapes: shape arithmetic folded


def test_dynamic_shapes_make_one_profile_shared_axes_follow(tmp_path):
    variant = es.load(str(minilm_dir()))
    bundle, _ = es.export(variant, tmp_path, target="tensorrt", options={
        "build": "false", "min_shapes": "input_ids:1x8,attention_mask:1x8",
        "max_shapes": "input_ids:8x128,attention_mask:8x128"})
    info = bundle.manifest.details["tensorrt"]
    example = list(variant.inputs[0].shape)
    for name in ("input_ids", "token_type_ids", "attention_mask"):  # token_type_ids follows batch and sequence
        assert info["shapes"][name] == {"min": [1, 8], "opt": example, "max": [8, 128]}
    assert "--minShapes=input_ids:1x8,token_type_ids:1x8,attention_mask:1x8" in info["trtexec"]
    assert bundle.manifest.inputs[0].dynamic == {0: "batch", 1: "sequence"}


@pytest.mark.parametrize("options,error,text", [
    ({"min_shapes": "image:1x1x8x8x"}, UsageError, "cannot read 'image:1x1x8x8x'"),
    ({"min_shapes": "pixels:1x1x8x8"}, UsageError, "names 'pixels', not an input"),
    ({"min_shapes": "image:1x3x8x8"}, BadInputError, "does not fit image: batchx1x8x8"),
    ({"min_shapes": "image:8x1x8x8"}, BadInputError, "min <= opt <= max"),
    ({"max_shapes": "image:1x1x8x8"}, BadInputError, "needs min <= opt <= max"),
    ({"precision": "int8"}, UsageError, "precision='int8'"),
])
def test_bad_options_are_refused_by_name(options, error, text, tmp_path):
    with pytest.raises(error) as info:
        es.export(es.load("zoo:digits-cnn"), tmp_path, target="tensorrt", options=options)
    assert text in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_an_onnx_source_with_dynamic_axes_needs_a_profile(tmp_path):
    onnx_bundle, _ = es.export(es.load("zoo:digits-cnn"), tmp_path / "o", target="onnx")
    source = es.load(str(onnx_bundle.model_path))
    with pytest.raises(BadInputError, match="min_shapes"):
        es.export(source, tmp_path / "t", target="tensorrt", options={"build": "false"})
    bundle, parity = es.export(source, tmp_path / "t", target="tensorrt",
                               options={"build": "false", "max_shapes": "image:16x1x8x8"})
    assert parity.passed and bundle.manifest.details["tensorrt"]["shapes"]["image"]["max"] == [16, 1, 8, 8]


# ---------------------------------------------------------------- without TensorRT: exit code 5, bundle untouched


@without_tensorrt
def test_running_or_completing_a_structural_bundle_here_is_exit_5(digits_trt, capsys):
    bundle, _ = digits_trt
    before = sha256_tree(bundle.path)
    with pytest.raises(RuntimeUnavailableError) as info:
        check_bundle(bundle.path)
    assert exit_code_for(info.value) == 5 and "build-engine" in info.value.hint
    assert main(["build-engine", str(bundle.path)]) == 5
    err = capsys.readouterr().err
    assert ("TensorRT is not installed" in err or "NVIDIA GPU" in err) and "build_engine.sh" in err
    assert main(["profile", str(bundle.path), "-d", "cuda:0"]) == 5  # no GPU to measure on
    assert sha256_tree(bundle.path) == before


def test_build_engine_takes_only_tensorrt_bundles(tmp_path, capsys):
    bundle, _ = es.export(es.load("zoo:digits-cnn"), tmp_path, target="onnx")
    assert main(["build-engine", str(bundle.path)]) == 2
    assert "is a onnx bundle; build-engine completes tensorrt bundles" in capsys.readouterr().err


@without_tensorrt
def test_profiling_beside_other_bundles_says_what_was_not_measured(digits_trt, tmp_path, capsys):
    onnx_bundle, _ = es.export(es.load("zoo:digits-cnn"), tmp_path, target="onnx")
    doc = es.profile([digits_trt[0].path, onnx_bundle.path], device=["host", "jetson-orin-nano"], runs=3)
    modes = [(e["name"] + "." + e["target"], e["device"], e["mode"]) for e in doc["entries"]]
    assert ("digits-cnn.tensorrt", "jetson-orin-nano", "predicted") in modes
    assert ("digits-cnn.onnx", "host", "measured") in modes
    assert [(s["device"], "build-engine" in s["reason"]) for s in doc["not_measured"]] == [("host", True)]
    assert main(["sweep", "-m", "zoo:digits-cnn", "-t", "tensorrt", "-d", "host", "-d", "jetson-orin-nano",
                 "-o", str(tmp_path / "sweep"), "--runs", "3", "--json"]) == 0
    jobs = json.loads(capsys.readouterr().out)["jobs"]
    assert jobs[0]["ok"] and any("not measured on host" in n for n in jobs[0]["notes"])


def test_the_tensorrt_bundle_is_predicted_on_gpu_devices(digits_trt):
    bundle, _ = digits_trt
    doc = es.profile([bundle.path], device=["jetson-orin-nano", "nvidia-h100"])
    assert [e["mode"] for e in doc["entries"]] == ["predicted", "predicted"]
    assert all(e["prediction"]["latency_ms"] > 0 for e in doc["entries"])


# ---------------------------------------------------------------- with TensorRT and a GPU


@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_engine_is_built_and_verified(precision, tmp_path):
    bundle, parity = es.export(es.load("zoo:digits-cnn"), tmp_path, target="tensorrt",
                               options={"precision": precision})
    assert parity.passed and parity.tier == "verified", parity.failures
    m = bundle.manifest
    assert m.model_file == "model.engine" and m.details["tensorrt"]["engine"]["precision"] == precision
    assert check_bundle(bundle.path).passed


@needs_tensorrt
def test_build_engine_completes_a_structural_bundle_in_place(digits_trt, tmp_path):
    import shutil

    copy = tmp_path / digits_trt[0].path.name
    shutil.copytree(digits_trt[0].path, copy)
    done, parity, profile = es.build_engine(copy, runs=5, warmup=2)
    assert parity.tier == "verified" and parity.passed
    engine = done.manifest.details["tensorrt"]["engine"]
    assert done.manifest.model_file == "model.engine" and engine["latency_ms"]["p50"] > 0
    assert profile.mode == "measured" and profile.latency_ms.p50 > 0
    with pytest.raises(BadInputError, match="already has an engine"):
        es.build_engine(copy)
    inputs, outputs = done.golden()
    got = open_runtime(copy).run(inputs)["logits"]
    assert np.argmax(got, -1).tolist() == np.argmax(outputs["logits"], -1).tolist()


@needs_tensorrt
def test_a_profile_engine_runs_inside_its_range_and_refuses_outside(tmp_path):
    bundle, parity = es.export(es.load("zoo:digits-cnn"), tmp_path, target="tensorrt",
                               options={"precision": "fp32", "min_shapes": "image:1x1x8x8",
                                        "max_shapes": "image:8x1x8x8"})
    assert parity.passed and parity.tier == "verified"
    runtime = open_runtime(bundle.path)
    for batch in (1, 8):
        assert runtime.run({"image": np.zeros((batch, 1, 8, 8), np.float32)})["logits"].shape == (batch, 10)
    with pytest.raises(BadInputError, match="optimisation profile"):
        runtime.run({"image": np.zeros((9, 1, 8, 8), np.float32)})


def test_the_manifest_is_json_with_the_support_record(digits_trt):
    data = json.loads((digits_trt[0].path / "manifest.json").read_text())
    assert data["details"]["tensorrt"]["support"]["tensorrt"] == "10.1"
    assert data["parity"]["checks"] and data["parity"]["tier"] in ("structural", "verified")
