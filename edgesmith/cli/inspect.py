"""``edgesmith inspect``: a model's size, signature, FLOPs and ops (registered by :mod:`edgesmith.cli`)."""

from __future__ import annotations

import click

from edgesmith.cli.common import Column, DataTable, console, emit_json, format_option
from edgesmith.cli.optimize import pass_summary
from edgesmith.cli.options import load_model, model_options
from edgesmith.cli.progressbar import progress


@click.command()
@click.argument("model")
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@format_option
def inspect(model, inputs, weights, gguf, seq_len, as_json):
    """Show a model's parameters, size, signature, FLOPs and op histogram.

    \b
    Example:
      edgesmith inspect zoo:digits-cnn
      edgesmith inspect py:mypkg.nets:build --weights net.pt --input x:1x3x32x32
    """
    from edgesmith import api as es

    variant = load_model(model, inputs, weights, gguf, seq_len)
    with progress("counting FLOPs and ops"):
        info = es.inspect(variant)
    if as_json:
        return emit_json(info)
    from edgesmith.specs import TensorSpec
    from edgesmith.units import format_bytes

    c = console(stderr=False)
    flops = "n/a (ONNX source)" if info["flops"] is None else f"{info['flops'] / 1e6:.2f} MFLOPs"
    c.print(f"[bold]{info['name']}[/] ({info['task']}) from {info['source'].get('reference')}")
    c.print(f"params {info['params']:,}  size {format_bytes(info['size_bytes'])}  {flops} per forward")
    for kind in ("inputs", "outputs"):
        c.print(f"{kind}: " + "; ".join(TensorSpec.from_dict(s).describe() for s in info[kind]))
    for p in info.get("passes") or []:  # what a .pt2 remembers having been done to it
        c.print(f"pass {p['name']}: {pass_summary(p['name'], p.get('report') or {})}")
    t = DataTable(Column("op", key=True), Column("count", "right"), title="op histogram")
    for op, n in info["ops"].items():
        t.add_row(op, str(n))
    t.show()
    for note in info["notes"]:
        c.print(f"[yellow]note:[/] {note}")
    return None
