"""The coreml target: options, digits-cnn and MiniLM parity, flexible shapes and the conversion fallbacks."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("coremltools") is None:  # find, not import: its import is slow and noisy
    pytest.skip("coremltools is not installed", allow_module_level=True)

from torch import nn  # noqa: E402

from edgesmith import api as es  # noqa: E402
from edgesmith.bundle import Bundle  # noqa: E402
from edgesmith.errors import BadInputError, UsageError, exit_code_for  # noqa: E402
from edgesmith.export import get_exporter  # noqa: E402
from edgesmith.export.coreml import CoremlExporter, CoremlOptions, _Failed  # noqa: E402
from edgesmith.models.variant import Variant  # noqa: E402
from edgesmith.parity import compare  # noqa: E402
from edgesmith.runtimes import check_bundle, open_runtime  # noqa: E402
from edgesmith.runtimes.coreml import native_coreml  # noqa: E402
from edgesmith.specs import TensorSpec  # noqa: E402

NATIVE = native_coreml() is not None
TIER = "verified" if NATIVE else "emulated"


@pytest.fixture(scope="module")
def digits():
    return es.load("zoo:digits-cnn")


def _images(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).uniform(0, 1, (batch, 1, 8, 8)).astype(np.float32)


def test_default_options():
    exporter = get_exporter("coreml")
    assert exporter.options == CoremlOptions(precision="fp16", compute_units="all", min_target="iOS17")
    assert exporter.precision == "fp16" and exporter.model_file == "model.mlpackage" and exporter.runtime == "coreml"
    assert get_exporter("coreml", {"precision": "fp32"}).precision == "fp32"


@pytest.mark.parametrize("key, value", [("precision", "int8"), ("precision", "FP16"), ("compute_units", "gpu"),
                                        ("min_target", "ios17"), ("max_dim", "1")])
def test_bad_option_is_a_usage_error(key, value):
    with pytest.raises(UsageError) as info:
        get_exporter("coreml", {key: value})
    assert exit_code_for(info.value) == 2
    assert key in str(info.value) and value in str(info.value)


@pytest.mark.parametrize("min_target", ["iOS99", "iOS14"])
def test_min_target_is_checked_against_coremltools(digits, tmp_path, min_target):
    with pytest.raises(UsageError, match=min_target):
        get_exporter("coreml", {"min_target": min_target}).export(digits, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def digits_fp32(digits, tmp_path_factory):
    options = {"precision": "fp32", "compute_units": "cpu_only", "max_dim": "16"}
    return get_exporter("coreml", options).export(digits, tmp_path_factory.mktemp("coreml-fp32"))


def test_digits_fp32_within_fp32_tolerance(digits_fp32):
    bundle, parity = digits_fp32
    assert parity.passed and parity.tier == TIER and parity.precision == "fp32"
    for m in parity.outputs:  # the golden batch and a second batch size
        assert m.max_abs <= 1e-4 * max(1.0, m.ref_max_abs)
    assert any("@batch" in m.name for m in parity.outputs)
    manifest = Bundle.open(bundle.path).manifest
    assert manifest.precision == "fp32" and manifest.parity["tier"] == TIER
    assert manifest.options["compute_units"] == "cpu_only" and manifest.options["precision"] == "fp32"
    assert (bundle.path / "model.mlpackage").is_dir() and "model.mlpackage" in manifest.files


def test_flexible_batch_up_to_max_dim(digits_fp32, digits):
    bundle, _ = digits_fp32
    assert bundle.manifest.inputs[0].dynamic == {0: "batch"} and bundle.manifest.outputs[0].dynamic == {0: "batch"}
    runtime = open_runtime(bundle.path)
    for batch in (1, 16):
        x = _images(batch)
        np.testing.assert_allclose(runtime.run({"image": x})["logits"], digits.run({"image": x})["logits"],
                                   atol=1e-4, rtol=0)
    with pytest.raises(BadInputError, match="max_dim"):
        runtime.run({"image": _images(17)})


def test_digits_fp16_default(digits, tmp_path):
    bundle, parity = get_exporter("coreml").export(digits, tmp_path)
    assert parity.passed and parity.tier == TIER and parity.precision == "fp16"
    assert all(m.snr_db >= 40 for m in parity.outputs)
    assert parity.worst.max_abs > 1e-4  # fp16 rounding shows: the program was not run in fp32
    assert bundle.manifest.options["compute_units"] == "all"
    assert check_bundle(bundle.path).passed
    weights = bundle.path / "model.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    with open(weights, "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x7c\x00\x7c")
    with pytest.raises(BadInputError, match="model.mlpackage was modified"):
        Bundle.open(bundle.path)


def test_minilm_fp16_parity_and_flexible_sequence(tmp_path):
    variant = es.load("zoo:all-minilm-l6-v2")
    bundle, parity = es.export(variant, tmp_path, target="coreml")
    assert parity.passed and parity.tier == TIER and parity.precision == "fp16"
    assert all(m.snr_db >= 40 for m in parity.outputs)
    assert all(s.dynamic == {0: "batch", 1: "sequence"} for s in bundle.manifest.inputs)
    feeds = {k: v[:1, :9] for k, v in variant.example.items()}  # another batch and sequence length
    result = compare(variant.run(feeds), open_runtime(bundle.path).run(feeds), precision="fp16")
    assert result.passed, result.failures


def test_fixed_shapes_when_flexible_conversion_fails(digits, tmp_path, monkeypatch):
    real = CoremlExporter._from_export

    def rejects_flexible(self, ct, variant, target):
        if any(s.dynamic for s in variant.inputs):
            raise _Failed("RangeDim rejected (simulated)")
        return real(self, ct, variant, target)

    monkeypatch.setattr(CoremlExporter, "_from_export", rejects_flexible)
    bundle, parity = get_exporter("coreml", {"precision": "fp32"}).export(digits, tmp_path)
    assert parity.passed
    m = bundle.manifest
    assert all(not s.dynamic for s in m.inputs + m.outputs)
    assert any("fixed shapes" in n and "simulated" in n for n in m.options["notes"])
    with pytest.raises(BadInputError, match="shape"):
        open_runtime(bundle.path).run({"image": _images(5)})
    assert digits.inputs[0].dynamic == {0: "batch"}  # the caller's variant keeps its dynamic axis


def test_jit_trace_fallback(digits, tmp_path, monkeypatch):
    import edgesmith.models.program as program

    def cannot_capture(variant):
        raise BadInputError("torch.export cannot capture it (simulated)")

    monkeypatch.setattr(program, "export_program", cannot_capture)
    bundle, parity = get_exporter("coreml", {"precision": "fp32"}).export(digits, tmp_path)
    assert parity.passed
    notes = bundle.manifest.options["notes"]
    assert any("torch.jit.trace" in n and "simulated" in n for n in notes)
    assert not any("flexible" in n for n in notes)  # capture failed: no conversion was tried
    assert bundle.manifest.inputs[0].dynamic == {}


def _tiny(name: str, module: nn.Module, shape=(2, 6)) -> Variant:
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    with torch.no_grad():
        y = module.eval()(torch.from_numpy(x))
    return Variant(name=name, module=module, inputs=[TensorSpec("x", shape, "float32", {0: "batch"})],
                   outputs=[TensorSpec("y", tuple(y.shape), "float32", {0: "batch"})], example={"x": x},
                   source={"reference": f"test:{name}", "format": "test", "sha256": ""})


class _Lgamma(nn.Module):
    def forward(self, x):
        return torch.lgamma(x.abs() + 1.0)


class _GridSample(nn.Module):
    """Converts to MIL ``resample``, which the numpy evaluator does not cover."""

    def forward(self, x):
        grid = x[:, :1, :3, :4].reshape(-1, 3, 2, 2).clamp(-1, 1)
        return nn.functional.grid_sample(x, grid, align_corners=False)


def test_op_coremltools_cannot_convert_is_named(tmp_path):
    with pytest.raises(BadInputError) as info:
        get_exporter("coreml").export(_tiny("gamma-net", _Lgamma()), tmp_path)
    assert "'lgamma'" in str(info.value) and exit_code_for(info.value) == 3
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(NATIVE, reason="Core ML itself runs the program on macOS")
def test_op_the_evaluator_lacks_is_named(tmp_path):
    with pytest.raises(BadInputError) as info:
        get_exporter("coreml").export(_tiny("warp-net", _GridSample(), (1, 2, 4, 4)), tmp_path)
    assert "'resample'" in str(info.value) and exit_code_for(info.value) == 3
    assert list(tmp_path.iterdir()) == []


def test_onnx_source_is_refused(tmp_path):
    variant = Variant(name="m", module=None, inputs=[TensorSpec("x", (1, 2))], outputs=[TensorSpec("y", (1, 2))],
                      example={"x": np.zeros((1, 2), np.float32)}, source={}, onnx_path=tmp_path / "m.onnx")
    with pytest.raises(BadInputError, match="ONNX"):
        get_exporter("coreml").export(variant, tmp_path / "out")
