"""``edgesmith profile`` (registered by :mod:`edgesmith.cli`), and the profile tables ``run`` and ``demo`` print too."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgesmith.cli.common import Column, DataTable, console, emit_json, format_option, output_format, say
from edgesmith.cli.progressbar import progress
from edgesmith.units import format_bytes, format_duration, format_mib


def _lengths(ctx, param, value: str | None) -> tuple[int, ...] | None:
    """``128,512`` -> (128, 512); anything else is a usage error naming the value."""
    if value is None:
        return None
    try:
        lengths = tuple(int(x) for x in str(value).split(",") if x.strip())
    except ValueError:
        lengths = ()
    if not lengths or min(lengths) < 1:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of token counts (e.g. 128,512)")
    return lengths


@click.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path())
@click.option("-d", "--device", "device_names", multiple=True, default=("host",), show_default=True,
              help="Device: host (measured, with the host prediction beside it) or a catalog name "
                   "(predicted); repeat for several. See edgesmith devices list.")
@click.option("--device-file", "device_files", multiple=True, type=click.Path(dir_okay=False),
              help="Your own device file (YAML, as edgesmith devices show NAME --yaml prints); repeatable.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Write the profile document (JSON).")
@click.option("--force", is_flag=True, help="Overwrite --out.")
@click.option("--runs", default=100, show_default=True, help="Timed runs.")
@click.option("--warmup", default=10, show_default=True, help="Untimed warm-up runs.")
@click.option("--threads", default=0, help="Runtime threads (0 = runtime default).")
@click.option("--no-layers", is_flag=True, help="Skip the per-layer breakdown.")
@click.option("--recalibrate", is_flag=True, help="Measure the host calibration again instead of using the cache.")
@click.option("--compile", "compiled", is_flag=True,
              help="Run torch bundles under torch.compile (compiled during warm-up); other runtimes as they are.")
@click.option("--prompt-lengths", callback=_lengths,
              help="Generation bundles: prompt lengths in tokens (comma-separated) at which time to first token "
                   "and decode tokens/s are profiled.  [default: 128, or what the bundle's context holds]")
@click.option("--decode-tokens", default=32, show_default=True,
              help="Generation bundles: decode steps after the first token (greedy, end-of-sequence ignored).")
@click.option("--lm-runs", default=5, show_default=True,
              help="Generation bundles: timed generations per prompt length on host (medians shown).")
@click.option("--json", "as_json", is_flag=True, help="Print the profile document.")
@format_option
def profile(bundles, device_names, device_files, out, force, runs, warmup, threads, no_layers, recalibrate,
            compiled, prompt_lengths, decode_tokens, lm_runs, as_json):
    """Measure latency, memory and size of bundles here, or predict them on other devices.

    On host each bundle is measured (p50/p90/p99, per-layer time) and its host
    prediction is shown beside the measurement with the error. A GPU device that is
    here (the first CUDA GPU is that catalog device; cuda:0 names it whatever it is) is
    measured as well: torch bundles with PyTorch on CUDA (--compile: torch.compile),
    tensorrt bundles with their engine. On any other catalog device the latency is
    predicted from the graph's per-op FLOPs and bytes (a roofline calibrated on this
    machine), with an uncertainty band, and labelled predicted.

    A generation bundle (a language model exported with its KV cache) also gets its
    time to first token at each --prompt-lengths and its decode tokens/s: measured on
    host (with the host prediction and its error), predicted on the other devices
    (decode: weight and cache bytes per token over the bandwidth; prefill: the prompt's
    FLOPs over the peak; whichever bound is larger, plus per-node dispatch).

    \b
    Examples:
      edgesmith profile out/digits-cnn.onnx out/digits-cnn.torch -o profile.json
      edgesmith profile out/lsnet-t.onnx -d host -d jetson-orin-nano -d apple-a17-pro-ane
      edgesmith profile out/lsnet-t.torch -d nvidia-h100 --compile   # on an H100 machine
      edgesmith profile out/smollm2-135m.onnx -d host -d jetson-orin-nano --prompt-lengths 128,512
    """
    from edgesmith import api as es
    from edgesmith.bundle import check_writable

    if out:
        check_writable(Path(out), force)
    with progress(f"profiling {Path(bundles[0]).name}", total=runs) as bar:
        doc = es.profile(bundles, device=list(device_names), warmup=warmup, runs=runs, threads=threads,
                         layers=not no_layers,
                         progress=lambda b, n: bar.update(f"profiling {Path(b).name}", completed=n),
                         device_files=device_files, recalibrate=recalibrate, compiled=compiled,
                         prompt_lengths=prompt_lengths, decode_tokens=decode_tokens, lm_runs=lm_runs)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(doc, indent=2))
    if as_json:
        return emit_json(doc)
    profile_table(doc).show()
    if any(e.get("lm") for e in doc["entries"]):
        lm_table(doc).show()
    print_fpga_resources(doc)
    warn_not_predicted(doc)
    if out:
        say(f"wrote {out}")


def print_fpga_resources(doc: dict) -> None:
    """One line per hls entry: its predicted DSP/LUT/FF/BRAM against the device's part."""
    from edgesmith.profiles.fpga import latency_text, resources_text

    for e in doc["entries"]:
        res = (e.get("prediction") or {}).get("resources")
        if not res:
            continue
        fits = {True: "fits", False: "[red]does not fit[/]", None: "capacity unknown"}[res.get("fits")]
        # the table's latency is the golden batch's: say so beside the per-sample figure export printed
        latency = latency_text(res["latency_cycles"], res["clock_ns"], batch=e.get("batch", 1),
                               interval_cycles=res["interval_cycles"])
        console(stderr=output_format() in ("csv", "json")).print(
            f"{e['name']}.{e['target']} on {e['device']} ({res['part']}), predicted: "
            f"{resources_text(res, res.get('capacity'))}; "
            f"{fits}; latency {latency}")


