"""Render profile documents as one self-contained HTML page: tables and inline SVG plots.

The page needs no network: styles, the small self-check script and the plots (inline SVG,
see :mod:`edgesmith.profiles.report.svg`) are all in the one file, and every string from
the data is escaped.
"""

from __future__ import annotations

import html
from typing import Any

from edgesmith.profiles.report import format as fmt
from edgesmith.profiles.report import svg
from edgesmith.profiles.report.devices import Section, device_sections

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


def _html_table(columns: list[tuple[str, bool]], rows: list[list[fmt.Cell]]) -> str:
    def cell(tag: str, c: fmt.Cell, num: bool) -> str:
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
    out = ['<section id="summary">', "<h2>Summary</h2>", _note(fmt.MEMORY_NOTE),
           _html_table(fmt.SUMMARY, [fmt.summary_row(e) for e in entries]), "</section>"]
    plots = 0
    for section in device_sections(docs, entries, fmt.use_log_axis(entries)):
        out.append(_html_section(section))
        plots += len(section.plots)
    with_parity = [e for e in entries if e.get("parity")]
    if with_parity:
        out += ["<h2>Parity</h2>", _note(fmt.TIERS_NOTE),
                _html_table(fmt.PARITY, [fmt.parity_row(e) for e in with_parity])]
    out.append("<h2>Latency</h2>")
    timed = [e for e in entries if e.get("samples_ms")]
    if timed:
        log = fmt.use_log_axis(entries)
        out.append(svg.latency_plot([(fmt.label(e), e["samples_ms"]) for e in timed], log=log))
        plots += 1
    untimed = [fmt.label(e) for e in entries if not e.get("samples_ms") and not fmt.is_prediction(e)]
    if untimed:
        out.append(_note(f"No timed samples for: {', '.join(untimed)}."))
    if any(fmt.is_prediction(e) for e in entries):
        out.append(_note("Predicted entries have no samples: see Latency per device for their bands."))
    out.append(_html_table(fmt.LATENCY, [fmt.latency_row(e) for e in entries if not fmt.is_prediction(e)]))
    out.append("<h2>Per-layer breakdown</h2>")
    for e in entries:
        if not e.get("layers"):
            continue
        name = fmt.label(e) + (" (predicted)" if e.get("mode") == "predicted" else "")
        bars = [svg.Bar(label, ms, f"{fmt.sig(ms)} ms · {share:.1%}", ops, other)
                for label, ops, ms, share, other in fmt.top_layers(e["layers"])]
        out.append(f"<h3>{html.escape(name)}</h3>")
        out.append(svg.bar_plot(bars, title=f"Slowest layers: {name}", y_label="layer",
                                x_label="mean time per inference (ms)"))
        plots += 1
    bare = [fmt.label(e) for e in entries if not e.get("layers")]
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
    entries = fmt.entries_of(docs)
    body = [f"<h1>{html.escape(fmt.TITLE)}</h1>", _note(fmt.intro(docs, entries))]
    for heading, rows in fmt.environments(docs):
        table = _html_table(fmt.ENV, [list(r) for r in rows]) if rows else None
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
        f"<title>{html.escape(fmt.TITLE)}</title>", f"<style>{_CSS}</style>",
        f"<script>{_SCRIPT}</script>", "</head>",
        f'<body data-plots="{plots}">', '<pre id="es-errors"></pre>',
        *body, "</body>", "</html>", "",
    ])
