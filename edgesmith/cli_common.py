"""Output helpers shared by the command-line modules."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


def console(stderr: bool = True):
    """A rich console on stderr (messages) or stdout (tables)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # piped output (logs, scripts) gets room for whole tables instead of rich's 80 columns
    width = None if stream.isatty() else 120
    return Console(stderr=stderr, highlight=False, width=width)


def emit_json(data) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


def parity_row(table, name, result) -> None:
    """Add a bundle's parity result as a row of :func:`parity_table`."""
    from edgesmith.parity import format_snr

    w = result.worst
    top1 = "—" if w is None or w.top1_agreement is None else f"{w.top1_agreement:.1%}"
    status = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
    table.add_row(Path(name).name, result.tier, result.precision, f"{w.max_abs:.3g}" if w else "—",
                  format_snr(w.snr_db) if w else "—", top1, status)


def parity_table():
    """A rich table for parity results (bundle, tier, precision, max_abs, SNR, top-1, result)."""
    from rich.table import Table

    t = Table(title="parity")
    for col in ("bundle", "tier", "precision", "max_abs", "SNR", "top-1", "result"):
        t.add_column(col, justify="right" if col in ("max_abs", "SNR", "top-1") else "left",
                     overflow="fold", min_width=22 if col == "bundle" else None)
    return t
