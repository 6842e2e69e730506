"""Output helpers shared by the command-line modules."""

from __future__ import annotations

import json
import sys

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
