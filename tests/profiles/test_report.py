"""Tests for edgesmith.profiles.report: Markdown, self-contained HTML, files, and a real browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgesmith.errors import OutputExistsError, UsageError
from edgesmith.profiles.profile import (
    LatencyStats,
    LayerTime,
    Profile,
    profile_document,
    read_profile_document,
)
from edgesmith.profiles.report import write_report
from edgesmith.profiles.report.devices import pareto_front, quality_of
from edgesmith.profiles.report.html import render_html
from edgesmith.profiles.report.markdown import render_markdown

ENVIRONMENT = {
    "cpu": "Test CPU 9000",
    "cores": 8,
    "threads": 16,
    "os": "Linux-6.1",
    "python": "3.11.7",
    "libraries": {"torch": "2.6.0", "onnxruntime": "1.20.1"},
}
SAFE_NAME = "mobilenet_fp32"
ODD_NAME = "tiny<b>net"
VERIFIED = {"tier": "verified", "passed": True,
            "metrics": {"max_abs": 1.2e-6, "snr_db": 98.5, "top1_agreement": 1.0}}


def _profile(name: str, samples: list[float], **kw) -> Profile:
    stats = LatencyStats.from_samples(samples)
    fields = dict(
        name=name, target="onnx", runtime="onnxruntime", device="host", mode="measured",
        latency_ms=stats, samples_ms=samples, throughput_per_s=1000.0 / stats.p50, batch=1,
        load_time_ms=42.5, peak_memory_mb=123.4, file_size_bytes=3_500_000, warmup=5,
        runs=len(samples), threads=0,
    )
    fields.update(kw)
    return Profile(**fields)


def _layers(n: int) -> list[LayerTime]:
    times = [10.0 / (i + 1) for i in range(n)]
    return [LayerTime(f"features.{i}", ["Conv", "Relu"], t, t / sum(times)) for i, t in enumerate(times)]


@pytest.fixture
def doc() -> dict:
    fast = _profile(SAFE_NAME, [5.0 + 0.01 * (i % 17) for i in range(60)], layers=_layers(20),
                    parity=VERIFIED, passes=[{"name": "fold_bn"}, {"name": "quantize_int8"}])
    slow = _profile(ODD_NAME, [150.0 + (i % 7) for i in range(30)], target="hls",
                    runtime="hls-csim", file_size_bytes=20_000)
    return profile_document([fast, slow], ENVIRONMENT)


def test_markdown_summary(doc):
    md = render_markdown([doc])
    assert "| name" in md and "p50 ms" in md
    assert SAFE_NAME in md and ODD_NAME in md
    p50s = [e["latency_ms"]["p50"] for e in doc["entries"]]
    assert f"{p50s[0]:.2f}" in md and f"{p50s[1]:.0f}" in md
    assert "verified: pass" in md
    assert "`features.0`" in md and "`other`" in md and "5 more layers" in md  # top 15 plus the aggregate row
    assert "cpu" in md and "libraries.torch" in md and "2.6.0" in md
    assert "<svg" not in md


def test_html_is_self_contained(doc):
    page = render_html([doc])
    for banned in ("http://", "https://", "<link", "@import", "url("):
        assert banned not in page
    assert not re.search(r"\bsrc\s*=", page)
    assert "&lt;b&gt;" in page and ODD_NAME not in page
    assert page.count('<svg class="es-plot"') == 2  # latency + one layer chart
    assert page.count('<svg class="es-plot es-pareto"') == 1  # two variants on the host: size vs latency
    assert 'data-plots="3"' in page
    assert "verified: pass" in page and "libraries.torch" in page
    assert "log scale" in page  # p50s of 5 ms and 153 ms are more than 20x apart


def test_documents_from_different_environments_are_all_shown(doc):
    other = {**doc, "environment": {"cpu": "Other CPU"}, "created_at": "2025-01-01T00:00:00+00:00"}
    for text in (render_markdown([doc, other]), render_html([doc, other])):
        assert "Environment of document 1" in text and "Environment of document 2" in text
        assert "Test CPU 9000" in text and "Other CPU" in text
        assert text.count("mobilenet_fp32") >= 2


@pytest.mark.parametrize("tier", ["structural", "emulated"])
def test_lower_tiers_are_never_called_verified(doc, tier):
    doc["entries"][0]["parity"] = {**VERIFIED, "tier": tier}
    for text in (render_markdown([doc]), render_html([doc])):
        assert f"{tier}: pass" in text
        assert "verified: pass" not in text


def test_edge_cases_produce_finite_svg():
    one = _profile("one", [3.0], layers=[LayerTime("op:Add", ["Add"], 0.0, 0.0)])
    flat = _profile("flat", [2.0] * 10, parity={"tier": "structural", "passed": False, "metrics": {}})
    empty = _profile("predicted", [1.0], mode="predicted", samples_ms=[])
    page = render_html([profile_document([one, flat, empty], {})])
    assert not re.search(r'="[^"]*(nan|inf)', page, re.IGNORECASE)
    assert "No timed samples for: predicted" in page
    assert "structural: FAIL" in page and "No environment recorded." in page
    nothing = profile_document([], ENVIRONMENT)
    assert "No entries" in render_html([nothing]) and "No entries" in render_markdown([nothing])
    assert 'data-plots="0"' in render_html([nothing])


def test_write_report_files(doc, tmp_path):
    out = tmp_path / "sub" / "report.html"
    written = write_report([doc], out)
    assert written == [out, out.with_suffix(".md")]
    assert all(p.is_file() for p in written)
    assert ODD_NAME in out.with_suffix(".md").read_text()
    with pytest.raises(OutputExistsError, match="--force") as exc:
        write_report([doc], out)
    assert str(out) in str(exc.value)
    assert write_report([doc], out, force=True) == written
    with pytest.raises(UsageError, match=r"\.txt"):
        write_report([doc], tmp_path / "report.txt")
    assert [p.name for p in write_report([doc], tmp_path / "only.md")] == ["only.md"]
    assert not list(tmp_path.rglob("*.tmp"))

    merged = write_report([doc, doc], tmp_path / "merged.json")[0]
    back = read_profile_document(merged)
    assert len(back["entries"]) == 4
    assert back["entries"][:2] == doc["entries"]
    assert back["environment"] == ENVIRONMENT and back["environments"] == [ENVIRONMENT] * 2


# ---------------------------------------------------------------- headless Chromium

@pytest.fixture
def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not on PATH and CI is set: the HTML report cannot be checked")
        pytest.skip("chromium is not installed")
    return exe


def _dump_dom(exe: str, page: Path, profile_dir: Path) -> tuple[str, str]:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile_dir}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def _browser_errors(dom: str, stderr: str) -> list[str]:
    """Console errors from Chromium's log plus what the page's own handler recorded."""
    errors = [line for line in stderr.splitlines()
              if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
    pre = re.search(r'<pre id="es-errors">(.*?)</pre>', dom, re.DOTALL)
    if pre is None:
        errors.append("the es-errors element is missing")
    elif pre.group(1).strip():
        errors.append(pre.group(1).strip())
    return errors


def test_html_renders_in_chromium(doc, tmp_path, chromium):
    page = write_report([doc], tmp_path / "report.html")[0]
    dom, stderr = _dump_dom(chromium, page, tmp_path / "chrome")
    assert 'data-rendered="ok"' in dom
    assert '<pre id="es-errors"></pre>' in dom
    assert _browser_errors(dom, stderr) == []


def test_chromium_check_detects_script_errors(doc, tmp_path, chromium):
    page = write_report([doc], tmp_path / "report.html")[0]
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("</body>", '<script>throw new Error("boom")</script></body>'))
    dom, stderr = _dump_dom(chromium, broken, tmp_path / "chrome")
    errors = _browser_errors(dom, stderr)
    assert errors and any("boom" in e for e in errors)


# ---------------------------------------------------------------- across devices

ENV = {"cpu": "Test CPU", "cores_usable": 2}
PASS = {"tier": "verified", "passed": True, "metrics": {"max_abs": 1e-6, "snr_db": 90.0, "top1_agreement": 1.0}}
EMULATED_FAIL = {"tier": "emulated", "passed": False, "metrics": {"max_abs": 0.3, "cosine": 0.9}}


def _measured(name, target, p50, size, parity=PASS, predicted=None):
    stats = LatencyStats.from_samples([p50 * 0.95, p50, p50 * 1.1])
    pred = None
    if predicted is not None:
        pred = {"latency_ms": predicted, "low_ms": predicted / 1.2, "high_ms": predicted * 1.2,
                "error": (predicted - stats.p50) / stats.p50, "notes": []}
    return Profile(name=name, target=target, runtime="onnxruntime", device="host", mode="measured",
                   latency_ms=stats, samples_ms=[p50 * 0.95, p50, p50 * 1.1], throughput_per_s=1e3 / p50, batch=1,
                   load_time_ms=3.0, peak_memory_mb=1.0, file_size_bytes=size, warmup=1, runs=3, threads=0,
                   parity=parity, prediction=pred)


def _predicted(name, target, device, point, size, parity=PASS):
    stats = LatencyStats(p50=point, p90=point, p99=point, min=point, max=point, mean=point, std=0.0)
    return Profile(name=name, target=target, runtime="onnxruntime", device=device, mode="predicted",
                   latency_ms=stats, samples_ms=[], throughput_per_s=1e3 / point, batch=1, load_time_ms=0.0,
                   peak_memory_mb=2.0, file_size_bytes=size, warmup=0, runs=0, threads=0, parity=parity,
                   timing="predicted",
                   prediction={"latency_ms": point, "low_ms": point / 2, "high_ms": point * 2, "notes": ["n"]})


@pytest.fixture
def device_doc():
    entries = []
    for name, p50, size in (("big", 10.0, 4_000_000), ("small", 4.0, 1_000_000)):
        for target in ("onnx", "torch"):
            entries.append(_measured(name, target, p50 * (1 if target == "onnx" else 3), size,
                                     predicted=p50 * 0.9 if target == "onnx" else None,
                                     parity=EMULATED_FAIL if (name, target) == ("small", "torch") else PASS))
            for device, factor in (("jetson-orin-nano", 0.5), ("apple-a17-pro-ane", 0.3), ("raspberry-pi-5", 2.0)):
                entries.append(_predicted(name, target, device, p50 * factor, size))
    d = profile_document(entries, ENV)
    d["calibration"] = {"peak_gflops": 150.0, "bandwidth_gbs": 30.0, "op_overhead_us": 0.5, "run_overhead_us": 7.0,
                        "graph_factor": 1.05, "spread": 0.1, "efficiency": {"conv": 1.0}}
    d["jobs"] = [{"label": "big -> onnx", "ok": True, "seconds": 1.0},
                 {"label": "broken -> onnx", "ok": False, "exit_code": 3, "error": "unknown model", "seconds": 0.1}]
    return d


def test_pareto_front_by_hand():
    points = [(1.0, 10.0, 1.0),   # smallest: on the front
              (2.0, 5.0, 1.0),    # faster: on the front
              (3.0, 6.0, 1.0),    # larger and slower than the second at equal quality: dominated
              (3.0, 4.0, 0.5),    # fastest but worse: on the front
              (2.0, 5.0, 1.0)]    # equal to the second: neither dominates the other
    assert pareto_front(points) == [True, True, False, True, True]
    assert pareto_front([(1.0, 1.0, None), (1.0, 1.0, 0.9)]) == [False, True]  # unknown quality counts lowest


def test_quality_prefers_top1_then_cosine():
    assert quality_of({"parity": PASS}) == (1.0, "top1_agreement")
    assert quality_of({"parity": EMULATED_FAIL}) == (0.9, "cosine")
    assert quality_of({}) == (None, "")


def test_markdown_has_every_device_section(device_doc):
    md = render_markdown([device_doc])
    for heading in ("## Latency per device", "## Prediction vs measured", "## Size, latency and quality on host",
                    "## Size, latency and quality on raspberry-pi-5", "## Parity matrix",
                    "## Host calibration (for predictions)", "## Sweep jobs"):
        assert heading in md, heading
    assert "≈5.00 (2.50–10.0)" in md  # big.onnx on the Jetson: point and band, never a bare number
    assert "Median absolute error: 10.0% over 2 entries" in md
    assert "emulated: FAIL" in md and "FAILED (3)" in md


def test_html_sections_and_plots(device_doc):
    page = render_html([device_doc])
    for section in ("summary", "latency-per-device", "prediction-error", "pareto-host", "pareto-jetson-orin-nano",
                    "pareto-apple-a17-pro-ane", "pareto-raspberry-pi-5", "parity-matrix", "calibration", "jobs"):
        assert f'<section id="{section}">' in page, section
    assert page.count('class="es-plot es-devices"') == 1 and page.count('class="es-plot es-pareto"') == 4
    plots = len(re.findall(r'<svg class="es-plot', page))
    assert f'data-plots="{plots}"' in page
    devices_plot = page[page.index('class="es-plot es-devices"'):]
    devices_plot = devices_plot[:devices_plot.index("</svg>")]
    assert devices_plot.count('class="measured"') == 4 and devices_plot.count('class="predicted"') == 12
    assert devices_plot.count('class="band"') == 12
    host = page[page.index('<section id="pareto-host">'):]
    host = host[:host.index("</section>")]
    # on the host: small.onnx (smallest and fastest) is on the front; big.torch is dominated
    assert re.search(r"small\.onnx</td>.*?on the front", host, re.S)
    assert re.search(r"big\.torch</td>.*?dominated", host, re.S)


def test_device_report_renders_in_chromium(device_doc, tmp_path, chromium):
    page = write_report([device_doc], tmp_path / "report.html")[0]
    dom, stderr = _dump_dom(chromium, page, tmp_path / "chrome")
    assert 'data-rendered="ok"' in dom
    assert _browser_errors(dom, stderr) == []
    assert dom.count('class="es-plot es-pareto"') == 4 and dom.count('class="es-plot es-devices"') == 1
