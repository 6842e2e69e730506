"""Every registered exporter: parity on its runtime, dynamic batch, options, and failures that leave nothing."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from edgesmith import api as es
from edgesmith.bundle import Bundle
from edgesmith.errors import BadInputError, ParityError, UsageError, exit_code_for
from edgesmith.export import EXPORTERS, get_exporter
from edgesmith.export.onnx import OnnxExporter
from edgesmith.models.variant import Variant
from edgesmith.parity import compare
from edgesmith.runtimes import check_bundle, open_runtime
from edgesmith.specs import TensorSpec


@pytest.fixture(scope="module")
def source():
    return es.load("zoo:digits-cnn")


@pytest.fixture(scope="module")
def folded(source):
    return es.optimize(source, ["reparam"])


def expected_tier(target: str) -> str:
    """Core ML runs only on macOS; elsewhere its program is evaluated in numpy (``emulated``)."""
    if target == "coreml":
        from edgesmith.runtimes.coreml import native_coreml

        return "verified" if native_coreml() else "emulated"
    return "verified"


def assert_matches(bundle, got: np.ndarray, ref: np.ndarray) -> None:
    """Within 1e-4 of the reference; fp16 bundles (Core ML's default) within the fp16 tolerance."""
    if bundle.manifest.precision == "fp16":
        result = compare({"out": ref}, {"out": got}, precision="fp16")
        assert result.passed, result.failures
    else:
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


# hls: fixed-point, calibrated on digits and compiled with g++ (a minute); tests/export/test_hls.py covers it
@pytest.fixture(scope="module", params=sorted(set(EXPORTERS.names()) - {"hls"}))
def exported(request, folded, tmp_path_factory):
    if request.param == "tensorrt":
        from edgesmith.runtimes.tensorrt import tensorrt_unavailable

        if tensorrt_unavailable():  # structural bundles: tests/export/test_tensorrt.py
            pytest.skip(f"TensorRT cannot run here: {tensorrt_unavailable()}")
    out = tmp_path_factory.mktemp(f"export-{request.param}")
    bundle, parity = es.export(folded, out, target=request.param)
    return request.param, bundle, parity


def test_export_passes_parity_and_reopens(exported, folded):
    target, bundle, parity = exported
    assert parity.passed, parity.failures
    tier = expected_tier(target)
    assert parity.tier == tier
    assert bundle.path.name == f"digits-cnn.{target}"
    reopened = Bundle.open(bundle.path)
    m = reopened.manifest
    assert m.target == target and m.parity["passed"] is True and m.parity["tier"] == tier
    assert m.passes[-1]["name"] == "reparam" and m.passes[-1]["report"]["folded"] == 4
    # parity was also checked at a second batch size
    assert any("@batch" in o.name for o in parity.outputs)
    again = check_bundle(bundle.path)
    assert again.passed and again.tier == tier
    assert folded.passes[-1]["name"] == "reparam" and len(folded.inputs[0].dynamic) == 1  # caller's variant intact


@pytest.mark.parametrize("batch", [1, 9])
def test_dynamic_batch_matches_torch(exported, source, batch):
    _, bundle, _ = exported
    assert bundle.manifest.inputs[0].dynamic == {0: "batch"}
    x = np.random.default_rng(batch).uniform(0, 1, size=(batch, 1, 8, 8)).astype(np.float32)
    got = open_runtime(bundle.path).run({"image": x})["logits"]
    with torch.no_grad():
        ref = source.module(torch.from_numpy(x)).numpy()
    assert got.shape == (batch, 10)
    assert_matches(bundle, got, ref)


def test_static_onnx_export(folded, tmp_path):
    exporter = get_exporter("onnx", {"dynamic": "false"})
    assert exporter.options.dynamic is False
    bundle, parity = exporter.export(folded, tmp_path)
    assert parity.passed
    data = json.loads((bundle.path / "manifest.json").read_text())
    assert all(s["dynamic_axes"] == {} for s in data["inputs"] + data["outputs"])
    assert data["options"]["dynamic"] is False
    runtime = open_runtime(bundle.path)
    batch = bundle.manifest.inputs[0].shape[0]
    assert runtime.run({"image": np.zeros((batch, 1, 8, 8), np.float32)})["logits"].shape == (batch, 10)
    with pytest.raises(BadInputError, match="shape"):
        runtime.run({"image": np.zeros((9, 1, 8, 8), np.float32)})
    assert folded.inputs[0].dynamic == {0: "batch"}  # the exporter did not narrow the caller's variant


def test_bad_option_value():
    with pytest.raises(UsageError) as info:
        get_exporter("onnx", {"opset": "nope"})
    assert "opset" in str(info.value) and "nope" in str(info.value)


def test_unknown_option():
    with pytest.raises(UsageError, match="colour"):
        get_exporter("onnx", {"colour": "blue"})


def test_unknown_target(folded, tmp_path):
    with pytest.raises(UsageError) as info:
        get_exporter("tflite")
    assert "tflite" in str(info.value) and "onnx" in str(info.value)
    with pytest.raises(UsageError):
        es.export(folded, tmp_path, target="tflite")
    assert list(tmp_path.iterdir()) == []


class _Lgamma(torch.nn.Module):
    """``lgamma`` captures with torch.export but has no ONNX translation in torch 2.13."""

    def forward(self, x):
        return torch.lgamma(x.abs() + 1.0)


def _tiny_variant(name: str, module: torch.nn.Module) -> Variant:
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    return Variant(
        name=name, module=module.eval(),
        inputs=[TensorSpec("x", (2, 6), "float32", {0: "batch"})],
        outputs=[TensorSpec("y", (2, 6), "float32", {0: "batch"})],
        example={"x": x}, source={"reference": f"test:{name}", "format": "test", "sha256": ""},
    )


def test_unsupported_op_names_the_op(tmp_path):
    with pytest.raises(BadInputError) as info:
        get_exporter("onnx").export(_tiny_variant("custom-net", _Lgamma()), tmp_path)
    text = str(info.value)
    assert "lgamma" in text  # the op, not only the model's name
    assert "\x1b[" not in text  # no terminal colour codes in a user message
    assert exit_code_for(info.value) == 3
    assert list(tmp_path.iterdir()) == []


class _Times2(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) * 2


class _WrongExporter(OnnxExporter):
    """Writes a valid ONNX model of a different computation."""

    def _export_impl(self, variant, stage):
        super()._export_impl(dataclasses.replace(variant, module=_Times2(variant.module)), stage)


def test_wrong_artifact_fails_parity_and_leaves_nothing(folded, tmp_path):
    with pytest.raises(ParityError) as info:
        _WrongExporter().export(folded, tmp_path)
    assert exit_code_for(info.value) == 4
    assert info.value.result is not None and not info.value.result.passed
    assert "logits" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_wrong_artifact_kept_on_request(folded, tmp_path):
    with pytest.raises(ParityError, match="kept"):
        _WrongExporter().export(folded, tmp_path, keep_failed=True)
    (kept,) = tmp_path.iterdir()
    assert kept.name == "digits-cnn.onnx"
    bundle = Bundle.open(kept)  # a complete, verifiable bundle...
    assert bundle.manifest.parity["passed"] is False  # ...that says it failed
    assert bundle.manifest.parity["failures"]
    assert not check_bundle(kept).passed


def test_external_data_is_part_of_the_bundle(folded, tmp_path):
    """Weights stored beside model.onnx (as for models over 2 GB) are hashed and verified."""
    bundle, parity = get_exporter("onnx", {"external_data": "true"}).export(folded, tmp_path)
    assert parity.passed and parity.tier == "verified"
    assert "model.onnx.data" in bundle.manifest.files
    assert (bundle.path / "model.onnx.data").stat().st_size > (bundle.path / "model.onnx").stat().st_size
    assert check_bundle(bundle.path).passed
    with open(bundle.path / "model.onnx.data", "r+b") as f:
        f.seek(100)
        f.write(b"\x7f\x7f\x7f\x7f")
    with pytest.raises(BadInputError, match="model.onnx.data was modified"):
        Bundle.open(bundle.path)
