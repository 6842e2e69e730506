"""The ``edgesmith`` command line: parse, call :mod:`edgesmith.api`, render with rich.

No logic of its own. Data goes to stdout (``--json`` for scripts); progress and
messages go to stderr. Each command lives in its own module of this package; here are
the group, the registration of the commands and :func:`main`, which maps errors to
exit codes. Command modules are imported as modules (``edgesmith.cli.export`` stays the
module, whose ``export`` is the command).
"""

from __future__ import annotations

import sys
import traceback

import click

from edgesmith import errors
from edgesmith.cli import build_engine as build_engine_cmd
from edgesmith.cli import demo as demo_cmd
from edgesmith.cli import devices as devices_cmd
from edgesmith.cli import dolphin as dolphin_cmd
from edgesmith.cli import examples as examples_cmd
from edgesmith.cli import export as export_cmd
from edgesmith.cli import generate as generate_cmd
from edgesmith.cli import inspect as inspect_cmd
from edgesmith.cli import lists as lists_cmd
from edgesmith.cli import optimize as optimize_cmd
from edgesmith.cli import profile as profile_cmd
from edgesmith.cli import report as report_cmd
from edgesmith.cli import run as run_cmd
from edgesmith.cli import sweep as sweep_cmd
from edgesmith.cli import verify as verify_cmd
from edgesmith.cli import view as view_cmd
from edgesmith.cli.progressbar import quiet_progress_bars


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgesmith")
def cli():
    """edgesmith: compact a trained PyTorch model, export it to edge targets, check parity, profile it.

    \b
    Quick start:
      edgesmith demo
      edgesmith export zoo:digits-cnn -p reparam --target onnx -o out
      edgesmith verify out/digits-cnn.onnx
      edgesmith generate out/smollm2-135m.onnx --prompt "Hello"   (a language model's bundle)
      edgesmith profile out/digits-cnn.onnx -d host -d jetson-orin-nano -o profile.json
      edgesmith report profile.json -o report.html
      edgesmith examples copy examples    (the example recipes and data, here)
      edgesmith run examples/demo.yaml    (the whole pipeline from one file)

    MODEL is path/model.pt2, a variant folder (a language model saved by optimize),
    a Hugging Face checkpoint directory, path/model.onnx,
    py:package.module:factory (with --weights) or zoo:NAME.
    """


for _command in (
    build_engine_cmd.build_engine, demo_cmd.demo, devices_cmd.devices, dolphin_cmd.dolphin, examples_cmd.examples,
    export_cmd.export, generate_cmd.generate, inspect_cmd.inspect, lists_cmd.models, lists_cmd.passes, lists_cmd.targets,
    optimize_cmd.optimize, profile_cmd.profile, report_cmd.report, run_cmd.run, sweep_cmd.sweep, verify_cmd.verify,
    view_cmd.view,
):
    cli.add_command(_command)
del _command


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
        return _show_error(exc)
    except Exception as exc:
        missing = errors.missing_library(exc)
        if missing is not None:  # the build stack (torch, onnx, ...) asked for in a runtime-only install
            return _show_error(missing)
        traceback.print_exc()
        click.echo("edgesmith hit an internal error (a bug); please report the traceback above.", err=True)
        return errors.EXIT_INTERNAL


def _show_error(exc: errors.EdgesmithError) -> int:
    """Print a user-facing error (and its hint) in red on stderr; return its exit code."""
    msg = f"error: {exc.message}" + (f"\n  hint: {exc.hint}" if exc.hint else "")
    click.echo(click.style(msg, fg="red"), err=True)
    return exc.exit_code


def entry() -> None:
    """Console-script wrapper: exit with :func:`main`'s code."""
    sys.exit(main())
