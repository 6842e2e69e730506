"""The report's cross-device sections: variants x targets x devices, measured next to predicted.

Each section is format-free data (:class:`Section`: heading, notes, a table, an
optional plot) that :mod:`edgesmith.profiles.report.markdown` renders as tables
and :mod:`edgesmith.profiles.report.html` as tables and inline SVG:

- ``latency-per-device``: rows variant.target, columns devices; a measured p50 or
  ``≈point (low–high)`` for a prediction; a dot plot with the bands;
- ``prediction-error``: measured entries that carry a prediction of the same
  device, with the error and its median;
- ``pareto``: per device, size against latency with quality as colour, and the
  variants on the Pareto front (no other is at once no larger, no slower and of
  no lower quality, and better in one);
- ``language-models``: generation bundles' time to first token and decode tokens/s per device,
  measured next to predicted (:mod:`edgesmith.profiles.report.lm`);
- ``fpga-resources``: hls bundles on FPGA devices, their predicted DSP/LUT/FF/BRAM
  against the part and their latency in cycles;
- ``parity-matrix``: variants x targets, the tier and pass/FAIL of each bundle;
- ``calibration`` and ``jobs``: the host calibration and a sweep's jobs, when present.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from edgesmith.profiles.report import svg
from edgesmith.profiles.report.format import Cell, latency_cell, parity_cells, sig, size


@dataclass
class Section:
    """One report section.

    Attributes:
        id: Stable HTML id (tests and links use it).
        heading: Section heading.
        notes: Paragraphs before the table.
        columns: (header, numeric) per column.
        rows: Table rows.
        plots: Inline SVG elements (HTML only).
    """

    id: str
    heading: str
    notes: list[str] = field(default_factory=list)
    columns: list[tuple[str, bool]] = field(default_factory=list)
    rows: list[list[Cell]] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)


def variant(e: dict[str, Any]) -> str:
    """``name.target``."""
    return f"{e.get('name', '')}.{e.get('target', '')}"


def devices_of(entries: list[dict[str, Any]]) -> list[str]:
    """Devices in order of appearance, the host first."""
    names = list(dict.fromkeys(str(e.get("device", "")) for e in entries))
    return sorted(names, key=lambda d: d != "host")


def latency_of(e: dict[str, Any]) -> float | None:
    """The entry's latency: measured p50, or the predicted point."""
    if e.get("mode") == "predicted" and e.get("prediction"):
        return e["prediction"].get("latency_ms")
    if e.get("timing") == "emulated":
        return None  # a stand-in's timing is not a latency
    return (e.get("latency_ms") or {}).get("p50")


def quality_of(e: dict[str, Any]) -> tuple[float | None, str]:
    """(value, metric) from the entry's parity: top-1 agreement, else cosine, else SNR (dB)."""
    metrics = ((e.get("parity") or {}).get("metrics")) or {}
    for key in ("top1_agreement", "cosine", "snr_db"):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), key
    return None, ""


def pareto_front(points: list[tuple[float, float, float | None]]) -> list[bool]:
    """Which (size, latency, quality) points no other point dominates.

    A point dominates another when it is no larger, no slower and of no lower quality, and
    strictly better in one; an unknown quality counts as the lowest.
    """
    def q(v: float | None) -> float:
        return float("-inf") if v is None else v

    front = []
    for i, (s, lat, qual) in enumerate(points):
        dominated = any(
            s2 <= s and l2 <= lat and q(q2) >= q(qual) and (s2 < s or l2 < lat or q(q2) > q(qual))
            for j, (s2, l2, q2) in enumerate(points) if j != i)
        front.append(not dominated)
    return front


def device_sections(docs: list[dict[str, Any]], entries: list[dict[str, Any]], log: bool) -> list[Section]:
    """Every cross-device section that has data, in report order."""
    matrix = _latency_matrix(entries, log)
    for key in ("not_predicted", "not_measured"):
        skipped = [s for d in docs for s in d.get(key, [])]
        if matrix is not None and skipped:
            matrix.notes += [f"{key.replace('_', ' ').capitalize()}: {s.get('bundle', '?')} on "
                             f"{s.get('device', '?')}: {s.get('reason', '')}" for s in skipped]
    out = [matrix, _prediction_error(entries), _language_models(entries), *_pareto(entries), _fpga_resources(entries),
           _parity_matrix(entries), _calibration(docs), _jobs(docs)]
    return [s for s in out if s is not None]


