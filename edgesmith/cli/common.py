"""Output helpers shared by the command-line modules: consoles, ``--format`` and tables.

Every data command renders its tables through :class:`DataTable`, so ``--format
table|plain|csv|json`` means the same everywhere and a bundle, device or model name
is never broken across lines, whatever the width.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import os
import sys
from pathlib import Path

import click

FORMATS = ("table", "plain", "csv", "json")
_FORMAT_KEY = "edgesmith.format"


def width_for(stream) -> int | None:
    """The width to render for: the terminal's, else ``$COLUMNS``, else 80.

    Args:
        stream: The stream the output goes to.

    Returns:
        None for a terminal (rich asks it), else a number of columns.
    """
    if stream.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else 80


def console(stderr: bool = True):
    """A rich console on stderr (messages) or stdout (tables).

    Args:
        stderr: Messages and progress (True) or data (False).

    Returns:
        A :class:`rich.console.Console` as wide as :func:`width_for` says.
    """
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # a line in a log is one line: only tables are fitted to the width when piped, text is not wrapped
    return Console(stderr=stderr, highlight=False, width=width_for(stream), soft_wrap=not stream.isatty())


def format_option(command):
    """Add ``--format table|plain|csv|json`` to a command that has ``--json`` (``as_json``).

    ``--format json`` sets ``as_json`` (the command's own JSON document, unchanged); the
    other formats are kept for :meth:`DataTable.show`. Put it below ``@click.command``.

    Args:
        command: The command's callback, with an ``as_json`` parameter.

    Returns:
        The callback with the option added.
    """

    @functools.wraps(command)
    def with_format(*args, output_format=None, **kwargs):
        if output_format == "json":
            kwargs["as_json"] = True
        fmt = "json" if kwargs.get("as_json") else output_format or "table"
        click.get_current_context().meta[_FORMAT_KEY] = fmt
        return command(*args, **kwargs)

    return click.option(
        "--format", "output_format", type=click.Choice(FORMATS),
        help="table: fitted to the terminal (80 columns when piped, or $COLUMNS), names kept whole; "
             "plain: aligned text, never wrapped; csv; json: the same as --json. [table]")(with_format)


def output_format() -> str:
    """The ``--format`` of the running command (``table`` outside one)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(_FORMAT_KEY, "table") if ctx else "table"


def say(message: str) -> None:
    """A line for the reader beside the data (``wrote FILE``): stdout, or stderr under ``--format csv``."""
    click.echo(message, err=output_format() in ("csv", "json"))


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a :class:`DataTable`.

    Attributes:
        name: The header.
        justify: ``left`` or ``right`` (numbers).
        key: A name (bundle, device, model): the first thing shown of a row that cannot have columns.
        wrap: Prose that may wrap at spaces (a summary, a list); other cells are never broken.
    """

    name: str
    justify: str = "left"
    key: bool = False
    wrap: bool = False


class DataTable:
    """Rows under named columns, rendered as ``--format`` asks.

    Cells are strings and may hold rich markup (``[green]PASS[/]``); plain and csv drop it.
    In ``table`` format a cell is never broken (a ``wrap`` column's prose wraps at spaces);
    when the columns cannot fit the width that way, each row becomes a block instead: its
    key cells on one line, the other columns as ``name: value`` pairs below.

    Args:
        columns: :class:`Column` or header strings (left-justified, not keys).
        title: Shown above the table (table and plain formats).
    """

    def __init__(self, *columns: Column | str, title: str | None = None):
        self.columns = [c if isinstance(c, Column) else Column(c) for c in columns]
        self.title = title
        self.rows: list[list[str]] = []

    def add_row(self, *cells: str) -> None:
        """Append a row, one cell per column."""
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([str(c) for c in cells])

    def show(self, fmt: str | None = None, stderr: bool = False) -> None:
        """Print the table on stdout (or stderr) in ``fmt`` (default: the command's ``--format``)."""
        fmt = fmt or output_format()
        stream = sys.stderr if stderr else sys.stdout
        if fmt == "table" and stream.isatty():
            self._print_table(console(stderr))  # with colours
        else:
            click.echo(self.render(fmt, width_for(stream)), nl=False, err=stderr)

    def render(self, fmt: str = "table", width: int = 80) -> str:
        """The table as text, without colours.

        Args:
            fmt: ``table``, ``plain``, ``csv`` or ``json`` (a list of objects, markup dropped).
            width: Columns to fit (``table``).

        Returns:
            The text, ending in a newline.
        """
        if fmt == "csv":
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow([c.name for c in self.columns])
            writer.writerows([[_plain(v) for v in row] for row in self.rows])
            return buf.getvalue()
        if fmt == "json":
            return json.dumps([{c.name: _plain(v) for c, v in zip(self.columns, row)} for row in self.rows],
                              indent=2) + "\n"
        if fmt == "plain":
            return self._plain_text()
        from rich.console import Console

        con = Console(width=width, highlight=False, file=io.StringIO(), color_system=None, soft_wrap=True)
        self._print_table(con)
        return "\n".join(line.rstrip() for line in con.file.getvalue().splitlines()) + "\n"

    def _plain_text(self) -> str:
        cells = [[c.name for c in self.columns], *[[_plain(v) for v in row] for row in self.rows]]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        lines = [self.title] if self.title else []
        for r in cells:
            parts = [v.rjust(w) if c.justify == "right" else v.ljust(w) for c, v, w in zip(self.columns, r, widths)]
            lines.append("  ".join(parts).rstrip())
        return "\n".join(lines) + "\n"

    def min_width(self) -> int:
        """The narrowest the table can be drawn without breaking a cell (a wrap column: a word)."""
        total = 0
        for i, c in enumerate(self.columns):
            cells = [_plain(row[i]) for row in self.rows]
            if c.wrap:
                total += max(len(w) for v in [c.name, *cells] for w in v.split() or [""])
            else:
                total += max(len(v) for v in [c.name, *cells])
        return total + 2 * len(self.columns) - 1  # a space of padding and a column rule between columns

    def _print_table(self, con) -> None:
        from rich import box
        from rich.table import Table

        if self.min_width() > con.width:
            return self._print_blocks(con)
        table = Table(title=self.title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                      padding=(0, 1, 0, 0))
        for c in self.columns:
            table.add_column(c.name, justify=c.justify, no_wrap=not c.wrap, overflow="fold")
        for row in self.rows:
            table.add_row(*row)
        con.print(table)
        return None

    def _print_blocks(self, con) -> None:
        """Too narrow for columns: a block per row, its names whole on the first line."""
        from rich.text import Text

        if self.title:
            con.print(self.title, soft_wrap=False)
        keys = [i for i, c in enumerate(self.columns) if c.key] or [0]
        for row in self.rows:
            con.print(Text.from_markup("  ".join(row[i] for i in keys), style="bold"), crop=False)
            pairs = [f"{c.name}: {v}" for i, (c, v) in enumerate(zip(self.columns, row))
                     if i not in keys and _plain(v) not in ("", "-", "—")]
            line = ""
            for pair in pairs:  # pack whole pairs into lines: a value is never split from its name
                candidate = f"{line}, {pair}" if line else pair
                if line and 2 + len(_plain(candidate)) > con.width:
                    con.print(Text.from_markup("  " + line + ","), crop=False)
                    candidate = pair
                line = candidate
            if line:
                con.print(Text.from_markup("  " + line), crop=False)


def _plain(cell: str) -> str:
    from rich.text import Text

    return Text.from_markup(cell).plain


def emit_json(data) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


def parity_row(table: DataTable, name, result) -> None:
    """Add a bundle's parity result as a row of :func:`parity_table`."""
    from edgesmith.parity import format_snr

    w = result.worst
    top1 = "—" if w is None or w.top1_agreement is None else f"{w.top1_agreement:.1%}"
    status = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
    table.add_row(Path(name).name, result.tier, result.precision, f"{w.max_abs:.3g}" if w else "—",
                  format_snr(w.snr_db) if w else "—", top1, status)


def parity_table() -> DataTable:
    """A table for parity results (bundle, tier, precision, max_abs, SNR, top-1, result)."""
    return DataTable(Column("bundle", key=True), "tier", "precision", Column("max_abs", "right"),
                     Column("SNR", "right"), Column("top-1", "right"), "result", title="parity")
