"""``edgesmith sweep``: variants x targets x devices in parallel (registered by :mod:`edgesmith.cli`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgesmith.cli.common import Column, DataTable, console, emit_json, format_option, say
from edgesmith.cli.progressbar import progress


@click.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("-m", "--model", "models", multiple=True, metavar="MODEL", help="A MODEL reference; repeatable.")
@click.option("-p", "--passes", "pass_sets", multiple=True, metavar="PASS[+PASS...]",
              help="One variant's passes joined by '+' ('none' for the model as loaded); repeatable.")
@click.option("-t", "--target", "targets", multiple=True, help="Export target; repeatable (default: onnx).")
@click.option("-d", "--device", "devices", multiple=True,
              help="Device: host (measured) or a catalog name (predicted); repeatable (default: host).")
@click.option("--device-file", "device_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Your own device file (YAML); repeatable.")
@click.option("--data", type=click.Path(exists=True), help="Dataset for passes that need one (distill).")
@click.option("-o", "--out", default="sweep-out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the bundles, profile.json and report.html (with Ray: reachable by every worker).")
@click.option("--workers", type=int, help="Local worker processes (default: one per core, at most one per job).")
@click.option("--ray-address", metavar="ADDRESS",
              help="Run the jobs on Ray: 'local' starts a cluster here, 'auto' or ray://HOST:10001 joins one "
                   "(pip install 'edgesmith[ray]').")
@click.option("--runs", type=int, help="Timed runs per bundle on host (default: the recipe's, else 50).")
@click.option("--warmup", type=int, help="Untimed warm-up runs (default: the recipe's, else 5).")
@click.option("--force", is_flag=True, help="Overwrite existing bundles, profile.json and report.")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs' records and the files written as JSON.")
@format_option
def sweep(recipe, models, pass_sets, targets, devices, device_files, data, out, workers, ray_address, runs, warmup,
          force, as_json):
    """Run many variants x targets x devices in parallel, into one profile and one report.

    Jobs come from a RECIPE (one per variant x target) or from the options: every
    --model x --passes x --target. Each job exports its bundle (parity checked) and
    measures it on host; the other devices are predicted afterwards. Jobs run in a
    local process pool, or on Ray with --ray-address. A failed job is reported and the
    others finish; the exit code is then the first failed job's.

    \b
    Examples:
      edgesmith sweep examples/demo.yaml -o sweep-demo
      edgesmith sweep -m zoo:digits-cnn -m zoo:lsnet-t:num_classes=10,image_size=64 \\
          -p none -p reparam -t onnx -t torch -d host -d jetson-orin-nano --workers 2
      edgesmith sweep examples/demo.yaml --ray-address local
    """
    import dataclasses

    from edgesmith import api as es
    from edgesmith.errors import EdgesmithError, OutputExistsError, UsageError
    from edgesmith.pipeline.recipe import load_recipe
    from edgesmith.pipeline.sweep import expand, jobs_from_options, run_sweep

    if recipe and models:
        raise UsageError("give a RECIPE or --model, not both")
    if recipe:
        base = load_recipe(recipe)
        overrides = {k: v for k, v in (("runs", runs), ("warmup", warmup)) if v is not None}
        if devices:
            overrides["devices"] = list(devices)
        jobs = expand(dataclasses.replace(base, **overrides))
        device_files = tuple(base.device_files) + tuple(device_files)
    elif models:
        jobs = jobs_from_options(models, pass_sets, targets or ["onnx"], devices or ["host"], runs=runs or 50,
                                 warmup=5 if warmup is None else warmup, data=data)
    else:
        raise UsageError("nothing to sweep", hint="give a RECIPE.yaml or at least one --model")
    out = Path(out)
    profile_path = out / "profile.json"
    if profile_path.exists() and not force:
        raise OutputExistsError(f"{profile_path} exists", hint="pass --force to sweep over it")
    with progress(f"sweep: {len(jobs)} jobs", total=len(jobs)) as bar:
        results, doc = run_sweep(jobs, out, workers=workers, ray_address=ray_address, force=force,
                                 device_files=device_files,
                                 progress=lambda label, done, total: bar.update(f"done: {label}", completed=done))
    profile_path.write_text(json.dumps(doc, indent=2))
    written = [profile_path, *es.report([doc], out / "report.html", force=True)]
    failed = [r for r in results if not r.ok]
    if as_json:
        emit_json({"jobs": [r.record() for r in results], "files": [str(p) for p in written]})
    else:
        _show(results, doc)
        for p in written:
            say(f"wrote {p}")
    if failed:
        error = EdgesmithError(f"{len(failed)} of {len(results)} jobs failed; the first: {failed[0].label}: "
                               f"{failed[0].error}", hint=f"the other jobs' results are in {profile_path}")
        error.exit_code = failed[0].exit_code  # the sweep exits as its first failed job would have
        raise error


def _show(results, doc) -> None:
    latency: dict[tuple[str, str], str] = {}
    for e in doc["entries"]:
        mark = "" if e["mode"] == "measured" else "~"
        latency[(e["bundle"], e["device"])] = f"{mark}{e['latency_ms']['p50']:.3f}"
    devices = list(dict.fromkeys(e["device"] for e in doc["entries"]))
    from rich.markup import escape

    t = DataTable(Column("job", key=True), Column("result", wrap=True), *(Column(d, "right") for d in devices),
                  Column("s", "right"), title="sweep (ms: p50 measured on host, ~ predicted)")
    for r in results:
        cells = [latency.get((r.bundle, d), "-") for d in devices]
        status = "[green]ok[/]" if r.ok else f"[red]FAILED[/] ({r.exit_code}): {escape(r.error)}"
        t.add_row(r.label, status, *cells, f"{r.seconds:.1f}")
    t.show()
    for r in results:
        for note in r.notes if r.ok else []:  # a failed job's notes are its traceback, in the report
            console().print(f"[yellow]note:[/] {r.label}: {escape(note)}")
