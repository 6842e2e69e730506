"""``edgesmith devices``: the device catalog on the command line (registered by :mod:`edgesmith.cli`)."""

from __future__ import annotations

import click

from edgesmith.cli_common import console, emit_json


@click.group()
def devices():
    """Devices to profile on or predict for (catalog + host + --device-file).

    \b
    Example:
      edgesmith devices list
    """


_device_file_option = click.option(
    "--device-file", "device_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
    help="A YAML device file of your own (same format as `edgesmith devices show NAME --yaml`); repeatable.")


@devices.command("list")
@_device_file_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
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
    from rich.table import Table

    t = Table("device", "kind", "peak TFLOP/s (TOPS int)", "GB/s", "GB", "W", "targets")
    for d in rows:
        peaks = ", ".join(f"{k} {v:g}" for k, v in d.peak_tflops.items()) or "measured here"
        t.add_row(d.name, d.kind, peaks, _opt(d.memory_bandwidth_gbs), _opt(d.memory_gb), _opt(d.power_w),
                  ", ".join(d.targets))
    console(stderr=False).print(t)


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
