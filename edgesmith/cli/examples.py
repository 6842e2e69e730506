"""``edgesmith examples``: the example recipes and data, copied to any folder (registered by :mod:`edgesmith.cli`)."""

from __future__ import annotations

import click

from edgesmith.cli.common import Column, DataTable, emit_json, format_option


@click.group()
def examples():
    """The example recipes and data the README uses, shipped with edgesmith.

    \b
    Example:
      edgesmith examples copy examples
      edgesmith run examples/demo.yaml --check
    """


@examples.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@format_option
def examples_list(as_json):
    """List the examples that 'edgesmith examples copy' writes.

    \b
    Example:
      edgesmith examples list
    """
    from edgesmith.examples import examples as shipped

    found = shipped()
    if as_json:
        return emit_json(found)
    t = DataTable(Column("file", key=True), Column("what", wrap=True))
    for name, about in found.items():
        t.add_row(name, about)
    t.show()
    return None


@examples.command("copy")
@click.argument("dest", default="examples", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite files that exist in DEST.")
def examples_copy(dest, force):
    """Copy the example recipes into DEST (default: ./examples) and write digits.npz there.

    The README's commands then run from the folder that holds DEST.

    \b
    Example:
      edgesmith examples copy examples
      edgesmith run examples/demo.yaml -o demo-out
    """
    from edgesmith.examples import copy_examples

    for path in copy_examples(dest, force=force):
        click.echo(f"wrote {path}")
