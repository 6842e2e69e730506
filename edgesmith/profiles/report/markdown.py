"""Render profile documents as a Markdown report: the HTML report's numbers, as tables only.

Readable in a terminal and on GitHub; ``edgesmith report a.json -o report.md`` writes it,
and an HTML report is written with one beside it.
"""

from __future__ import annotations

from edgesmith.profiles.report import format as fmt
from edgesmith.profiles.report.devices import device_sections


def _md_text(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|").replace("<", "\\<")


def _md_code(text: str) -> str:
    # a code span shows names such as `a<b>` literally on GitHub and reads fine in a terminal
    text = text.replace("\n", " ").replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _md_table(columns: list[tuple[str, bool]], rows: list[list[fmt.Cell]], code: int = -1) -> str:
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
    entries = fmt.entries_of(docs)
    out = [f"# {fmt.TITLE}", "", fmt.intro(docs, entries), ""]
    for heading, rows in fmt.environments(docs):
        table = _md_table(fmt.ENV, [list(r) for r in rows]) if rows else "No environment recorded."
        out += [f"## {_md_text(heading)}", "", table, ""]
    if not entries:
        return "\n".join(out + ["No entries: the profile documents are empty.", ""])
    summary = _md_table(fmt.SUMMARY, [fmt.summary_row(e) for e in entries], code=0)
    out += ["## Summary", "", _md_text(fmt.MEMORY_NOTE), "", summary, ""]
    for section in device_sections(docs, entries, fmt.use_log_axis(entries)):
        out += [f"## {_md_text(section.heading)}", ""]
        out += [x for note in section.notes for x in (_md_text(note), "")]
        out += [_md_table(section.columns, section.rows, code=0), ""]
    with_parity = [e for e in entries if e.get("parity")]
    if with_parity:
        out += ["## Parity", "", fmt.TIERS_NOTE, "",
                _md_table(fmt.PARITY, [fmt.parity_row(e) for e in with_parity], code=0), ""]
    timed = [e for e in entries if not fmt.is_prediction(e)]
    if timed:
        out += ["## Latency", "", _md_table(fmt.LATENCY, [fmt.latency_row(e) for e in timed], code=0), ""]
    out += ["## Per-layer breakdown", ""]
    for e in entries:
        if e.get("layers"):
            rows = [[str(i + 1) if not other else "", name, ops, fmt.sig(ms), f"{share:.1%}"]
                    for i, (name, ops, ms, share, other) in enumerate(fmt.top_layers(e["layers"]))]
            out += [f"### {_md_code(fmt.label(e))}{' (predicted)' if e.get('mode') == 'predicted' else ''}", "",
                    _md_table(fmt.LAYERS, rows, 1), ""]
    bare = [_md_code(fmt.label(e)) for e in entries if not e.get("layers")]
    if bare:
        out += [f"No per-layer breakdown for: {', '.join(bare)}.", ""]
    return "\n".join(out)
