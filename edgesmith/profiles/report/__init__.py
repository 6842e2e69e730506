"""Render profile documents as a Markdown report, a self-contained HTML report, or merged JSON.

``edgesmith report a.json b.json -o report.html`` merges the entries of every
document into one report: the environment each was measured in, a summary table
(latency percentiles, throughput, load time, memory, size, parity with its tier),
the latency distribution of every entry and the slowest layers of each. The HTML
needs no network: styles, the small self-check script and the plots (inline SVG,
see :mod:`edgesmith.profiles.report.svg`) are all in the one file, and every string from
the data is escaped. Markdown carries the same numbers as tables only.
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from edgesmith.errors import OutputExistsError, UsageError
from edgesmith.profiles.report import svg
from edgesmith.profiles.profile import PROFILE_SCHEMA_VERSION
from edgesmith.profiles.report.devices import Section, device_sections, latency_cell

TITLE = "edgesmith profile report"
TOP_LAYERS = 15
LOG_AXIS_RATIO = 20  # p50 spread above which the latency axis turns logarithmic

# (header, numeric) per summary column; numeric columns are right-aligned
_SUMMARY = [
    ("name", False), ("target", False), ("runtime", False), ("device", False), ("mode", False),
    ("parity", False), ("p50 ms", True), ("p90 ms", True), ("p99 ms", True),
    ("mean±std ms", True), ("throughput/s", True), ("load ms", True), ("peak MiB", True),
    ("size", True), ("passes", False),
]
_ENV = [("key", False), ("value", False)]
_PARITY = [("name", False), ("tier", False), ("result", False), ("max_abs", True),
           ("snr_db", True), ("top1_agreement", True)]
_LATENCY = [("name", False), ("samples", True), ("min ms", True), ("p50 ms", True),
            ("p90 ms", True), ("p99 ms", True), ("max ms", True)]
_LAYERS = [("#", True), ("layer", False), ("op types", False), ("mean ms", True), ("share", True)]
_MEMORY_NOTE = ("peak MiB: what loading and running the bundle adds to a fresh process's peak resident memory "
                "(measured in a child process; — where unknown, and on predicted rows: a device's process memory "
                "is not predicted).")
_TIERS_NOTE = ("Parity tiers: verified = the artifact ran on its real runtime; emulated = a "
               "faithful stand-in ran it; structural = the artifact did not run, only its graph was checked "
               "(a tensorrt graph is also run on ONNX Runtime: its metrics are that graph's).")

_Cell = str | tuple[str, str]  # text, or (text, css class)


# ---------------------------------------------------------------- formatting

def _sig(v: Any, digits: int = 3) -> str:
    """Format a number with ``digits`` significant digits, never in scientific notation."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "—"
    if v == 0:
        return "0"
    return f"{v:.{max(digits - 1 - math.floor(math.log10(abs(v))), 0)}f}"


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)) or n < 0:
        return "—"
    from edgesmith.units import format_bytes

    return format_bytes(n)


def _parity(p: dict[str, Any] | None) -> tuple[str, str, str]:
    """Return (tier, result, css class); the tier is shown as recorded, never upgraded."""
    if not p:
        return "—", "—", ""
    tier = str(p.get("tier") or "unknown tier")
    passed = p.get("passed")
    result = "pass" if passed is True else "FAIL" if passed is False else "?"
    return tier, result, {"pass": "pass", "FAIL": "fail"}.get(result, "")


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, name + ".") if value else [(name, "—")]
        elif isinstance(value, (list, tuple)):
            rows.append((name, ", ".join(str(v) for v in value) or "—"))
        else:
            rows.append((name, "—" if value is None else str(value)))
    return rows


# ---------------------------------------------------------------- content shared by both formats

def _name(e: dict[str, Any]) -> str:
    """An entry's label, ``name.target`` (plus ``@ device`` off the host); a layer's name."""
    label = str(e.get("name", ""))
    if e.get("target"):
        label += f".{e['target']}"
    if e.get("device") not in (None, "", "host"):
        label += f" @ {e['device']}"
    return label


