"""``edgesmith build-engine``: complete a tensorrt bundle on the machine that will run it (registered by
:mod:`edgesmith.cli`)."""

from __future__ import annotations

import click

from edgesmith.cli.common import emit_json, format_option, parity_row, parity_table
from edgesmith.cli.progressbar import progress


@click.command("build-engine")
@click.argument("bundle", type=click.Path())
@click.option("--force", is_flag=True, help="Rebuild an engine the bundle already has.")
@click.option("--timing-cache", type=click.Path(dir_okay=False),
              help="TensorRT timing cache file, read and updated [$EDGESMITH_CACHE/tensorrt/timing.cache].")
@click.option("--runs", default=100, show_default=True, help="Timed runs of the engine.")
@click.option("--warmup", default=10, show_default=True, help="Untimed runs first.")
@click.option("--json", "as_json", is_flag=True, help="Print the engine record, parity and latency as JSON.")
@format_option
def build_engine(bundle, force, timing_cache, runs, warmup, as_json):
    """Build a tensorrt bundle's engine here, check its parity and measure it, in the bundle.

    A tensorrt bundle exported without TensorRT or a GPU is tier structural: it holds
    the TensorRT-ready model.onnx and the options to build it with. Run this on the
    target machine (a Jetson, a GPU server, with TensorRT): it builds model.engine,
    runs the golden inputs through it (parity, tier verified), times it, and records all
    three in the manifest. The bundle is replaced only if the engine passes parity.
    Exit code 5 where TensorRT or an NVIDIA GPU is missing.

    \b
    Example:
      edgesmith build-engine out/lsnet-t.tensorrt
    """
    from edgesmith import api as es

    with progress("building the engine") as status:
        done, parity, profile = es.build_engine(bundle, force=force, timing_cache=timing_cache, runs=runs,
                                                warmup=warmup, step=status.update)
    engine = done.manifest.details["tensorrt"]["engine"]
    if as_json:
        return emit_json({"bundle": str(done.path), "engine": engine, "parity": parity.to_dict(),
                          "profile": profile.to_dict()})
    table = parity_table()
    parity_row(table, str(done.path), parity)
    table.show()
    lat = profile.latency_ms
    click.echo(f"engine: TensorRT {engine['tensorrt']} on {engine['gpu']} (compute capability "
               f"{engine['compute_capability']}), {engine['precision']}, built in {engine['build_s']:.1f} s")
    click.echo(f"latency on {profile.device}: p50 {lat.p50:.3f} ms, p90 {lat.p90:.3f} ms ({runs} runs, measured)")
    return None

