"""The ``edgesmith`` command line: parse, call :mod:`edgesmith.api`, render with rich.

No logic of its own. Data goes to stdout (``--json`` for scripts); progress and
messages go to stderr. Errors map to exit codes in :func:`main`.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click

from edgesmith import errors
from edgesmith.cli.common import Column, DataTable, format_option, say
from edgesmith.cli.common import console as _console, emit_json as _emit_json
from edgesmith.cli.common import parity_row as _parity_row, parity_table as _parity_table
from edgesmith.cli.devices import devices
from edgesmith.cli.dolphin import dolphin
from edgesmith.cli.examples import examples
from edgesmith.cli.optimize import print_pass_reports
from edgesmith.cli.profile import profile, profile_table, report, run_recipe_file, warn_not_predicted
from edgesmith.cli.progressbar import progress, quiet_progress_bars
from edgesmith.cli.sweep import sweep
from edgesmith.cli.build_engine import build_engine, print_tensorrt_export
from edgesmith.cli.view import view


def _model_options(f):
    """Options every command that takes a MODEL shares."""
    f = click.option("--seq-len", type=int, help="Example sequence length for language models.")(f)
    f = click.option("--gguf", metavar="FILE", help="GGUF file inside the checkpoint directory.")(f)
    f = click.option("--weights", type=click.Path(dir_okay=False),
                     help="Weights for a py: factory (safetensors, or torch file loaded weights_only).")(f)
    f = click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]",
                     help="Input spec, e.g. image:1x3x224x224:float32 (repeat per input).")(f)
    return f


def _load(model, inputs, weights, gguf, seq_len):
    from edgesmith import api as es

    with progress(f"loading {model}"):
        return es.load(model, inputs=inputs, weights=weights, gguf=gguf, seq_len=seq_len)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgesmith")
def cli():
    """edgesmith: compact a trained PyTorch model, export it to edge targets, check parity, profile it.

    \b
    Quick start:
      edgesmith demo
      edgesmith export zoo:digits-cnn -p reparam --target onnx -o out
      edgesmith verify out/digits-cnn.onnx
      edgesmith profile out/digits-cnn.onnx -d host -d jetson-orin-nano -o profile.json
      edgesmith report profile.json -o report.html
      edgesmith examples copy examples    (the example recipes and data, here)
      edgesmith run examples/demo.yaml    (the whole pipeline from one file)

    MODEL is path/model.pt2, a Hugging Face checkpoint directory, path/model.onnx,
    py:package.module:factory (with --weights) or zoo:NAME.
    """


@cli.command()
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

    console = _console()
    with progress("demo") as status:
        result = run_demo(out, runs=runs, step=status.update)
    if as_json:
        _emit_json({"bundles": result["bundles"], "report": result["report"], "profile": result["profile"],
                    "parity": {k: v.to_dict() for k, v in result["parity"].items()}})
        return
    table = _parity_table()
    for name, res in result["parity"].items():
        _parity_row(table, name, res)
    table.show()
    profile_table(result["doc"]).show()
    warn_not_predicted(result["doc"])
    console.print(f"[bold]report:[/] {result['report'][0]}")


@cli.group()
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
        return _emit_json(rows)
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


cli.add_command(devices)
cli.add_command(dolphin)
cli.add_command(examples)
cli.add_command(profile)
cli.add_command(report)
cli.add_command(sweep)
cli.add_command(view)
cli.add_command(build_engine)


@cli.group()
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


@cli.group()
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
        return _emit_json(rows)
    about = [k for k in (rows[0] if rows else {}) if k not in ("name", "options")]
    table = DataTable(Column("name", key=True), *(Column(k, wrap=True) for k in about), Column("options", wrap=True))
    for r in rows:
        opts = ", ".join(f"{o['name']}={o['default']} ({o['type']})" for o in r["options"]) or "no options"
        table.add_row(r["name"], *(str(r[k]) for k in about), opts)
    table.show()


@cli.command()
@click.argument("model")
@_model_options
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

    variant = _load(model, inputs, weights, gguf, seq_len)
    with progress("counting FLOPs and ops"):
        info = es.inspect(variant)
    if as_json:
        return _emit_json(info)
    from edgesmith.specs import TensorSpec

    c = _console(stderr=False)
    flops = "n/a (ONNX source)" if info["flops"] is None else f"{info['flops'] / 1e6:.2f} MFLOPs"
    c.print(f"[bold]{info['name']}[/] ({info['task']}) from {info['source'].get('reference')}")
    from edgesmith.units import format_bytes

    c.print(f"params {info['params']:,}  size {format_bytes(info['size_bytes'])}  {flops} per forward")
    for kind in ("inputs", "outputs"):
        c.print(f"{kind}: " + "; ".join(TensorSpec.from_dict(s).describe() for s in info[kind]))
    from edgesmith.cli.optimize import pass_summary

    for p in info.get("passes") or []:  # what a .pt2 remembers having been done to it
        c.print(f"pass {p['name']}: {pass_summary(p['name'], p.get('report') or {})}")
    t = DataTable(Column("op", key=True), Column("count", "right"), title="op histogram")
    for op, n in info["ops"].items():
        t.add_row(op, str(n))
    t.show()
    for note in info["notes"]:
        c.print(f"[yellow]note:[/] {note}")


@cli.command()
@click.argument("model")
@_model_options
@click.option("-p", "--pass", "pass_specs", multiple=True, required=True, metavar="PASS[:k=v,...]",
              help="Pass to apply, in order (see edgesmith passes list).")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Output .pt2 file.")
@click.option("--data", type=click.Path(exists=True),
              help="Training data for passes that train (distill): an image folder (one sub-folder per class) or .npz.")
@click.option("--resume", is_flag=True, help="Continue a training pass (distill, matformer train=) from OUT.ckpt/.")
@click.option("--force", is_flag=True, help="Overwrite an existing output (and start a checkpointed run over).")
@click.option("--json", "as_json", is_flag=True, help="Print the pass reports as JSON.")
def optimize(model, inputs, weights, gguf, seq_len, pass_specs, out, data, resume, force, as_json):
    """Apply passes to a model and save the variant as a .pt2 program.

    The .pt2 keeps the passes applied, the signature and the example inputs, so
    'edgesmith export OUT.pt2' continues from it. A distillation writes a
    checkpoint to OUT.ckpt/ after every epoch, a MatFormer nested fine-tune every
    save_every steps; --resume continues from it.

    \b
    Examples:
      edgesmith optimize zoo:digits-cnn -p reparam -o digits-reparam.pt2
      edgesmith optimize zoo:digits-cnn -p distill:student=lsnet-t,width=0.08,depth=0.25,epochs=20 \\
          --data digits.npz -o digits-lsnet.pt2
      edgesmith optimize zoo:smollm2-135m -o smol-budget.pt2 \\
          -p matformer:budget_ms=50,text=devils-dictionary,seq_len=128
    """
    from edgesmith import api as es
    from edgesmith.bundle import check_writable
    from edgesmith.models import save_pt2
    from edgesmith.models.loader import check_pt2_path

    check_pt2_path(out)  # before the passes run: a long pass must not end in a file nobody can read
    check_writable(Path(out), force)
    variant = _load(model, inputs, weights, gguf, seq_len)
    defaults = {"checkpoint": str(Path(out).with_suffix(".ckpt")), "resume": resume, "force": force}
    if data:
        defaults["data"] = data
    with progress("applying passes") as bar:
        variant = es.optimize(variant, pass_specs, defaults=defaults,
                              progress=lambda d, n, total: bar.update(d, completed=n, total=total))
        bar.update(f"saving {out}")
        save_pt2(variant, out, force=force)
    if as_json:
        return _emit_json({"out": out, "passes": variant.passes})
    print_pass_reports(variant.passes)
    click.echo(f"wrote {out}")


@cli.command()
@click.argument("model")
@_model_options
@click.option("-t", "--target", "targets_", multiple=True, default=("onnx",), show_default=True,
              help="Target (repeatable), or all (see edgesmith targets list).")
@click.option("-p", "--pass", "pass_specs", multiple=True, metavar="PASS[:k=v,...]", help="Pass to apply first.")
@click.option("-O", "--option", "target_options", multiple=True, metavar="KEY=VALUE",
              help="Target option, e.g. -O opset=20 -O dynamic=false.")
@click.option("--io", "hls_io", type=click.Choice(["parallel", "stream"]),
              help="hls: layers' I/O, parallel (registers, lowest latency) or stream (FIFOs) [parallel].")
@click.option("--reuse-factor", type=click.IntRange(min=1),
              help="hls: uses of each multiplier per inference (1 = fully parallel; more saves DSPs) [1].")
@click.option("--clock-ns", type=click.FloatRange(min=0, min_open=True), help="hls: clock period in ns [5].")
@click.option("--part", help="hls: FPGA part [xczu7ev-ffvc1156-2-e, the ZCU104's].")
@click.option("-o", "--out", default="out", show_default=True, type=click.Path(file_okay=False),
              help="Output directory; bundles go to OUT/NAME.TARGET.")
@click.option("--name", help="Bundle name (default: the model's).")
@click.option("--force", is_flag=True, help="Overwrite existing bundles.")
@click.option("--keep-failed", is_flag=True, help="Keep a bundle whose parity failed (exit code is still 4).")
@click.option("--json", "as_json", is_flag=True, help="Print bundles and parity as JSON.")
@format_option
def export(model, inputs, weights, gguf, seq_len, targets_, pass_specs, target_options, hls_io, reuse_factor,
           clock_ns, part, out, name, force, keep_failed, as_json):
    """Export a model to one or more targets as verified bundles.

    Each bundle holds the model, golden inputs/outputs and a manifest with the
    parity result; a failed export leaves nothing behind. With several targets
    (or --target all) a target that refuses the model (an op or layer it cannot
    take) is reported and the others still write their bundles; the exit code is
    then 0, and non-zero only when a target failed parity, lacks its runtime here or
    crashed.

    The hls target (FPGA, through hls4ml) chooses each layer's ap_fixed
    precision from calibration data (the zoo model's training split, or
    -O data=FILE.npz) and prints the table; -O precision='ap_fixed<16,6>'
    sets one for every tensor, -O backend=vivado picks Vivado HLS.

    The tensorrt target checks every node against TensorRT's ONNX support
    table and builds the engine where TensorRT and an NVIDIA GPU are here;
    elsewhere it writes a structural bundle that 'edgesmith build-engine'
    completes on the device. Static shapes by default; -O min_shapes=...
    -O max_shapes=... (trtexec's name:1x8 form) make an optimisation profile.

    \b
    Example:
      edgesmith export zoo:digits-cnn -p reparam --target onnx -o out
      edgesmith export path/to/all-MiniLM-L6-v2 --target onnx -o out
      edgesmith export zoo:digits-mlp --target hls --reuse-factor 4 --clock-ns 4 -o out
      edgesmith export zoo:lsnet-t --target tensorrt -o out
    """
    from edgesmith import api as es
    from edgesmith.export import EXPORTERS
    from edgesmith.options import parse_key_values

    names = EXPORTERS.names() if "all" in targets_ else list(dict.fromkeys(targets_))
    for t in names:
        EXPORTERS.get(t)
    flags = {"io": hls_io, "reuse_factor": reuse_factor, "clock_ns": clock_ns, "part": part}
    flags = {k: str(v) for k, v in flags.items() if v is not None}
    if flags and "hls" not in names:
        raise errors.UsageError(f"--{next(iter(flags)).replace('_', '-')} is an option of the hls target",
                                hint="add --target hls")
    opts = parse_key_values(target_options, "-O")
    for key, value in flags.items():
        if key in opts and opts[key] != value:
            raise errors.UsageError(f"{key} given twice: -O {key}={opts[key]} and its flag {value}")
    per_target = _split_target_options({**opts, **flags}, names)
    variant = _load(model, inputs, weights, gguf, seq_len)
    console = _console()
    if pass_specs:
        with progress("applying passes"):
            variant = es.optimize(variant, pass_specs)
    results, failures = [], []
    for t in names:
        row = {"target": t, "bundle": None, "parity": None, "error": None}
        try:
            with progress(f"exporting {variant.name} to {t} and checking parity"):
                bundle, row["parity"] = es.export(variant, out, target=t, name=name, options=per_target[t],
                                                  force=force, keep_failed=keep_failed)
            row["bundle"] = str(bundle.path)
            if bundle.manifest.details:
                row["details"] = bundle.manifest.details
            # what the exporter noted on its own copy of the variant (fixed shapes, a misfit...)
            row["notes"] = [n for n in bundle.manifest.options.get("notes", []) if n not in variant.notes]
        except errors.EdgesmithError as exc:
            if len(names) == 1:
                raise
            # one target failing (an op it cannot take, a missing runtime) must not stop the others
            failures.append((t, exc))
            row["error"] = str(exc)
            row["refused"] = _refused(exc)
            row["parity"] = getattr(exc, "result", None)
        results.append(row)
    if as_json:
        _emit_json([{**r, "parity": r["parity"].to_dict() if r["parity"] else None} for r in results])
    else:
        for r in results:
            if "hls" in r.get("details", {}):
                _print_hls(r["details"]["hls"])
            if "tensorrt" in r.get("details", {}):
                print_tensorrt_export(r["bundle"], r["details"]["tensorrt"], r["parity"])
        table = _parity_table()
        for r in results:
            if r["parity"] is not None:
                _parity_row(table, r["bundle"] or f"{variant.name}.{r['target']}", r["parity"])
            else:
                table.add_row(f"{variant.name}.{r['target']}", *["—"] * 5,
                              "[yellow]REFUSED[/]" if r.get("refused") else "[red]ERROR[/]")
        table.show()
        from rich.markup import escape

        for note in [*variant.notes, *(n for r in results for n in r.get("notes", []))]:
            console.print(f"[yellow]note:[/] {escape(note)}")
    if failures:
        _report_failures(failures, results, out, console)


def _refused(exc: Exception) -> bool:
    """Whether a target turned the model down cleanly: an op or layer it cannot take (bad input, exit 3).

    An existing output, a parity failure, a missing runtime or a crash is not a refusal.
    """
    return isinstance(exc, errors.BadInputError) and not isinstance(exc, errors.OutputExistsError)


def _report_failures(failures: list, results: list[dict], out: str, console) -> None:
    """After a multi-target export: each failed target's reason, each hint once, and what was still written.

    Raises:
        EdgesmithError: The first failure, when one target was asked for, when nothing was
            written, or when a failure was not a clean refusal (its exit code is the command's).
    """
    from rich.markup import escape

    written = [r["bundle"] for r in results if r["bundle"]]
    if len(results) == 1:
        raise failures[0][1]
    hints = set()
    for target, exc in failures:
        label = "refused" if _refused(exc) else "failed"
        console.print(f"[{'yellow' if _refused(exc) else 'red'}]{target} {label}:[/] {escape(exc.message)}")
        if exc.hint and exc.hint not in hints:  # targets refusing for one reason share a hint: say it once
            hints.add(exc.hint)
            console.print(f"  hint: {escape(exc.hint)}")
    refused = [t for t, exc in failures if _refused(exc)]
    if written:
        console.print(f"wrote {len(written)} of {len(results)} bundles to {out}: "
                      + ", ".join(Path(b).name for b in written)
                      + (f"; {', '.join(refused)} cannot take this model" if refused else ""))
    hard = [(t, exc) for t, exc in failures if not _refused(exc)]
    if written and not hard:
        return
    blocking = hard or failures
    error = errors.EdgesmithError(f"{len(failures)} of {len(results)} targets did not export "
                                  f"({', '.join(t for t, _ in failures)}); the reasons are above")
    error.exit_code = blocking[0][1].exit_code  # the command exits as its first real failure would have
    raise error


def _print_hls(info: dict) -> None:
    """The precision table an hls export chose and its predicted resources (stdout)."""
    from edgesmith.profiles.fpga import latency_text, resources_text

    out = _console(stderr=False)
    chosen = info.get("precision_table")  # None with one precision for every tensor
    mode = "chosen from calibration data" if chosen else f"{info['precision_mode']} for every tensor"
    table = DataTable(Column("layer", key=True), "kind", "weight", "bias", "result", "accum",
                      Column("max |result|", "right"), title=f"{info['project']}: ap_fixed<W,I> per layer ({mode})")
    for row in chosen or ([name, "", t.get("weight", ""), t.get("bias", ""), t.get("result", ""),
                           t.get("accum", ""), ""] for name, t in info["types"].items()):
        table.add_row(*row)
    table.show()
    cal, est = info["calibration"], info["estimates"]
    agree = f"{cal['top1_agreement']:.2%}" if cal.get("top1_agreement") is not None else "n/a"
    snr = f"{cal['snr_db']:.1f} dB" if cal.get("snr_db") is not None else "exact"
    out.print(f"C simulation vs PyTorch on {cal['samples']} calibration samples ({cal['source']}): "
              f"top-1 agreement {agree}, SNR {snr}")
    out.print(f"predicted on {est['part']}: {resources_text(est['total'], est.get('capacity'))}; latency "
              f"{latency_text(est['latency_cycles'], est['clock_ns'])} (first-order model, not synthesised)")


def _split_target_options(opts: dict[str, str], names: list[str]) -> dict[str, dict[str, str]]:
    """Give each target the -O options it has; an option no chosen target has is an error."""
    import dataclasses

    from edgesmith.export import EXPORTERS

    fields = {t: {f.name for f in dataclasses.fields(EXPORTERS.get(t).Options)} for t in names}
    if len(names) == 1:
        return {names[0]: opts}  # the exporter names an unknown key with its known ones
    for key in opts:
        if not any(key in f for f in fields.values()):
            raise errors.UsageError(f"no chosen target has option {key!r}", hint="see edgesmith targets list")
    return {t: {k: v for k, v in opts.items() if k in fields[t]} for t in names}


@cli.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path())
@click.option("--threads", default=0, help="Runtime threads (0 = runtime default).")
@click.option("--json", "as_json", is_flag=True, help="Print parity results as JSON.")
@format_option
def verify(bundles, threads, as_json):
    """Check bundles' files (sha256) and re-run their golden data on their runtime.

    Exit code 4 if any bundle's outputs are out of tolerance.

    \b
    Example:
      edgesmith verify out/digits-cnn.onnx
    """
    from edgesmith import api as es

    results = {}
    with progress(f"verifying {Path(bundles[0]).name}") as status:
        for b in bundles:
            status.update(f"verifying {Path(b).name}")
            results[b] = es.verify(b, threads=threads)
    if as_json:
        _emit_json({b: r.to_dict() for b, r in results.items()})
    else:
        table = _parity_table()
        for b, r in results.items():
            _parity_row(table, b, r)
        table.show()
    bad = [b for b, r in results.items() if not r.passed]
    if bad:
        raise errors.ParityError(f"parity failed for {', '.join(bad)}: "
                                 + "; ".join(f for b in bad for f in results[b].failures))


@cli.command()
@click.argument("target", metavar="BUNDLE|RECIPE.yaml", type=click.Path())
@click.option("--inputs", "inputs_file", type=click.Path(dir_okay=False),
              help="Bundle: .npz with one array per input (default: the bundle's golden inputs).")
@click.option("-o", "--out", type=click.Path(),
              help="Bundle: write outputs to this .npz. Recipe: output folder (default: the recipe's out).")
@click.option("--force", is_flag=True, help="Overwrite --out (a recipe's bundles, profile and report).")
@click.option("--threads", default=0, help="Runtime threads (0 = runtime default).")
@click.option("--check", is_flag=True, help="Recipe: validate it and print the plan, run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print output summaries (recipe: the results) as JSON.")
@format_option
def run(target, inputs_file, out, force, threads, check, as_json):
    """Run a bundle on inputs with its runtime, or a whole pipeline from a recipe.

    A recipe (.yaml) names the model, the variants' passes, the targets, the devices
    and the report ('edgesmith examples copy' writes two; see edgesmith.pipeline.recipe); it is validated before
    anything runs.

    \b
    Examples:
      edgesmith run out/digits-cnn.onnx --inputs digits.npz -o logits.npz
      edgesmith run examples/demo.yaml -o demo-out
    """
    if Path(target).suffix in (".yaml", ".yml"):
        return run_recipe_file(target, out, force, check, as_json)
    bundle = target
    import warnings

    import numpy as np

    from edgesmith import api as es
    from edgesmith.arrays import load_arrays
    from edgesmith.bundle import Bundle, check_writable
    from edgesmith.runtimes import InputCastNote

    if out:
        check_writable(Path(out), force)
    if inputs_file:
        feeds = load_arrays(inputs_file, "inputs")
    else:
        feeds = Bundle.open(bundle).golden()[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputCastNote)
        outputs = es.run(bundle, feeds, threads=threads)
    for w in caught:
        if issubclass(w.category, InputCastNote):
            click.echo(f"note: {w.message}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if out:
        np.savez(out, **outputs)
    summary = {k: {"shape": list(v.shape), "dtype": str(v.dtype), "mean": float(np.mean(v)) if v.size else None,
                   "argmax": np.argmax(v, axis=-1).ravel()[:16].tolist() if v.ndim and v.size else None}
               for k, v in outputs.items()}  # an empty batch has neither
    if as_json:
        return _emit_json(summary)
    for k, s in summary.items():
        mean = "-" if s["mean"] is None else f"{s['mean']:.4g}"
        click.echo(f"{k}: shape {s['shape']} {s['dtype']}, mean {mean}, argmax[:16] {s['argmax']}")
    if out:
        click.echo(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map errors to exit codes (ARCHITECTURE.md)."""
    quiet_progress_bars()
    try:
        cli.main(args=argv, prog_name="edgesmith", standalone_mode=False)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:  # usage errors from click itself
        exc.show()
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except errors.EdgesmithError as exc:
        msg = f"error: {exc.message}" + (f"\n  hint: {exc.hint}" if exc.hint else "")
        click.echo(click.style(msg, fg="red"), err=True)
        return exc.exit_code
    except Exception:
        traceback.print_exc()
        click.echo("edgesmith hit an internal error (a bug); please report the traceback above.", err=True)
        return errors.EXIT_INTERNAL


def entry() -> None:
    """Console-script wrapper: exit with :func:`main`'s code."""
    sys.exit(main())
