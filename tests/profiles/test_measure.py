"""Measuring a bundle on the host: latency statistics, load time, size, per-layer breakdown."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from edgesmith import api as es
from edgesmith.errors import UsageError
from edgesmith.profiles.measure import aggregate_layers, profile_bundle
from edgesmith.profiles.profile import LatencyStats

RUNS = 20


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    variant = es.optimize(es.load("zoo:digits-cnn"), ["reparam"])
    bundle, _ = es.export(variant, tmp_path_factory.mktemp("measure"), target="onnx")
    return bundle


@pytest.fixture(scope="module")
def profile(bundle):
    return profile_bundle(bundle.path, runs=RUNS, warmup=3, threads=1)


def test_latency_stats_are_ordered(profile):
    s = profile.latency_ms
    assert 0 < s.min <= s.p50 <= s.p90 <= s.p99 <= s.max
    assert s.min <= s.mean <= s.max and s.std >= 0
    assert len(profile.samples_ms) == RUNS == profile.runs
    assert min(profile.samples_ms) == s.min and max(profile.samples_ms) == s.max


def test_profile_fields(profile, bundle):
    assert profile.mode == "measured" and profile.device == "host"
    assert profile.target == "onnx" and profile.runtime == "onnxruntime" and profile.name == "digits-cnn"
    assert profile.load_time_ms > 0
    assert profile.file_size_bytes == (bundle.path / "model.onnx").stat().st_size
    assert profile.batch == bundle.manifest.inputs[0].shape[0]
    assert profile.throughput_per_s == pytest.approx(profile.batch * 1e3 / profile.latency_ms.p50)
    assert profile.parity["passed"] is True and profile.parity["tier"] == "verified"
    assert profile.passes[-1]["name"] == "reparam"
    assert profile.threads == 1 and profile.warmup == 3
    json.dumps(asdict(profile), allow_nan=False)


def test_layers(profile):
    layers = profile.layers
    assert layers
    assert sum(layer.share for layer in layers) == pytest.approx(1.0, abs=1e-6)
    assert all(0 <= layer.share <= 1 and layer.mean_ms >= 0 for layer in layers)
    assert [layer.mean_ms for layer in layers] == sorted((layer.mean_ms for layer in layers), reverse=True)
    named = [layer.name for layer in layers if not layer.name.startswith("op:")]
    assert named, [layer.name for layer in layers]
    assert any(name.startswith(("features.", "head.")) for name in named)


def test_without_layers(bundle):
    p = profile_bundle(bundle.path, runs=2, warmup=0, layers=False)
    assert p.layers == [] and len(p.samples_ms) == 2


def test_progress_is_reported(bundle):
    seen = []
    profile_bundle(bundle.path, runs=3, warmup=0, layers=False, progress=seen.append)
    assert seen == [1, 2, 3]


def test_unmeasurable_device(bundle):
    with pytest.raises(UsageError) as info:
        profile_bundle(bundle.path, device="jetson", runs=2)
    assert "jetson" in str(info.value) and "host" in str(info.value)


@pytest.mark.parametrize("runs", [0, -1])
def test_no_runs(bundle, runs):
    with pytest.raises(UsageError, match="runs"):
        profile_bundle(bundle.path, runs=runs)


def test_latency_stats_from_samples():
    s = LatencyStats.from_samples([4.0, 1.0, 3.0, 2.0])
    assert s.p50 == pytest.approx(2.5)
    assert s.min == 1.0 and s.max == 4.0 and s.mean == pytest.approx(2.5)
    assert s.p90 == pytest.approx(3.7) and s.p99 == pytest.approx(3.97)
    one = LatencyStats.from_samples([5.0])
    assert one.p50 == one.p99 == one.min == one.max == 5.0 and one.std == 0.0


def test_aggregate_layers():
    layers = aggregate_layers([
        {"node": "a", "op_type": "Conv", "scope": "features.0", "mean_ms": 3.0},
        {"node": "b", "op_type": "Relu", "scope": "features.0", "mean_ms": 1.0},
        {"node": "c", "op_type": "Gemm", "scope": "", "mean_ms": 4.0},
    ])
    assert {(layer.name, layer.mean_ms) for layer in layers} == {("features.0", 4.0), ("op:Gemm", 4.0)}
    by_name = {layer.name: layer for layer in layers}
    assert by_name["features.0"].op_types == ["Conv", "Relu"] and by_name["features.0"].share == 0.5


def test_peak_memory_is_measured_in_a_fresh_process(profile, bundle):
    from edgesmith.profiles.measure import peak_memory_mb

    # this test process holds torch and several sessions already: the figure must not be its rise
    assert profile.peak_memory_mb > 1
    assert peak_memory_mb(bundle.path, threads=1) == pytest.approx(profile.peak_memory_mb, rel=0.2)


def test_the_memory_child_needs_no_torch(bundle):
    import subprocess
    import sys

    code = ("import sys; from edgesmith.runtimes.memory import measure; r = measure(sys.argv[1]); "
            "assert 'torch' not in sys.modules, 'torch imported'; assert r['peak_memory_mb'] > 1, r")
    done = subprocess.run([sys.executable, "-c", code, str(bundle.path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_an_unmeasurable_peak_is_unknown_not_zero(tmp_path):
    from edgesmith.profiles.measure import peak_memory_mb

    assert peak_memory_mb(tmp_path / "no-such-bundle") is None
