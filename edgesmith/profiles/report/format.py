"""What the Markdown and HTML reports share: number formatting, entry labels, and the rows of the tables.

A cell is text, or (text, css class) where the HTML colours it (``pass``/``fail``,
``predicted``, ``measured``, ``note``); Markdown shows only the text. The renderers
(:mod:`edgesmith.profiles.report.markdown`, :mod:`edgesmith.profiles.report.html`)
and the cross-device sections (:mod:`edgesmith.profiles.report.devices`) all
format numbers here, so a figure reads the same in every table.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

TITLE = "edgesmith profile report"
TOP_LAYERS = 15
LOG_AXIS_RATIO = 20  # p50 spread above which the latency axis turns logarithmic

Cell = str | tuple[str, str]  # text, or (text, css class)

# (header, numeric) per summary column; numeric columns are right-aligned
SUMMARY = [
    ("name", False), ("target", False), ("runtime", False), ("device", False), ("mode", False),
    ("parity", False), ("p50 ms", True), ("p90 ms", True), ("p99 ms", True),
    ("mean±std ms", True), ("throughput/s", True), ("load ms", True), ("peak MiB", True),
    ("size", True), ("passes", False),
]
ENV = [("key", False), ("value", False)]
PARITY = [("name", False), ("tier", False), ("result", False), ("max_abs", True),
          ("snr_db", True), ("top1_agreement", True)]
LATENCY = [("name", False), ("samples", True), ("min ms", True), ("p50 ms", True),
           ("p90 ms", True), ("p99 ms", True), ("max ms", True)]
LAYERS = [("#", True), ("layer", False), ("op types", False), ("mean ms", True), ("share", True)]
MEMORY_NOTE = ("peak MiB: what loading and running the bundle adds to a fresh process's peak resident memory "
               "(measured in a child process; — where unknown, and on predicted rows: a device's process memory "
               "is not predicted).")
TIERS_NOTE = ("Parity tiers: verified = the artifact ran on its real runtime; emulated = a "
              "faithful stand-in ran it; structural = the artifact did not run, only its graph was checked "
              "(a tensorrt graph is also run on ONNX Runtime: its metrics are that graph's).")


# ---------------------------------------------------------------- numbers

def sig(v: Any, digits: int = 3) -> str:
    """Format a number with ``digits`` significant digits, never in scientific notation (``—`` if none)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "—"
    if v == 0:
        return "0"
    return f"{v:.{max(digits - 1 - math.floor(math.log10(abs(v))), 0)}f}"


def size(n: Any) -> str:
    """A byte count in binary units (``—`` if none)."""
    if not isinstance(n, (int, float)) or n < 0:
        return "—"
    from edgesmith.units import format_bytes

    return format_bytes(n)


def parity_cells(p: dict[str, Any] | None) -> tuple[str, str, str]:
    """Return (tier, result, css class); the tier is shown as recorded, never upgraded."""
    if not p:
        return "—", "—", ""
    tier = str(p.get("tier") or "unknown tier")
    passed = p.get("passed")
    result = "pass" if passed is True else "FAIL" if passed is False else "?"
    return tier, result, {"pass": "pass", "FAIL": "fail"}.get(result, "")


def flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Dotted key/value rows of a nested mapping (lists joined with commas)."""
    rows: list[tuple[str, str]] = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flatten(value, name + ".") if value else [(name, "—")]
        elif isinstance(value, (list, tuple)):
            rows.append((name, ", ".join(str(v) for v in value) or "—"))
        else:
            rows.append((name, "—" if value is None else str(value)))
    return rows


# ---------------------------------------------------------------- entries

def label(e: dict[str, Any]) -> str:
    """An entry's label, ``name.target`` (plus ``@ device`` off the host); a layer's name."""
    text = str(e.get("name", ""))
    if e.get("target"):
        text += f".{e['target']}"
    if e.get("device") not in (None, "", "host"):
        text += f" @ {e['device']}"
    return text


def entries_of(docs: list[dict]) -> list[dict[str, Any]]:
    """The entries of every document, in order."""
    return [e for d in docs for e in d.get("entries", [])]


def environments(docs: list[dict]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Return (heading, key/value rows) per distinct environment."""
    envs = [d.get("environment") or {} for d in docs]
    if not envs:
        return []
    if all(e == envs[0] for e in envs):
        return [("Environment", flatten(envs[0]))]
    return [(f"Environment of document {i + 1} ({d.get('created_at', 'undated')}, "
             f"{len(d.get('entries', []))} entries)", flatten(e))
            for i, (d, e) in enumerate(zip(docs, envs))]


