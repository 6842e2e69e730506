"""The listing commands: ``models list``, ``passes list``, ``targets list`` (registered by :mod:`edgesmith.cli`)."""

from __future__ import annotations

import click

from edgesmith.cli.common import Column, DataTable, emit_json, format_option, say
from edgesmith.cli.progressbar import progress


@click.group()
def models():
    """Built-in models (zoo:NAME).

    \b
    Example:
      edgesmith models list
    """


@models.command("list")
@click.argument("patterns", nargs=-1)
@click.option("--details", is_flag=True,
              help="Count parameters and MACs (batch 1; backbones at 224x224, 1000 classes) beside the paper's figures.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@format_option
def models_list(patterns, details, as_json):
    """List the built-in models, or those matching PATTERNS (zoo:NAME; backbones take
    options: zoo:NAME:key=value,...).

    \b
    Examples:
      edgesmith models list
      edgesmith models list --details 'lsnet-*' 'efficientformer-*'
      edgesmith inspect zoo:lsnet-t:num_classes=10,image_size=96
    """
    from edgesmith import api as es

    with progress("counting parameters and MACs") as status:
        rows = es.models(patterns, details=details, progress=lambda n: status.update(f"counting {n}"))
    if as_json:
        return emit_json(rows)
    name = Column("model", key=True)
    t = DataTable(name, "task", Column("summary", wrap=True)) if not details else DataTable(
        name, "task", Column("params", "right"), Column("paper params", "right", wrap=True), Column("MACs", "right"),
        Column("paper MACs", "right", wrap=True), "input")
    for r in rows:
        if not details:
            t.add_row(r["name"], r["task"], r["summary"])
            continue
        mark = "*" if r["params_as_paper"] != r["params"] else ""
        t.add_row(r["name"], r["task"], _millions(r["params_as_paper"]) + mark,
                  _vs_paper(r["params_as_paper"], r["paper_params"]),
                  _giga(r["macs"]), _vs_paper(r["macs"], r["paper_macs"], giga=True), r["input"])
    t.show()
    if any(r.get("params_as_paper", 0) != r.get("params", 0) for r in rows):
        say("* counted as the paper counts (BatchNorm, LayerScale and bias tables left out); "
            "--json has every parameter as params")
    if any(r.get("options") for r in rows):
        say("options of the backbones: " + ", ".join(next(r["options"] for r in rows if r["options"])))


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _giga(n: int) -> str:
    return f"{n / 1e9:.3f}G"


def _vs_paper(ours: int, paper: int | None, giga: bool = False) -> str:
    if paper is None:
        return "-"
    figure = f"{paper / 1e9:g}G" if giga else f"{paper / 1e6:g}M"
    return f"{figure} ({(ours - paper) / paper:+.1%})"


@click.group()
def passes():
    """Optimization passes (-p NAME:key=value).

    \b
    Example:
      edgesmith passes list
    """


@passes.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@format_option
def passes_list(as_json):
    """List passes and their options.

    \b
    Example:
      edgesmith passes list
    """
    from edgesmith.optimize import PASSES

    _list_with_options(PASSES, as_json, lambda cls: {"summary": (cls.__doc__ or "").strip().splitlines()[0]})


@click.group()
def targets():
    """Export targets (--target NAME, -O key=value).

    \b
    Example:
      edgesmith targets list
    """


@targets.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@format_option
def targets_list(as_json):
    """List export targets, their runtimes and options.

    \b
    Example:
      edgesmith targets list
    """
    from edgesmith.export import EXPORTERS

    _list_with_options(EXPORTERS, as_json, lambda cls: {"runtime": cls.runtime, "precision": cls().precision})


def _list_with_options(registry, as_json: bool, describe) -> None:
    """Print a registry's entries with their options (``passes list``, ``targets list``)."""
    from edgesmith.options import describe_options

    rows = [{"name": n, **describe(registry.get(n)),
             "options": [dict(zip(("name", "type", "default"), o)) for o in describe_options(registry.get(n).Options)]}
            for n in registry.names()]
    if as_json:
        return emit_json(rows)
    about = [k for k in (rows[0] if rows else {}) if k not in ("name", "options")]
    table = DataTable(Column("name", key=True), *(Column(k, wrap=True) for k in about), Column("options", wrap=True))
    for r in rows:
        opts = ", ".join(f"{o['name']}={o['default']} ({o['type']})" for o in r["options"]) or "no options"
        table.add_row(r["name"], *(str(r[k]) for k in about), opts)
    table.show()
