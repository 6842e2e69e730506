"""``edgesmith export``: a model to one or more targets as verified bundles (registered by :mod:`edgesmith.cli`).

Besides ``-O key=value``, an exporter's options field whose metadata names a ``cli`` flag
(``--reuse-factor`` of the hls target) becomes an option of this command. The exporters
are imported the first time the command's options are needed (``export --help``, an
export), never for the rest of the command line.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import click

from edgesmith import errors
from edgesmith.cli.common import Column, DataTable, console, emit_json, format_option, parity_row, parity_table
from edgesmith.cli.options import load_model, model_options
from edgesmith.cli.progressbar import progress

_PYTHON_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


@dataclasses.dataclass(frozen=True)
class TargetFlag:
    """A flag of ``export`` that sets one field of one exporter's options.

    Attributes:
        target: The exporter's registry name.
        field: The options field it sets.
        flag: The flag, e.g. ``--reuse-factor``.
        dest: The callback's keyword for it.
    """

    target: str
    field: str
    flag: str
    dest: str


@functools.lru_cache(maxsize=None)
def _target_flags() -> tuple[tuple[TargetFlag, click.Option], ...]:
    """Every registered exporter's flagged options fields, in registry then field order, with its click option."""
    from edgesmith.export import EXPORTERS

    found = []
    for target in EXPORTERS.names():
        for f in dataclasses.fields(EXPORTERS.get(target).Options):
            meta = f.metadata
            if "cli" not in meta:
                continue
            dest = f"target_flag_{re.sub(r'[^0-9a-zA-Z_]', '_', target)}_{f.name}"
            option = click.Option([meta["cli"], dest], type=_click_type(f), help=f"{target}: {meta.get('help', '')}")
            found.append((TargetFlag(target, f.name, meta["cli"], dest), option))
    return tuple(found)


def _click_type(f: dataclasses.Field):
    """The click type of an options field's flag: its choices, its range, else its Python type."""
    meta = f.metadata
    if "choices" in meta:
        return click.Choice(list(meta["choices"]))
    kind = _PYTHON_TYPES.get(f.type, str) if isinstance(f.type, str) else f.type
    if kind in (int, float) and ("min" in meta or "max" in meta):
        ranged = click.IntRange if kind is int else click.FloatRange
        return ranged(min=meta.get("min"), max=meta.get("max"), min_open=meta.get("min_open", False),
                      max_open=meta.get("max_open", False))
    return kind


class _ExportCommand(click.Command):
    """``export``, whose exporter flags join its options (after ``-O``) the first time they are read."""

    @property
    def params(self) -> list[click.Parameter]:
        if not self._with_target_flags:
            at = next(i for i, p in enumerate(self._params) if p.name == "target_options") + 1
            self._params[at:at] = [option for _, option in _target_flags()]
            self._with_target_flags = True
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params, self._with_target_flags = value, False


@click.command(cls=_ExportCommand)
@click.argument("model")
@model_options
@click.option("-t", "--target", "targets_", multiple=True, default=("onnx",), show_default=True,
              help="Target (repeatable), or all (see edgesmith targets list).")
@click.option("-p", "--pass", "pass_specs", multiple=True, metavar="PASS[:k=v,...]", help="Pass to apply first.")
@click.option("-O", "--option", "target_options", multiple=True, metavar="KEY=VALUE",
              help="Target option, e.g. -O opset=20 -O dynamic=false.")
@click.option("-o", "--out", default="out", show_default=True, type=click.Path(file_okay=False),
              help="Output directory; bundles go to OUT/NAME.TARGET.")
@click.option("--name", help="Bundle name (default: the model's).")
@click.option("--force", is_flag=True, help="Overwrite existing bundles.")
@click.option("--keep-failed", is_flag=True, help="Keep a bundle whose parity failed (exit code is still 4).")
@click.option("--json", "as_json", is_flag=True, help="Print bundles and parity as JSON.")
@format_option
def export(model, inputs, weights, gguf, seq_len, targets_, pass_specs, target_options, out, name, force,
           keep_failed, as_json, **target_flags):
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

    names = EXPORTERS.names() if "all" in targets_ else list(dict.fromkeys(targets_))
    for t in names:
        EXPORTERS.get(t)
    per_target = _target_options(target_options, target_flags, names)
    variant = load_model(model, inputs, weights, gguf, seq_len)
    messages = console()
    if pass_specs:
        with progress("applying passes"):
            variant = es.optimize(variant, pass_specs)
    results = es.export_targets(
        variant, out, names, name=name, options=per_target, force=force, keep_failed=keep_failed,
        # one target failing (an op it cannot take, a missing runtime) must not stop the others
        stop_on_error=len(names) == 1,
        stage=lambda t: progress(f"exporting {variant.name} to {t} and checking parity"))
    if as_json:
        emit_json([_json_row(r) for r in results])
    else:
        for r in results:
            if r.bundle is not None:  # what the exporter has to say beyond parity (hls: its precision table)
                _print_blocks(EXPORTERS.get(r.target).describe(r.bundle, r.parity))
        table = parity_table()
        for r in results:
            if r.parity is not None:
                parity_row(table, str(r.bundle.path) if r.bundle else f"{variant.name}.{r.target}", r.parity)
            else:
                table.add_row(f"{variant.name}.{r.target}", *["—"] * 5,
                              "[yellow]REFUSED[/]" if r.refused else "[red]ERROR[/]")
        table.show()
        from rich.markup import escape

        for note in [*variant.notes, *(n for r in results for n in r.notes)]:
            messages.print(f"[yellow]note:[/] {escape(note)}")
    if any(r.error is not None for r in results):
        _report_failures(results, out, messages)


