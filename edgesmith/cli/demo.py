"""``edgesmith demo``: the demo recipe's pipeline on the digits models (registered by :mod:`edgesmith.cli`)."""

from __future__ import annotations

import click

from edgesmith.cli.common import console, emit_json, format_option
from edgesmith.cli.progressbar import progress
from edgesmith.cli.run import show_pipeline_results


@click.command()
@click.option("-o", "--out", default="edgesmith-demo", show_default=True, type=click.Path(file_okay=False),
              help="Output directory (the demo's own; reused on re-runs).")
@click.option("--runs", default=200, show_default=True, help="Timed runs per bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@format_option
def demo(out, runs, as_json):
    """Run zoo:digits-cnn and its reparam variant through export, verify, profile and report.

    The same pipeline as 'edgesmith run examples/demo.yaml': both variants go to ONNX
    and torch (parity checked), are measured on this machine and predicted on a Jetson
    Orin Nano, an Apple A17 Pro Neural Engine and a Raspberry Pi 5, into one report.

    \b
    Example:
      edgesmith demo -o edgesmith-demo
    """
    from edgesmith.pipeline.demo import run_demo

    messages = console()
    with progress("demo") as status:
        result = run_demo(out, runs=runs, step=status.update)
    if as_json:
        emit_json({"bundles": result["bundles"], "report": result["report"], "profile": result["profile"],
                   "parity": {k: v.to_dict() for k, v in result["parity"].items()}})
        return
    show_pipeline_results(result["parity"], result["doc"])
    messages.print(f"[bold]report:[/] {result['report'][0]}")
