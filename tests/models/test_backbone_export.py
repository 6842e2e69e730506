"""Acceptance: EfficientFormer-L1 and LSNet-T at 224x224, re-parameterised, export to onnx, coreml
and mlx and pass parity on each target's runtime (Core ML emulated off macOS, never called verified)."""

from __future__ import annotations

import platform

import pytest

from edgesmith import api as es
from edgesmith.bundle import Bundle

TIERS = {"onnx": "verified", "mlx": "verified",
         "coreml": "verified" if platform.system() == "Darwin" else "emulated"}


@pytest.mark.parametrize("model", ["efficientformer-l1", "lsnet-t"])
def test_backbone_exports_everywhere(model, tmp_path):
    pytest.importorskip("coremltools")
    pytest.importorskip("mlx.core")
    variant = es.optimize(es.load(f"zoo:{model}"), ["reparam"])
    report = variant.passes[-1]["report"]
    assert report["folded"] > 20 and report["max_abs"] < 1e-4  # the BN/branch folds really happened
    assert variant.inputs[0].shape == (1, 3, 224, 224)
    for target, tier in TIERS.items():
        bundle, parity = es.export(variant, tmp_path, target=target)
        assert parity.passed, (target, parity.failures)
        assert parity.tier == tier
        manifest = Bundle.open(bundle.path).manifest
        assert manifest.parity["passed"] and manifest.parity["tier"] == tier
        assert [p["name"] for p in manifest.passes] == ["reparam"]
