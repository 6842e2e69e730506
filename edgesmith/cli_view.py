"""``edgesmith view``: a model in Netron on localhost (registered by :mod:`edgesmith.cli`)."""

from __future__ import annotations

import time

import click

from edgesmith.cli_common import console


@click.command()
@click.argument("path", metavar="BUNDLE|MODEL_FILE", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (127.0.0.1: only this machine can open the page).")
@click.option("--port", default=0, show_default=True, help="Port to listen on (0: a free one).")
@click.option("--no-browser", is_flag=True, help="Only print the URL; do not open a browser.")
def view(path, host, port, no_browser):
    """Open a bundle's model (or a model file) in Netron, served on localhost.

    Serves until Ctrl-C. onnx and tensorrt bundles show model.onnx, torch bundles
    model.pt2, coreml bundles their ML program. Needs the view extra
    (pip install 'edgesmith[view]').

    \b
    Example:
      edgesmith view out/digits-cnn.onnx --port 8080
    """
    from edgesmith.view import serve, stop

    url = serve(path, host=host, port=port, browse=not no_browser)
    click.echo(url)
    console().print(f"serving {path} in Netron at {url} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop(url)