def intro(docs: list[dict], entries: list[dict]) -> str:
    """The report's first line: when it was made, from how many entries and documents."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    dated = ", ".join(str(d.get("created_at", "undated")) for d in docs) or "none"
    return (f"Created {now}: {len(entries)} entries from {len(docs)} profile "
            f"document{'s' if len(docs) != 1 else ''} (profiled {dated}).")


def is_prediction(e: dict[str, Any]) -> bool:
    """A ``predicted`` entry with its prediction (latency is a point and a band, not samples)."""
    return e.get("mode") == "predicted" and bool(e.get("prediction"))


def mode(e: dict[str, Any]) -> str:
    """``measured``/``predicted``; timings from a stand-in runtime are flagged as not a latency."""
    text = str(e.get("mode", ""))
    return f"{text}, emulated (not a latency)" if e.get("timing") == "emulated" else text


def latency_cell(e: dict[str, Any]) -> Cell:
    """``1.23`` measured, ``≈1.2 (0.61–2.4)`` predicted, ``emulated`` for a stand-in's timing."""
    if e.get("mode") == "predicted" and e.get("prediction"):
        p = e["prediction"]
        return (f"≈{sig(p.get('latency_ms'))} ({sig(p.get('low_ms'))}–{sig(p.get('high_ms'))})", "predicted")
    if e.get("timing") == "emulated":
        return ("emulated (not a latency)", "note")
    return (sig((e.get("latency_ms") or {}).get("p50")), "measured")


def use_log_axis(entries: list[dict[str, Any]]) -> bool:
    """Whether the measured p50s spread so far that a latency axis should be logarithmic."""
    p50s = [e["latency_ms"]["p50"] for e in entries if e.get("samples_ms")]
    return bool(p50s) and min(p50s) > 0 and max(p50s) / min(p50s) > LOG_AXIS_RATIO


# ---------------------------------------------------------------- table rows

def summary_row(e: dict[str, Any]) -> list[Cell]:
    """One entry's row of the summary table (columns :data:`SUMMARY`)."""
    lat = e.get("latency_ms", {})
    tier, result, cls = parity_cells(e.get("parity"))
    parity: Cell = "—" if not e.get("parity") else (f"{tier}: {result}", cls)
    passes = ", ".join(str(p.get("name", "?")) for p in e.get("passes", [])) or "—"
    if is_prediction(e):  # a prediction has no percentiles, load time or measured memory
        return [label(e), str(e.get("target", "")), str(e.get("runtime", "")), str(e.get("device", "")),
                mode(e), parity, latency_cell(e), "—", "—", "—", sig(e.get("throughput_per_s")), "—",
                "—", size(e.get("file_size_bytes")), passes]
    return [
        label(e), str(e.get("target", "")), str(e.get("runtime", "")),
        str(e.get("device", "")), mode(e), parity,
        sig(lat.get("p50")), sig(lat.get("p90")), sig(lat.get("p99")),
        f"{sig(lat.get('mean'))}±{sig(lat.get('std'))}", sig(e.get("throughput_per_s")),
        sig(e.get("load_time_ms")), sig(e.get("peak_memory_mb")),
        size(e.get("file_size_bytes")), passes,
    ]


def parity_row(e: dict[str, Any]) -> list[Cell]:
    """One entry's row of the parity table (columns :data:`PARITY`)."""
    tier, result, cls = parity_cells(e["parity"])
    m = e["parity"].get("metrics") or {}
    top1 = m.get("top1_agreement")
    fraction = isinstance(top1, (int, float)) and 0 <= top1 <= 1
    max_abs = m.get("max_abs")
    return [label(e), tier, (result, cls), f"{max_abs:.3g}" if sig(max_abs) != "—" else "—",
            sig(m.get("snr_db"), 4), f"{top1:.2%}" if fraction else sig(top1, 4)]


def latency_row(e: dict[str, Any]) -> list[Cell]:
    """One entry's row of the latency table (columns :data:`LATENCY`)."""
    lat = e.get("latency_ms", {})
    return [label(e), str(len(e.get("samples_ms") or []))] + [
        sig(lat.get(k)) for k in ("min", "p50", "p90", "p99", "max")]


def top_layers(layers: list[dict[str, Any]]) -> list[tuple[str, str, float, float, bool]]:
    """Return (name, op types, mean_ms, share, is_other) for the top layers plus "other"."""
    def num(x: dict[str, Any], key: str) -> float:
        return float(x.get(key) or 0.0)

    ordered = sorted(layers, key=lambda x: num(x, "mean_ms"), reverse=True)
    top, rest = ordered[:TOP_LAYERS], ordered[TOP_LAYERS:]
    rows = [(label(x), ", ".join(map(str, x.get("op_types", []))), num(x, "mean_ms"),
             num(x, "share"), False) for x in top]
    if rest:
        rows.append(("other", f"{len(rest)} more layers", sum(num(x, "mean_ms") for x in rest),
                     sum(num(x, "share") for x in rest), True))
    return rows
