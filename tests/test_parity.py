"""The one parity helper: metrics, the tolerance table per precision, failures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgesmith.parity import TOLERANCES, compare, format_snr


def _rng():
    return np.random.default_rng(0)


def test_identical_arrays_pass_with_infinite_snr():
    ref = {"y": _rng().standard_normal((4, 10)).astype(np.float32)}
    result = compare(ref, {"y": ref["y"].copy()})
    assert result.passed and result.failures == []
    m = result.worst
    assert m.max_abs == 0.0 and m.mean_abs == 0.0 and m.max_rel == 0.0
    assert m.snr_db == math.inf
    assert m.cosine == pytest.approx(1.0)
    assert result.tier == "verified" and result.precision == "fp32"
    d = result.to_dict()
    text = json.dumps(d, allow_nan=False)  # no Infinity/NaN in a manifest
    back = json.loads(text)
    assert back["passed"] is True and back["tier"] == "verified"
    assert back["metrics"]["snr_db"] is None and back["outputs"][0]["snr_db"] is None
    assert back["tolerance"] == TOLERANCES["fp32"]
    assert format_snr(m.snr_db) == "exact"
    assert "PASS" in result.summary() and "verified" in result.summary()


def _with_max_diff(ref: np.ndarray, diff: float) -> np.ndarray:
    cand = ref.copy()
    cand.flat[3] += diff
    return cand


def test_fp32_tolerance_scales_with_output_magnitude():
    ref = _rng().uniform(-1, 1, size=(2, 50))
    ref.flat[0] = 100.0  # output magnitude 100 -> limit 1e-4 * 100 = 1e-2
    ok = compare({"y": ref}, {"y": _with_max_diff(ref, 5e-3)})
    assert ok.passed, ok.failures
    assert ok.worst.max_abs == pytest.approx(5e-3)
    bad = compare({"y": ref}, {"y": _with_max_diff(ref, 2e-2)})
    assert not bad.passed
    assert len(bad.failures) == 1 and "y" in bad.failures[0] and "fp32" in bad.failures[0]


def test_fp32_tolerance_is_absolute_for_small_outputs():
    ref = _rng().uniform(-0.5, 0.5, size=(100,))  # magnitude < 1: limit stays 1e-4
    assert compare({"y": ref}, {"y": _with_max_diff(ref, 5e-5)}).passed
    assert not compare({"y": ref}, {"y": _with_max_diff(ref, 5e-4)}).passed


def test_nan_candidate_fails():
    ref = np.ones((3, 3))
    cand = ref.copy()
    cand[1, 1] = np.nan
    result = compare({"y": ref}, {"y": cand})
    assert not result.passed
    json.dumps(result.to_dict(), allow_nan=False)


def test_fp16_snr_threshold():
    ref = _rng().standard_normal(10_000)
    noise = _rng().standard_normal(10_000)
    noise /= np.linalg.norm(noise)
    signal = np.linalg.norm(ref)

    def at_snr(db):
        return ref + noise * signal * 10 ** (-db / 20)

    good = compare({"y": ref}, {"y": at_snr(45)}, precision="fp16")
    assert good.passed and good.worst.snr_db == pytest.approx(45, abs=0.01)
    bad = compare({"y": ref}, {"y": at_snr(35)}, precision="fp16")
    assert not bad.passed and "SNR" in bad.failures[0]
    assert bad.worst.snr_db == pytest.approx(35, abs=0.01)
    # fp32 would reject the 45 dB candidate: the tiers really differ
    assert not compare({"y": ref}, {"y": at_snr(45)}, precision="fp32").passed


def test_fixed_tier_needs_top1_agreement():
    rng = _rng()
    ref = rng.standard_normal((200, 10))
    # a small perturbation keeps every argmax and a high SNR
    close = ref + 1e-3 * rng.standard_normal(ref.shape)
    result = compare({"y": ref}, {"y": close}, precision="fixed", tier="emulated", classify=True)
    assert result.passed, result.failures
    assert result.worst.top1_agreement == pytest.approx(1.0)
    assert result.tier == "emulated"
    # swap the top two logits of 10 rows: 95% top-1 agreement, SNR still high
    swapped = close.copy()
    for i in range(10):
        order = np.argsort(swapped[i])
        a, b = order[-1], order[-2]
        swapped[i, a], swapped[i, b] = swapped[i, b], swapped[i, a]
    result = compare({"y": ref}, {"y": swapped}, precision="fixed", tier="emulated", classify=True)
    assert result.worst.top1_agreement == pytest.approx(0.95)
    assert not result.passed and any("top-1" in f for f in result.failures)


def test_fixed_tier_needs_snr():
    ref = _rng().standard_normal((100, 10))
    noisy = ref + 0.2 * _rng().standard_normal(ref.shape)  # about 14 dB
    result = compare({"y": ref}, {"y": noisy}, precision="fixed", tier="emulated")
    assert not result.passed and any("SNR" in f for f in result.failures)


def test_shape_mismatch_is_a_failure():
    ref = np.zeros((2, 3))
    result = compare({"y": ref}, {"y": np.zeros((3, 2))})
    assert not result.passed
    assert "shape" in result.failures[0] and "y" in result.failures[0]


def test_missing_output_is_a_failure():
    ref = {"a": np.zeros(3), "b": np.ones(3)}
    result = compare(ref, {"a": np.zeros(3)})
    assert not result.passed
    assert len(result.failures) == 1 and result.failures[0].startswith("b:")
    assert "missing" in result.failures[0]


def test_classify_computes_top1():
    ref = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    cand = np.array([[0.1, 0.9, 0.0], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    result = compare({"y": ref}, {"y": cand}, classify=True)
    assert result.worst.top1_agreement == pytest.approx(0.5)
    assert "top-1 50.0%" in result.summary()
    assert compare({"y": ref}, {"y": cand}).worst.top1_agreement is None


def test_metrics_values():
    ref = np.array([1.0, -2.0, 4.0])
    cand = np.array([1.0, -2.5, 4.0])
    m = compare({"y": ref}, {"y": cand}).worst
    assert m.max_abs == pytest.approx(0.5)
    assert m.max_rel == pytest.approx(0.25)
    assert m.mean_abs == pytest.approx(0.5 / 3)
    assert m.snr_db == pytest.approx(10 * np.log10(21 / 0.25))
    assert m.cosine == pytest.approx(np.dot(ref, cand) / np.linalg.norm(ref) / np.linalg.norm(cand))


@pytest.mark.parametrize("kwargs", [{"tier": "trusted"}, {"precision": "int4"}])
def test_invalid_tier_or_precision_raises(kwargs):
    with pytest.raises(ValueError):
        compare({"y": np.zeros(2)}, {"y": np.zeros(2)}, **kwargs)