def _latency_matrix(entries, log) -> Section | None:
    devices = devices_of(entries)
    if len(devices) < 2 and not any(e.get("mode") == "predicted" for e in entries):
        return None
    by_key: dict[str, dict[str, dict]] = {}
    for e in entries:
        by_key.setdefault(variant(e), {})[str(e.get("device", ""))] = e
    rows = [[name, *[latency_cell(cells[d]) if d in cells else "—" for d in devices]]
            for name, cells in by_key.items()]
    points = []
    for d in devices:
        for name, cells in by_key.items():
            e = cells.get(d)
            value = latency_of(e) if e else None
            if value is None:
                continue
            p = e.get("prediction") if e.get("mode") == "predicted" else None
            points.append(svg.Point(name, value, p and p.get("low_ms"), p and p.get("high_ms"), p is None,
                                    f"{d} ({'predicted' if p else 'measured'})"))
    values = [p.value for p in points if p.value > 0]
    spread = bool(values) and max(values) / min(values) > 20
    plot = svg.range_plot(points, title="Latency per device", log=spread or log,
                          x_label="latency per inference (ms" + (", log scale)" if spread or log else ")"))
    return Section("latency-per-device", "Latency per device",
                   ["Cells: the measured p50 in ms, or ≈ the predicted latency with its band (low–high). "
                    "A predicted latency is a roofline from the graph's FLOPs and bytes and the device's figures, "
                    "calibrated on the host: it was not measured on that device."],
                   [("variant", False), *[(d, True) for d in devices]], rows, [plot])


def _language_models(entries) -> Section | None:
    from edgesmith.profiles.report.lm import COLUMNS, HEADING, lm_table

    parts = lm_table(entries)
    if parts is None:
        return None
    notes, rows, plots = parts
    return Section("language-models", HEADING, notes, COLUMNS, rows, plots)


def _prediction_error(entries) -> Section | None:
    rows, errors = [], []
    for e in entries:
        p = e.get("prediction")
        if e.get("mode") != "measured" or not p or p.get("error") is None:
            continue
        errors.append(abs(p["error"]))
        rows.append([f"{variant(e)} @ {e.get('device')}", sig(e["latency_ms"]["p50"]), sig(p.get("latency_ms")),
                     f"{sig(p.get('low_ms'))}–{sig(p.get('high_ms'))}", f"{p['error']:+.1%}"])
    if not rows:
        return None
    return Section("prediction-error", "Prediction vs measured",
                   [f"Where a device was here, its measurement and its prediction side by side. Median absolute "
                    f"error: {statistics.median(errors):.1%} over {len(errors)} "
                    f"entr{'y' if len(errors) == 1 else 'ies'}."],
                   [("variant @ device", False), ("measured p50 ms", True), ("predicted ms", True),
                    ("band ms", True), ("error", True)], rows)


def _pareto(entries) -> list[Section]:
    sections = []
    for d in devices_of(entries):
        on = [e for e in entries if e.get("device") == d and latency_of(e) and e.get("file_size_bytes")]
        if len(on) < 2:
            continue
        qualities = [quality_of(e) for e in on]
        metric = next((m for _, m in qualities if m), "")
        front = pareto_front([(float(e["file_size_bytes"]), float(latency_of(e)), q)
                              for e, (q, _) in zip(on, qualities)])
        label = {"top1_agreement": "top-1 agreement with the source", "cosine": "cosine with the source",
                 "snr_db": "SNR vs the source (dB)"}.get(metric, "quality unknown")
        mode = "predicted" if all(e.get("mode") == "predicted" for e in on) else "measured"
        dots = [svg.Dot(variant(e), float(e["file_size_bytes"]), float(latency_of(e)),
                        _unit(q, m), f) for e, (q, m), f in zip(on, qualities, front)]
        plot = svg.scatter_plot(dots, title=f"Size, latency and quality on {d} ({mode})",
                                x_label="bundle size (log scale)", y_label=f"latency ms, {mode} (log scale)",
                                quality_label={"top1_agreement": "top-1 agreement", "cosine": "cosine",
                                               "snr_db": "SNR dB / 100"}.get(metric, "unknown"))
        rows = [[variant(e), sig(latency_of(e)), size(e["file_size_bytes"]),
                 "—" if q is None else sig(q, 4), ("on the front", "pass") if f else "dominated"]
                for e, (q, _), f in zip(on, qualities, front)]
        sections.append(Section(f"pareto-{_slug(d)}", f"Size, latency and quality on {d}",
                                [f"Quality is the {label} (from each bundle's parity). A variant is on the Pareto "
                                 "front when no other is at once no larger, no slower and of no lower quality "
                                 "while better in one."],
                                [("variant", False), (f"latency ms ({mode})", True), ("size", True),
                                 ("quality", True), ("Pareto", False)], rows, [plot]))
    return sections


