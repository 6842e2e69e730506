"""Timings from a stand-in runtime (the Core ML evaluator off macOS) are recorded and shown as not a latency."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("coremltools") is None:
    pytest.skip("coremltools is not installed", allow_module_level=True)

from edgesmith import api as es  # noqa: E402
from edgesmith.profiles.measure import profile_bundle  # noqa: E402
from edgesmith.profiles.profile import Profile, profile_document  # noqa: E402
from edgesmith.profiles.report.markdown import render_markdown  # noqa: E402
from edgesmith.runtimes.coreml import native_coreml  # noqa: E402

MARK = "emulated (not a latency)"


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    variant = es.load("zoo:digits-cnn")
    out = tmp_path_factory.mktemp("timing")
    return [profile_bundle(es.export(variant, out, target=t)[0].path, runs=3, warmup=1, layers=False)
            for t in ("coreml", "onnx")]


@pytest.mark.skipif(native_coreml() is not None, reason="on macOS Core ML itself runs: a real latency")
def test_evaluator_timings_are_marked(profiles):
    coreml, onnx = profiles
    assert coreml.timing == "emulated" and coreml.parity["tier"] == "emulated"
    assert onnx.timing == "measured"
    summary = render_markdown([profile_document(profiles, {})]).split("## Summary", 1)[1].split("##", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in summary.splitlines() if line.startswith("| `digits-cnn.")}
    assert MARK in rows["`digits-cnn.coreml`"] and MARK not in rows["`digits-cnn.onnx`"]


def test_old_documents_without_timing_still_load(profiles):
    data = profiles[1].to_dict()
    del data["timing"]
    assert Profile.from_dict(data).timing == "measured"
