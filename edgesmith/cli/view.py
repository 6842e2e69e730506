"""``edgesmith view``: a model in Netron on localhost (registered by :mod:`edgesmith.cli`)."""

from __future__ import annotations

import click

from edgesmith.cli.common import console


@click.command()
@click.argument("path", metavar="BUNDLE|MODEL_FILE", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True,
              help="IPv4 address to listen on. 127.0.0.1 lets only this machine in; 0.0.0.0 lets in every "
                   "machine that reaches this one, and Netron then serves every file under the model's folder.")
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on. 0 picks a free one, so several views can run side by side; "
                   "give a fixed one (e.g. 8080) for a URL that stays the same across runs.")
@click.option("--no-browser", is_flag=True, help="Only print the URL; do not open a web browser.")
def view(path, host, port, no_browser):
    """Show a bundle's model (or a model file) in Netron, served on localhost until Ctrl-C.

    Prints the page's URL on stdout. onnx bundles show model.onnx, torch bundles
    model.pt2, coreml bundles their ML program; an mlx bundle is refused with the
    command that makes the same variant's onnx bundle. Model files: .onnx, .pt2,
    .mlmodel, .mlpackage, .safetensors, .gguf. Needs the view extra
    (pip install 'edgesmith[view]').

    The page is Netron's own: the first time, it asks to accept its cookies before
    it shows the model, and a browser that is online sends Netron's anonymous
    usage statistics (Google Analytics).

    \b
    Examples:
      edgesmith view out/digits-cnn.onnx
      edgesmith view out/digits-cnn.torch --port 8080 --no-browser
    """
    from rich.markup import escape

    from edgesmith.cli.netron import serve, wait

    url = serve(path, host=host, port=port, browse=not no_browser)
    try:
        click.echo(url)
        console().print(f"Netron is showing {escape(str(path))} at {url} (Ctrl-C to stop)")
        wait(url)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how this command ends: exit code 0 (wait has stopped the server)