def _band(pred: dict) -> str:
    """``155 ns (77.5-310)``: the point estimate and its band, the unit written once where they share it."""
    point, low, high = (format_duration(pred[k]) for k in ("latency_ms", "low_ms", "high_ms"))
    unit = point.rpartition(" ")[2]
    if low.endswith(" " + unit) and high.endswith(" " + unit):
        low, high = low.rpartition(" ")[0], high.rpartition(" ")[0]
    return f"{point} ({low}-{high})"


def warn_not_predicted(doc: dict) -> None:
    """Say on stderr which (bundle, device) pairs could not be predicted or measured, and why."""
    from rich.markup import escape

    for key in ("not_predicted", "not_measured"):
        for s in doc.get(key, []):
            console().print(f"[yellow]{key.replace('_', ' ')}:[/] {Path(s['bundle']).name} on {s['device']}: "
                            f"{escape(s['reason'])}")


def profile_table(doc: dict) -> DataTable:
    """A table of a profile document: measured and predicted entries, predictions and their error."""
    t = DataTable(Column("bundle", key=True), Column("device", key=True), Column("mode", wrap=True),
                  *(Column(col, "right") for col in ("p50", "p90", "predicted (band)", "error", "load",
                                                     "peak mem", "size")),
                  title="latency per device (measured: ran here; predicted: roofline from the device's figures; "
                        "peak mem: what loading and running the bundle adds to a fresh process)")
    for e in doc["entries"]:
        lat, pred = e["latency_ms"], e.get("prediction")
        label = f"{e['name']}.{e['target']}"
        band = _band(pred) if pred else "-"
        size = format_bytes(e["file_size_bytes"])
        error = f"{pred['error']:+.0%}" if pred and pred.get("error") is not None else "-"
        if e["mode"] == "predicted":
            # a device's process memory is not predicted (see Profile.peak_memory_mb)
            t.add_row(label, e["device"], "predicted", "-", "-", band, "-", "-", "-", size)
            continue
        mode = "measured" + (" (emulated: not a latency)" if e.get("timing") == "emulated" else "")
        t.add_row(label, e["device"], mode, format_duration(lat["p50"]), format_duration(lat["p90"]), band, error,
                  format_duration(e["load_time_ms"]), format_mib(e.get("peak_memory_mb")), size)
    return t



def lm_table(doc: dict) -> DataTable:
    """Time to first token and decode speed of the generation bundles, per device and prompt length."""
    t = DataTable(Column("bundle", key=True), Column("device", key=True), Column("mode"),
                  *(Column(col, "right") for col in ("prompt", "TTFT", "decode/token", "tokens/s",
                                                     "predicted TTFT", "predicted tokens/s", "error")),
                  title="language models: time to first token and decode tokens/s (measured: Generator here; "
                        "predicted: roofline of the prefill and decode steps on the device's figures)")
    for e in doc["entries"]:
        lm = e.get("lm")
        if not lm:
            continue
        label = f"{e['name']}.{e['target']}"
        predicted = {r["prompt_tokens"]: r for r in (lm.get("prediction") or {}).get("rows", [])}
        for row in lm["rows"]:
            p = predicted.get(row["prompt_tokens"])
            pred_ttft = f"{format_duration(p['ttft_ms'])} ({format_duration(p['ttft_low_ms'])}-" \
                        f"{format_duration(p['ttft_high_ms'])})" if p else "-"
            pred_tps = f"{_rate(p['tokens_per_s'])} ({_rate(p['tokens_per_s_low'])}-" \
                       f"{_rate(p['tokens_per_s_high'])})" if p else "-"
            if lm["mode"] == "predicted":
                t.add_row(label, e["device"], "predicted", str(row["prompt_tokens"]), "-", "-", "-", pred_ttft,
                          pred_tps, "-")
                continue
            error = "-"
            if p and p.get("ttft_error") is not None and p.get("decode_error") is not None:
                error = f"TTFT {p['ttft_error']:+.0%}, decode {p['decode_error']:+.0%}"
            tps = row.get("tokens_per_s")
            t.add_row(label, e["device"], "measured", str(row["prompt_tokens"]), format_duration(row["ttft_ms"]),
                      format_duration(row["decode_ms_per_token"]), _rate(tps) if tps else "-", pred_ttft,
                      pred_tps, error)
    return t


def _rate(value: float) -> str:
    """A rate with three significant digits, never in scientific notation: ``8,360``, ``36.9``."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
