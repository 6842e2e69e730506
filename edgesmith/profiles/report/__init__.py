"""Profile reports: Markdown, a self-contained HTML page, or merged JSON, picked by the file's suffix.

``edgesmith report a.json b.json -o report.html`` merges the entries of every
document into one report: the environment each was measured in, a summary table
(latency percentiles, throughput, load time, memory, size, parity with its tier),
the latency distribution of every entry and the slowest layers of each.
The package, by job:

- :mod:`~edgesmith.profiles.report.format`: number formatting and the table rows both formats share;
- :mod:`~edgesmith.profiles.report.devices`: the cross-device sections (latency per device, Pareto, ...);
- :mod:`~edgesmith.profiles.report.markdown` and :mod:`~edgesmith.profiles.report.html`: the renderers;
- :mod:`~edgesmith.profiles.report.svg`: the inline plots of the HTML;
- here: :func:`write_report`, which writes the files.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from edgesmith.errors import OutputExistsError, UsageError
from edgesmith.profiles.profile import PROFILE_SCHEMA_VERSION
from edgesmith.profiles.report.format import entries_of
from edgesmith.profiles.report.html import render_html
from edgesmith.profiles.report.markdown import render_markdown


def _render_json(docs: list[dict]) -> str:
    envs = [d.get("environment") or {} for d in docs]
    merged = {
        "schema_version": PROFILE_SCHEMA_VERSION,
        "kind": "edgesmith.profile",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": envs[0] if envs else {},
        "environments": envs,
        "entries": entries_of(docs),
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