def _unit(q: float | None, metric: str) -> float | None:
    """A quality on 0..1 for the colour scale (SNR: 0 dB -> 0, 100 dB -> 1)."""
    if q is None:
        return None
    return min(max(q / 100.0, 0.0), 1.0) if metric == "snr_db" else q


def _fpga_resources(entries) -> Section | None:
    rows = []
    for e in entries:
        res = (e.get("prediction") or {}).get("resources") if e.get("mode") == "predicted" else None
        if not res:
            continue
        util = res.get("utilisation") or {}

        def cell(k: str, _res=res, _util=util) -> str:
            return f"{_res[k]:,}" + (f" ({_util[k]:.0%})" if k in _util else "")

        fits = {True: ("fits", "pass"), False: ("does not fit", "fail"), None: "capacity unknown"}[res.get("fits")]
        rows.append([variant(e), str(e.get("device", "")), str(res.get("part", "")),
                     *[cell(k) for k in ("dsp", "lut", "ff", "bram18")],
                     f"{res['latency_cycles']:,}", f"{res['interval_cycles']:,}", sig(res["clock_ns"]), fits])
    if not rows:
        return None
    return Section("fpga-resources", "FPGA resources (predicted)",
                   ["For each hls bundle on an FPGA device: DSP slices, LUTs, flip-flops and 18 Kb block RAMs with "
                    "the share of the part, and the latency and initiation interval in clock cycles. A first-order "
                    "model from the layer sizes, reuse factor and precisions (edgesmith.profiles.fpga): no "
                    "synthesis was run, and the vendor's report is the figure to sign off on."],
                   [("variant", False), ("device", False), ("part", False), ("DSP", True), ("LUT", True),
                    ("FF", True), ("BRAM18", True), ("latency cycles", True), ("interval cycles", True),
                    ("clock ns", True), ("fit", False)], rows)


def _parity_matrix(entries) -> Section | None:
    cells: dict[str, dict[str, dict]] = {}
    targets: list[str] = []
    for e in entries:
        if e.get("parity"):
            cells.setdefault(str(e.get("name", "")), {})[str(e.get("target", ""))] = e["parity"]
            if e.get("target") not in targets:
                targets.append(str(e.get("target", "")))
    if not cells:
        return None

    def cell(p: dict | None) -> Cell:
        if not p:
            return "—"
        tier, result, cls = parity_cells(p)
        return (f"{tier}: {result}", cls)

    rows = [[name, *[cell(by_target.get(t)) for t in targets]] for name, by_target in cells.items()]
    return Section("parity-matrix", "Parity matrix",
                   ["Each bundle against its source model. verified = the artifact ran on its real runtime; "
                    "emulated = a faithful stand-in ran it; structural = the artifact did not run, only its graph "
                    "was checked (a tensorrt graph is also run on ONNX Runtime: its metrics are that graph's)."],
                   [("variant", False), *[(t, False) for t in targets]], rows)


def _calibration(docs) -> Section | None:
    from edgesmith.profiles.roofline import EFFICIENCY_MEANING

    cal = next((d["calibration"] for d in docs if d.get("calibration")), None)
    if not cal:
        return None
    rows = [["GEMM peak", f"{sig(cal.get('peak_gflops'))} GFLOP/s"],
            ["memory bandwidth", f"{sig(cal.get('bandwidth_gbs'))} GB/s"],
            ["per node / per run", f"{sig(cal.get('op_overhead_us'))} us / {sig(cal.get('run_overhead_us'))} us"],
            ["reference-network factor", sig(cal.get("graph_factor"))],
            ["one-op suite median error", f"{cal.get('spread', 0):.0%}"]]
    rows += [[f"roofline / measured: {k}", sig(v)] for k, v in (cal.get("efficiency") or {}).items()]
    return Section("calibration", "Host calibration (for predictions)",
                   ["Measured on this machine with ONNX Runtime (edgesmith devices calibrate); predictions for "
                    "other devices use its per-class factors with their own data-sheet figures.",
                    f"Per class: {EFFICIENCY_MEANING}."],
                   [("figure", False), ("value", True)], rows)


def _jobs(docs) -> Section | None:
    jobs = [j for d in docs for j in d.get("jobs", [])]
    if not jobs:
        return None
    rows = [[str(j.get("label", "")), ("ok", "pass") if j.get("ok") else (f"FAILED ({j.get('exit_code')})", "fail"),
             f"{j.get('seconds', 0):.1f}", str(j.get("error") or "; ".join(j.get("notes") or []) or "—")]
            for j in jobs]
    failed = sum(not j.get("ok") for j in jobs)
    return Section("jobs", "Sweep jobs", [f"{len(jobs)} jobs, {failed} failed."],
                   [("job", False), ("result", False), ("seconds", True), ("error or notes", False)], rows)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower())