def _entries(docs: list[dict]) -> list[dict[str, Any]]:
    return [e for d in docs for e in d.get("entries", [])]


def _environments(docs: list[dict]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Return (heading, key/value rows) per distinct environment."""
    envs = [d.get("environment") or {} for d in docs]
    if not envs:
        return []
    if all(e == envs[0] for e in envs):
        return [("Environment", _flatten(envs[0]))]
    return [(f"Environment of document {i + 1} ({d.get('created_at', 'undated')}, "
             f"{len(d.get('entries', []))} entries)", _flatten(e))
            for i, (d, e) in enumerate(zip(docs, envs))]


def _intro(docs: list[dict], entries: list[dict]) -> str:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    dated = ", ".join(str(d.get("created_at", "undated")) for d in docs) or "none"
    return (f"Created {now}: {len(entries)} entries from {len(docs)} profile "
            f"document{'s' if len(docs) != 1 else ''} (profiled {dated}).")


def _summary_row(e: dict[str, Any]) -> list[_Cell]:
    lat = e.get("latency_ms", {})
    tier, result, cls = _parity(e.get("parity"))
    parity: _Cell = "—" if not e.get("parity") else (f"{tier}: {result}", cls)
    passes = ", ".join(str(p.get("name", "?")) for p in e.get("passes", [])) or "—"
    if _is_prediction(e):  # a prediction has no percentiles, load time or measured memory
        return [_name(e), str(e.get("target", "")), str(e.get("runtime", "")), str(e.get("device", "")),
                _mode(e), parity, latency_cell(e), "—", "—", "—", _sig(e.get("throughput_per_s")), "—",
                "—", _size(e.get("file_size_bytes")), passes]
    return [
        _name(e), str(e.get("target", "")), str(e.get("runtime", "")),
        str(e.get("device", "")), _mode(e), parity,
        _sig(lat.get("p50")), _sig(lat.get("p90")), _sig(lat.get("p99")),
        f"{_sig(lat.get('mean'))}±{_sig(lat.get('std'))}", _sig(e.get("throughput_per_s")),
        _sig(e.get("load_time_ms")), _sig(e.get("peak_memory_mb")),
        _size(e.get("file_size_bytes")), passes,
    ]


def _is_prediction(e: dict[str, Any]) -> bool:
    """A ``predicted`` entry with its prediction (latency is a point and a band, not samples)."""
    return e.get("mode") == "predicted" and bool(e.get("prediction"))


def _mode(e: dict[str, Any]) -> str:
    """``measured``/``predicted``; timings from a stand-in runtime are flagged as not a latency."""
    mode = str(e.get("mode", ""))
    return f"{mode}, emulated (not a latency)" if e.get("timing") == "emulated" else mode


def _parity_row(e: dict[str, Any]) -> list[_Cell]:
    tier, result, cls = _parity(e["parity"])
    m = e["parity"].get("metrics") or {}
    top1 = m.get("top1_agreement")
    fraction = isinstance(top1, (int, float)) and 0 <= top1 <= 1
    max_abs = m.get("max_abs")
    return [_name(e), tier, (result, cls), f"{max_abs:.3g}" if _sig(max_abs) != "—" else "—",
            _sig(m.get("snr_db"), 4), f"{top1:.2%}" if fraction else _sig(top1, 4)]


def _latency_row(e: dict[str, Any]) -> list[_Cell]:
    lat = e.get("latency_ms", {})
    return [_name(e), str(len(e.get("samples_ms") or []))] + [
        _sig(lat.get(k)) for k in ("min", "p50", "p90", "p99", "max")]


def _top_layers(layers: list[dict[str, Any]]) -> list[tuple[str, str, float, float, bool]]:
    """Return (name, op types, mean_ms, share, is_other) for the top layers plus "other"."""
    def num(x: dict[str, Any], key: str) -> float:
        return float(x.get(key) or 0.0)

    ordered = sorted(layers, key=lambda x: num(x, "mean_ms"), reverse=True)
    top, rest = ordered[:TOP_LAYERS], ordered[TOP_LAYERS:]
    rows = [(_name(x), ", ".join(map(str, x.get("op_types", []))), num(x, "mean_ms"),
             num(x, "share"), False) for x in top]
    if rest:
        rows.append(("other", f"{len(rest)} more layers", sum(num(x, "mean_ms") for x in rest),
                     sum(num(x, "share") for x in rest), True))
    return rows


def _use_log_axis(entries: list[dict[str, Any]]) -> bool:
    p50s = [e["latency_ms"]["p50"] for e in entries if e.get("samples_ms")]
    return bool(p50s) and min(p50s) > 0 and max(p50s) / min(p50s) > LOG_AXIS_RATIO


# ---------------------------------------------------------------- Markdown

def _md_text(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|").replace("<", "\\<")


def _md_code(text: str) -> str:
    # a code span shows names such as `a<b>` literally on GitHub and reads fine in a terminal
    text = text.replace("\n", " ").replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _md_table(columns: list[tuple[str, bool]], rows: list[list[_Cell]], code: int = -1) -> str:
    """Return a padded GitHub table; column ``code`` is rendered as code spans."""
    cells = [[(_md_code if i == code else _md_text)(c[0] if isinstance(c, tuple) else c)
              for i, c in enumerate(row)] for row in rows]
    widths = [max([len(h), 3] + [len(r[i]) for r in cells]) for i, (h, _) in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if num else v.ljust(w)
                                 for v, w, (_, num) in zip(values, widths, columns)) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + ":" if num else "-" * w
                             for w, (_, num) in zip(widths, columns)) + " |"
    return "\n".join([line([h for h, _ in columns]), rule] + [line(r) for r in cells])


def render_markdown(docs: list[dict]) -> str:
    """Render profile documents as a Markdown report (tables only).

    Args:
        docs: Profile documents, as returned by
            :func:`edgesmith.profiles.profile.read_profile_document`; their entries are merged.

    Returns:
        The Markdown text, readable in a terminal and on GitHub.
    """
    entries = _entries(docs)
    out = [f"# {TITLE}", "", _intro(docs, entries), ""]
    for heading, rows in _environments(docs):
        table = _md_table(_ENV, [list(r) for r in rows]) if rows else "No environment recorded."
        out += [f"## {_md_text(heading)}", "", table, ""]
    if not entries:
        return "\n".join(out + ["No entries: the profile documents are empty.", ""])
    summary = _md_table(_SUMMARY, [_summary_row(e) for e in entries], code=0)
    out += ["## Summary", "", _md_text(_MEMORY_NOTE), "", summary, ""]
    for section in device_sections(docs, entries, _use_log_axis(entries)):
        out += [f"## {_md_text(section.heading)}", ""]
        out += [x for note in section.notes for x in (_md_text(note), "")]
        out += [_md_table(section.columns, section.rows, code=0), ""]
    with_parity = [e for e in entries if e.get("parity")]
    if with_parity:
        out += ["## Parity", "", _TIERS_NOTE, "",
                _md_table(_PARITY, [_parity_row(e) for e in with_parity], code=0), ""]
    timed = [e for e in entries if not _is_prediction(e)]
    if timed:
        out += ["## Latency", "", _md_table(_LATENCY, [_latency_row(e) for e in timed], code=0), ""]
    out += ["## Per-layer breakdown", ""]
    for e in entries:
        if e.get("layers"):
            rows = [[str(i + 1) if not other else "", name, ops, _sig(ms), f"{share:.1%}"]
                    for i, (name, ops, ms, share, other) in enumerate(_top_layers(e["layers"]))]
            out += [f"### {_md_code(_name(e))}{' (predicted)' if e.get('mode') == 'predicted' else ''}", "",
                    _md_table(_LAYERS, rows, 1), ""]
    bare = [_md_code(_name(e)) for e in entries if not e.get("layers")]
    if bare:
        out += [f"No per-layer breakdown for: {', '.join(bare)}.", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
  color:#1f2328;background:#fff;max-width:1240px;margin:24px auto;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #d0d7de;
  padding-bottom:4px}h3{font-size:15px;margin-bottom:4px}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;white-space:nowrap}
td:first-child{white-space:normal;overflow-wrap:anywhere;min-width:10em;max-width:22em}
th{background:#f6f8fa}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1a7f37}.fail{color:#cf222e;font-weight:600}.note{color:#57606a}
td.predicted{color:#b3261e;font-style:italic}
svg.es-plot{display:block;max-width:100%;height:auto;margin:8px 0}
#es-errors{color:#cf222e;white-space:pre-wrap}#es-errors:empty{display:none}
"""

# Marks the page rendered once every plot is in the DOM with a size, and shows script errors
# on the page, so a headless browser's --dump-dom tells whether the report really rendered.
_SCRIPT = r"""
(function () {
  var pending = [];
  function report(text) {
    var pre = document.getElementById("es-errors");
    if (pre) { pre.textContent += text + "\n"; } else { pending.push(text); }
  }
  window.onerror = function (message, source, line) {
    report(String(message) + (line ? " (line " + line + ")" : ""));
  };
  document.addEventListener("DOMContentLoaded", function () {
    pending.splice(0).forEach(function (t) { report(t); });
    var plots = document.querySelectorAll("svg.es-plot");
    var ok = plots.length === Number(document.body.dataset.plots || "0");
    for (var i = 0; i < plots.length; i++) {
      if (plots[i].childElementCount === 0 || !(plots[i].getBoundingClientRect().width > 0)) {
        ok = false;
      }
    }
    document.body.dataset.rendered = ok ? "ok" : "incomplete";
  });
})();
"""


def _html_table(columns: list[tuple[str, bool]], rows: list[list[_Cell]]) -> str:
    def cell(tag: str, c: _Cell, num: bool) -> str:
        text, cls = c if isinstance(c, tuple) else (c, "")
        classes = " ".join(x for x in ("num" if num else "", cls) if x)
        attr = f' class="{classes}"' if classes else ""
        return f"<{tag}{attr}>{html.escape(text)}</{tag}>"

    head = "".join(cell("th", h, num) for h, num in columns)
    body = "\n".join("<tr>" + "".join(cell("td", c, num) for c, (_, num) in zip(r, columns))
                     + "</tr>" for r in rows)
    return (f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody></table></div>")


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _html_section(section: Section) -> str:
    parts = [f'<section id="{html.escape(section.id)}">', f"<h2>{html.escape(section.heading)}</h2>"]
    parts += [_note(n) for n in section.notes] + section.plots
    parts += [_html_table(section.columns, section.rows), "</section>"]
    return "\n".join(parts)


def _html_sections(docs: list[dict], entries: list[dict[str, Any]]) -> tuple[list[str], int]:
    """Return the HTML of the entry sections and the number of plots in them."""
    out = ['<section id="summary">', "<h2>Summary</h2>", _note(_MEMORY_NOTE),
           _html_table(_SUMMARY, [_summary_row(e) for e in entries]), "</section>"]
    plots = 0
    for section in device_sections(docs, entries, _use_log_axis(entries)):
        out.append(_html_section(section))
        plots += len(section.plots)
    with_parity = [e for e in entries if e.get("parity")]
    if with_parity:
        out += ["<h2>Parity</h2>", _note(_TIERS_NOTE),
                _html_table(_PARITY, [_parity_row(e) for e in with_parity])]
    out.append("<h2>Latency</h2>")
    timed = [e for e in entries if e.get("samples_ms")]
    if timed:
        log = _use_log_axis(entries)
        out.append(svg.latency_plot([(_name(e), e["samples_ms"]) for e in timed], log=log))
        plots += 1
    untimed = [_name(e) for e in entries if not e.get("samples_ms") and not _is_prediction(e)]
    if untimed:
        out.append(_note(f"No timed samples for: {', '.join(untimed)}."))
    if any(_is_prediction(e) for e in entries):
        out.append(_note("Predicted entries have no samples: see Latency per device for their bands."))
    out.append(_html_table(_LATENCY, [_latency_row(e) for e in entries if not _is_prediction(e)]))
    out.append("<h2>Per-layer breakdown</h2>")
    for e in entries:
        if not e.get("layers"):
            continue
        name = _name(e) + (" (predicted)" if e.get("mode") == "predicted" else "")
        bars = [svg.Bar(label, ms, f"{_sig(ms)} ms · {share:.1%}", ops, other)
                for label, ops, ms, share, other in _top_layers(e["layers"])]
        out.append(f"<h3>{html.escape(name)}</h3>")
        out.append(svg.bar_plot(bars, title=f"Slowest layers: {name}", y_label="layer",
                                x_label="mean time per inference (ms)"))
        plots += 1
    bare = [_name(e) for e in entries if not e.get("layers")]
    if bare:
        out.append(_note(f"No per-layer breakdown for: {', '.join(bare)}."))
    return out, plots


def render_html(docs: list[dict]) -> str:
    """Render profile documents as one self-contained HTML page with inline SVG plots.

    Args:
        docs: Profile documents, as returned by
            :func:`edgesmith.profiles.profile.read_profile_document`; their entries are merged.

    Returns:
        The HTML text; it references no external script, style, font or image.
    """
    entries = _entries(docs)
    body = [f"<h1>{html.escape(TITLE)}</h1>", _note(_intro(docs, entries))]
    for heading, rows in _environments(docs):
        table = _html_table(_ENV, [list(r) for r in rows]) if rows else None
        body += [f"<h2>{html.escape(heading)}</h2>", table or _note("No environment recorded.")]
    plots = 0
    if entries:
        sections, plots = _html_sections(docs, entries)
        body += sections
    else:
        body.append("<p>No entries: the profile documents are empty.</p>")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(TITLE)}</title>", f"<style>{_CSS}</style>",
        f"<script>{_SCRIPT}</script>", "</head>",
        f'<body data-plots="{plots}">', '<pre id="es-errors"></pre>',
        *body, "</body>", "</html>", "",
    ])


