"""What ``edgesmith optimize`` prints after the passes: each pass's report, and a search's front as a table."""

from __future__ import annotations

import json

import click

from edgesmith.cli_common import console


def print_pass_reports(passes: list[dict]) -> None:
    """One line per pass (its report as JSON, without long histories and tables), then any search front."""
    for p in passes:
        report = {k: v for k, v in p["report"].items() if k not in ("history", "search")}
        click.echo(f"{p['name']}: {json.dumps(report)} ({p['seconds']} s)")
        if "search" in p["report"]:
            print_front(p["report"]["search"])


def print_front(search: dict) -> None:
    """The Mix'n'Match candidates no other beats on cost and loss, and the one chosen."""
    from rich.table import Table

    latency = "latency_ms" in search["chosen"]
    table = Table(title=f"Mix'n'Match front ({search['evaluated']} candidates scored, {search['budget']})")
    for column in ("candidate", "parameters", *(["latency ms"] if latency else []), "calibration loss", "fits"):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for row in search["front"]:
        cells = [row["how"], f"{row['params']:,}"]
        if latency:
            cells.append(f"{row['latency_ms']:.3f} ({row['latency_mode']})")
        cells += [f"{row['loss']:.4f}", "yes" if row["within_budget"] else "no"]
        table.add_row(*cells)
    console().print(table)
    chosen = search["chosen"]
    took = f", {chosen['latency_ms']:.3f} ms {chosen['latency_mode']}" if latency else ""
    click.echo(f"chosen: {chosen['how']}, {chosen['params']:,} parameters{took}, calibration loss {chosen['loss']:.4f}, "
               f"widths {'/'.join(map(str, chosen['widths']))}")
