"""``edgesmith view``: a bundle's model (or a model file) in Netron, served on localhost.

Netron (the ``view`` extra) is a model viewer that runs in the browser; its Python
package serves the page and the model file from a local HTTP server. Which file of a
bundle it gets: ``model.onnx`` (onnx and tensorrt bundles), ``model.pt2`` (torch),
the ML program inside ``model.mlpackage`` (coreml). MLX's ``.mlxfn`` and HLS projects
are not formats Netron reads: view the same variant's onnx bundle instead.
"""

from __future__ import annotations

from pathlib import Path

from edgesmith.errors import BadInputError, UsageError, require

_VIEWABLE_SUFFIXES = (".onnx", ".pt2", ".mlmodel", ".tflite", ".pb")


def model_file(path: str | Path) -> Path:
    """The file Netron should open for a bundle directory or a model file.

    Raises:
        BadInputError: The path does not exist, or a bundle fails verification.
        UsageError: A bundle or file whose format Netron cannot show (named, with what to view instead).
    """
    from edgesmith.bundle import Bundle

    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path} does not exist", hint="give a bundle folder (OUT/NAME.TARGET) or a model file")
    if path.is_dir() and (path / "manifest.json").is_file():
        bundle = Bundle.open(path)
        target = bundle.manifest.target
        candidates = {"onnx": ["model.onnx"], "tensorrt": ["model.onnx"], "torch": ["model.pt2"],
                      "coreml": [str(p.relative_to(path)) for p in sorted(path.glob("model.mlpackage/**/*.mlmodel"))]}
        for rel in candidates.get(target, []):
            if (path / rel).is_file():
                return path / rel
        raise UsageError(f"Netron cannot show a {target} bundle ({path.name})",
                         hint=f"view the same variant's onnx bundle: edgesmith export "
                              f"{bundle.manifest.source.get('reference', 'MODEL')} -t onnx, then edgesmith view it")
    if path.is_dir() and path.suffix == ".mlpackage":
        found = sorted(path.glob("**/*.mlmodel"))
        if found:
            return found[0]
    if path.is_file() and path.suffix in _VIEWABLE_SUFFIXES:
        return path
    raise UsageError(f"Netron cannot show {path.name}",
                     hint=f"give a bundle folder or a {', '.join(_VIEWABLE_SUFFIXES)} file")


def serve(path: str | Path, host: str = "127.0.0.1", port: int = 0, browse: bool = False) -> str:
    """Serve a bundle's model in Netron in a background thread; return its URL.

    Args:
        path: A bundle folder or a model file.
        host: Address to listen on (``127.0.0.1``: this machine only).
        port: Port (0: a free one).
        browse: Also open the page in the default browser.

    Raises:
        BadInputError / UsageError: As :func:`model_file`.
        RuntimeUnavailableError: Netron is not installed (``pip install 'edgesmith[view]'``).
    """
    netron = require("netron", "view")
    import logging

    logging.getLogger("netron.server").setLevel(logging.WARNING)  # the CLI prints the URL itself
    file = model_file(path)
    try:
        address = netron.serve(str(file), None, address=(host, port), browse=browse)
    except OSError as exc:
        raise UsageError(f"cannot serve on {host}:{port}: {exc.strerror or exc}",
                         hint="choose another --port") from None
    return f"http://{address[0]}:{address[1]}/"


def stop(url: str) -> None:
    """Stop the server :func:`serve` started for ``url``."""
    from urllib.parse import urlparse

    netron = require("netron", "view")
    parsed = urlparse(url)
    netron.stop((parsed.hostname, parsed.port))