# ---------------------------------------------------------------- files

def _render_json(docs: list[dict]) -> str:
    envs = [d.get("environment") or {} for d in docs]
    merged = {
        "schema_version": PROFILE_SCHEMA_VERSION,
        "kind": "edgesmith.profile",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": envs[0] if envs else {},
        "environments": envs,
        "entries": _entries(docs),
    }
    calibration = next((d["calibration"] for d in docs if d.get("calibration")), None)
    if calibration:
        merged["calibration"] = calibration
    for key in ("jobs", "not_predicted", "not_measured"):
        items = [j for d in docs for j in d.get(key, [])]
        if items:
            merged[key] = items
    return json.dumps(merged, indent=2, ensure_ascii=False) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(docs: list[dict], out: str | Path, force: bool = False) -> list[Path]:
    """Write a report in the format named by the suffix of ``out``.

    ``.html`` writes the HTML page and the Markdown report next to it (same name,
    ``.md``); ``.md`` writes only Markdown; ``.json`` writes one merged profile
    document (entries concatenated, the first document's ``environment`` and an
    ``environments`` list of all). Files are written atomically, parents created.

    Args:
        docs: Profile documents, as returned by
            :func:`edgesmith.profiles.profile.read_profile_document`.
        out: The output path; its suffix picks the format.
        force: Overwrite existing files.

    Returns:
        The paths written.

    Raises:
        UsageError: If the suffix is not ``.html``, ``.md`` or ``.json``.
        OutputExistsError: If a file to write exists and ``force`` is false.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    targets: list[tuple[Path, Callable[[list[dict]], str]]]
    if suffix == ".html":
        targets = [(out, render_html), (out.with_suffix(".md"), render_markdown)]
    elif suffix == ".md":
        targets = [(out, render_markdown)]
    elif suffix == ".json":
        targets = [(out, _render_json)]
    else:
        raise UsageError(f"cannot write a report to {out}: unknown suffix {suffix or '(none)'!r}",
                         hint="use .html (also writes .md), .md or .json")
    if not force:
        for path, _ in targets:
            if path.exists():
                raise OutputExistsError(f"{path} exists", hint="pass --force to overwrite it")
    rendered = [(path, render(docs)) for path, render in targets]  # render all before writing any
    for path, text in rendered:
        _write_atomic(path, text)
    return [path for path, _ in rendered]
