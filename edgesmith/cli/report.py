"""``edgesmith report``: profile documents into an HTML and Markdown report (registered by :mod:`edgesmith.cli`)."""

from __future__ import annotations

import click


@click.command()
@click.argument("profiles", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="report.html (+ report.md beside it), report.md or merged .json.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def report(profiles, out, force):
    """Write a self-contained HTML (and Markdown) report from profile documents.

    \b
    Example:
      edgesmith report profile.json -o report.html
    """
    from edgesmith import api as es

    for path in es.report(profiles, out, force=force):
        click.echo(f"wrote {path}")
