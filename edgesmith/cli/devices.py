"""``edgesmith devices``: the device catalog on the command line (registered by :mod:`edgesmith.cli`)."""

from __future__ import annotations

import click

from edgesmith.cli.common import Column, DataTable, emit_json, format_option, say
from edgesmith.cli.progressbar import progress


@click.group()
def devices():
    """Devices to profile on or predict for (catalog + host + --device-file).

    \b
    Example:
      edgesmith devices list
    """


_device_file_option = click.option(
    "--device-file", "device_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
    help="A YAML device file of your own (same format as edgesmith devices show NAME --yaml); repeatable.")


@devices.command("list")
@_device_file_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@format_option
def devices_list(device_files, as_json):
    """List the devices: the host, the catalog, and any --device-file.

    \b
    Example:
      edgesmith devices list --device-file my-board.yaml
    """
    from edgesmith import api as es

    rows = es.devices(device_files)
    if as_json:
        return emit_json([d.to_dict() for d in rows])
    t = DataTable(Column("device", key=True), "kind", Column("peak TFLOP/s (TOPS int)", wrap=True),
                  *(Column(c, "right") for c in ("GB/s", "GB", "W")), Column("targets", wrap=True))
    for d in rows:
        peaks = ", ".join(f"{k} {v:g}" for k, v in d.peak_tflops.items()) or "measured here"
        t.add_row(d.name, d.kind, peaks, _opt(d.memory_bandwidth_gbs), _opt(d.memory_gb), _opt(d.power_w),
                  ", ".join(d.targets))
    t.show()


def _opt(value) -> str:
    return "-" if value is None else f"{value:g}"


@devices.command("show")
@click.argument("name")
@_device_file_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--yaml", "as_yaml", is_flag=True, help="Print the device file (a template for your own).")
def devices_show(name, device_files, as_json, as_yaml):
    """Show one device's figures and their sources.

    \b
    Examples:
      edgesmith devices show jetson-orin-nano
      edgesmith devices show jetson-orin-nano --yaml > my-board.yaml
    """
    from edgesmith import api as es

    data = es.device(name, device_files).to_dict()
    origin = data.pop("origin")
    if as_json:
        return emit_json({**data, "origin": origin})
    if as_yaml:
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False, width=100), nl=False)
        return
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:g}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = "\n  " + "\n  ".join(value) if key == "sources" else ", ".join(value)
        click.echo(f"{key}: {'-' if value is None else value}")
    click.echo(f"file: {origin or 'detected at run time'}")


@devices.command("calibrate")
@click.option("--threads", default=0, help="ONNX Runtime threads the calibration applies to (0 = runtime default).")
@click.option("--refresh", is_flag=True, help="Measure again even when a cached calibration exists.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with every suite op's timing).")
@format_option
def devices_calibrate(threads, refresh, as_json):
    """Measure (or show the cached) host calibration the latency predictor uses.

    A suite of one-op ONNX graphs sized like the zoo models' layers runs in ONNX
    Runtime; the host's GEMM peak, memory bandwidth, per-op-class efficiencies and
    overheads come from their kernel times. Cached per machine, ONNX Runtime version
    and thread count in $EDGESMITH_CACHE (default ~/.cache/edgesmith).

    \b
    Example:
      edgesmith devices calibrate --refresh
    """
    from edgesmith.profiles.calibrate import host_calibration
    from edgesmith.profiles.roofline import EFFICIENCY_MEANING

    with progress("calibrating the host (a few seconds)"):
        cal = host_calibration(threads, refresh=refresh)
    if as_json:
        return emit_json(cal.to_dict())
    say(f"host: {cal.machine.get('cpu', '?')}, {cal.machine.get('cores_usable', '?')} cores, "
        f"onnxruntime {cal.machine.get('onnxruntime', '?')}, threads {cal.threads or 'default'}")
    say(f"GEMM peak {cal.peak_gflops:.1f} GFLOP/s, bandwidth {cal.bandwidth_gbs:.1f} GB/s, "
        f"{cal.op_overhead_us:.2f} us per node, kernel floor {cal.kernel_floor_us:.1f} us, "
        f"{cal.run_overhead_us:.1f} us per run; suite median error {cal.spread:.0%}")
    t = DataTable(Column("class", key=True), Column("roofline / measured", justify="right"),
                  title=EFFICIENCY_MEANING)
    for cls, eff in cal.efficiency.items():
        t.add_row(cls, f"{eff:.2f}")
    t.show()
