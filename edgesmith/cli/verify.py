"""``edgesmith verify``: a bundle's files and golden data checked again (registered by :mod:`edgesmith.cli`)."""

from __future__ import annotations

from pathlib import Path

import click

from edgesmith import errors
from edgesmith.cli.common import emit_json, format_option, parity_row, parity_table
from edgesmith.cli.progressbar import progress


@click.command()
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
        emit_json({b: r.to_dict() for b, r in results.items()})
    else:
        table = parity_table()
        for b, r in results.items():
            parity_row(table, b, r)
        table.show()
    bad = [b for b, r in results.items() if not r.passed]
    if bad:
        raise errors.ParityError(f"parity failed for {', '.join(bad)}: "
                                 + "; ".join(f for b in bad for f in results[b].failures))