def _json_row(r) -> dict:
    """A target's outcome for ``--json``: bundle, parity, error; and the manifest's details and notes, or refused."""
    row = {"target": r.target, "bundle": str(r.bundle.path) if r.bundle is not None else None,
           "parity": r.parity.to_dict() if r.parity else None, "error": None if r.error is None else str(r.error)}
    if r.bundle is None:
        row["refused"] = r.refused
        return row
    if r.bundle.manifest.details:
        row["details"] = r.bundle.manifest.details
    row["notes"] = r.notes
    return row


def _target_options(items: tuple[str, ...], flags: dict, names: list[str]) -> dict[str, dict[str, str]]:
    """Each chosen target's options: the ``-O`` ones it has (see :func:`_split_target_options`) and its flags.

    Args:
        items: The ``-O key=value`` items.
        flags: The callback's keywords of the exporters' flags (:class:`TargetFlag` ``dest``), None where not given.
        names: The chosen targets.

    Raises:
        UsageError: A flag of a target that was not chosen, an ``-O`` item without ``=``, or a flag and ``-O``
            giving one option two values.
    """
    from edgesmith.options import parse_key_values

    given: dict[str, dict[str, str]] = {}
    for spec, _ in _target_flags():
        if flags.get(spec.dest) is None:
            continue
        if spec.target not in names:
            raise errors.UsageError(f"{spec.flag} is an option of the {spec.target} target",
                                    hint=f"add --target {spec.target}")
        given.setdefault(spec.target, {})[spec.field] = str(flags[spec.dest])
    opts = parse_key_values(items, "-O")
    for target_flags in given.values():
        for key, value in target_flags.items():
            if key in opts and opts[key] != value:
                raise errors.UsageError(f"{key} given twice: -O {key}={opts[key]} and its flag {value}")
    per_target = _split_target_options(opts, names)
    for target, target_flags in given.items():
        per_target[target] = {**per_target[target], **target_flags}
    return per_target


def _print_blocks(blocks: list) -> None:
    """Print what an exporter's ``describe`` returned (see :meth:`edgesmith.export.base.Exporter.describe`)."""
    out = None
    for block in blocks:
        if isinstance(block, str):
            click.echo(block)
        elif "markup" in block:
            out = out or console(stderr=False)
            out.print(block["markup"], highlight=False)
        else:
            table = DataTable(*(Column(**c) if isinstance(c, dict) else c for c in block["columns"]),
                              title=block.get("title"))
            for row in block["rows"]:
                table.add_row(*row)
            table.show()


def _report_failures(results: list, out: str, messages) -> None:
    """After a multi-target export: each failed target's reason, each hint once, and what was still written.

    Args:
        results: The :class:`edgesmith.api.TargetResult` of every target, at least one of them failed.
        out: The output folder.
        messages: The console for messages (stderr).

    Raises:
        EdgesmithError: The first failure, when one target was asked for, when nothing was
            written, or when a failure was not a clean refusal (its exit code is the command's).
    """
    from rich.markup import escape

    failures = [r for r in results if r.error is not None]
    written = [r.bundle.path for r in results if r.bundle is not None]
    if len(results) == 1:
        raise failures[0].error
    hints = set()
    for r in failures:
        label = "refused" if r.refused else "failed"
        messages.print(f"[{'yellow' if r.refused else 'red'}]{r.target} {label}:[/] {escape(r.error.message)}")
        if r.error.hint and r.error.hint not in hints:  # targets refusing for one reason share a hint: say it once
            hints.add(r.error.hint)
            messages.print(f"  hint: {escape(r.error.hint)}")
    refused = [r.target for r in failures if r.refused]
    if written:
        messages.print(f"wrote {len(written)} of {len(results)} bundles to {out}: "
                       + ", ".join(Path(b).name for b in written)
                       + (f"; {', '.join(refused)} cannot take this model" if refused else ""))
    hard = [r for r in failures if not r.refused]
    if written and not hard:
        return
    blocking = hard or failures
    error = errors.EdgesmithError(f"{len(failures)} of {len(results)} targets did not export "
                                  f"({', '.join(r.target for r in failures)}); the reasons are above")
    error.exit_code = blocking[0].error.exit_code  # the command exits as its first real failure would have
    raise error


def _split_target_options(opts: dict[str, str], names: list[str]) -> dict[str, dict[str, str]]:
    """Give each target the -O options it has; an option no chosen target has is an error."""
    from edgesmith.export import EXPORTERS

    fields = {t: {f.name for f in dataclasses.fields(EXPORTERS.get(t).Options)} for t in names}
    if len(names) == 1:
        return {names[0]: opts}  # the exporter names an unknown key with its known ones
    for key in opts:
        if not any(key in f for f in fields.values()):
            raise errors.UsageError(f"no chosen target has option {key!r}", hint="see edgesmith targets list")
    return {t: {k: v for k, v in opts.items() if k in fields[t]} for t in names}
