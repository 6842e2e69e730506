"""A bundle's model (or a model file) in Netron, served on localhost.

Netron (the ``view`` extra, https://github.com/lutzroeder/netron) is a model viewer
that runs in the browser; its Python package serves the page and the model from a
local HTTP server in a background thread. Which file of a bundle it gets follows the
bundle's model file: ``model.onnx`` and ``model.pt2`` as they are, and for a Core ML
``model.mlpackage`` the package's ``Manifest.json`` (Netron follows it to the ML
program and its weights). MLX's ``model.mlxfn`` is not a format Netron reads: such a
bundle is refused with the command that makes the same variant's onnx bundle.

Netron's server answers every file under the served file's folder (an ONNX model's
external data lives beside it), so :func:`serve` listens on 127.0.0.1 unless told
otherwise.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlparse

from edgesmith.errors import BadInputError, RuntimeUnavailableError, UsageError, require

# Model files Netron opens, by suffix (a .mlpackage folder is opened through its Manifest.json).
VIEWABLE = (".onnx", ".pt2", ".mlmodel", ".mlpackage", ".safetensors", ".gguf")

# Netron's page only asks to update, and opens nothing, once its build is this old (browser.js).
_NETRON_SHELF_LIFE = timedelta(days=180)
_WILDCARD_HOSTS = ("", "0.0.0.0")
# URL -> the (host, port) Netron listens on, which differs from the URL's for a wildcard host
_listening: dict[str, tuple[str, int]] = {}


def model_file(path: str | Path) -> Path:
    """Return the file Netron should open for a bundle folder or a model file.

    Args:
        path: A bundle folder (``OUT/NAME.TARGET``) or its ``manifest.json``, or a model file
            (``.onnx``, ``.pt2``, ``.mlmodel``, ``.safetensors``, ``.gguf``) or ``.mlpackage`` folder.

    Returns:
        The file to serve: the bundle's model file, or the ``Manifest.json`` of an ``.mlpackage``.

    Raises:
        BadInputError: The path does not exist, is a folder that is not a bundle, or is a bundle
            whose files fail verification.
        UsageError: A bundle or file in a format Netron cannot show (naming it and what to view instead).
    """
    from edgesmith.bundle import MANIFEST, Bundle

    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path} does not exist",
                            hint=f"give a bundle folder (OUT/NAME.TARGET) or a {_suffixes()} model")
    if path.suffix == ".mlpackage" or (path.is_file() and path.name != MANIFEST):
        return _viewable(path, f"Netron cannot show {path.name}",
                         f"give a bundle folder (OUT/NAME.TARGET) or a {_suffixes()} model")
    bundle = Bundle.open(path)  # verifies every file's sha256; a folder without a manifest is refused
    m = bundle.manifest
    passes = "".join(f" -p {p['name']}" for p in m.passes)
    return _viewable(
        bundle.model_path,
        f"Netron cannot show the {m.target} bundle {bundle.path.name} (its {m.model_file})",
        f"view the onnx bundle of the same variant: edgesmith export {m.source.get('reference', 'MODEL')}"
        f"{passes} -t onnx -o OUT, then edgesmith view OUT/{m.name}.onnx",
    )


def _viewable(file: Path, refusal: str, hint: str) -> Path:
    """``file`` itself, or the Manifest.json of an .mlpackage; UsageError for other formats."""
    if file.suffix not in VIEWABLE:
        raise UsageError(refusal, hint=hint)
    if file.suffix == ".mlpackage":
        manifest = file / "Manifest.json"
        if not manifest.is_file():
            raise BadInputError(f"{file} is not a Core ML package: no Manifest.json",
                                hint="save it again with coremltools, or export it with edgesmith export -t coreml")
        return manifest
    return file


def _suffixes() -> str:
    return ", ".join(VIEWABLE[:-1]) + " or " + VIEWABLE[-1]


def serve(path: str | Path, host: str = "127.0.0.1", port: int = 0, browse: bool = False) -> str:
    """Serve a bundle's model in Netron from a background thread and return the page's URL.

    The server runs until :func:`stop` (or the end of the process). Serving again on the same
    explicit port in this process replaces the earlier server.

    Args:
        path: A bundle folder or a model file (see :func:`model_file`).
        host: IPv4 address to listen on; ``127.0.0.1`` lets only this machine in, ``0.0.0.0``
            every machine that can reach it (then every file under the model's folder is readable).
        port: Port to listen on; 0 picks a free one.
        browse: Also open the page in the default web browser.

    Returns:
        The page's URL, e.g. ``http://127.0.0.1:41237/`` (127.0.0.1 when listening on 0.0.0.0).

    Raises:
        BadInputError: As :func:`model_file`.
        UsageError: As :func:`model_file`, or the address cannot be listened on (port taken, bad host).
        RuntimeUnavailableError: Netron is not installed (``pip install 'edgesmith[view]'``), or the
            installed Netron is so old that its page refuses to open models.
    """
    netron = require("netron", "view")
    file = model_file(path)
    _check_netron_age(netron)
    root = logging.getLogger()
    # netron.serve calls logging.basicConfig(INFO) when the root logger has no handler, which would
    # switch on every library's INFO messages in the caller's process; a no-op handler prevents it.
    guard = logging.NullHandler() if not root.hasHandlers() else None
    if guard:
        root.addHandler(guard)
    try:
        address = netron.serve(str(file), None, address=(host, port), browse=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}",
                         hint="give another --port (0 picks a free one) or an IPv4 --host of this machine"
                         ) from None
    finally:
        if guard:
            root.removeHandler(guard)
    shown = "127.0.0.1" if address[0] in _WILDCARD_HOSTS else address[0]
    url = f"http://{shown}:{address[1]}/"
    _listening[url] = address
    if browse:
        import webbrowser

        webbrowser.open(url)
    return url


def _check_netron_age(netron, now: datetime | None = None) -> None:
    """Refuse a Netron whose page would only ask to be updated (its build is over 180 days old).

    Raises:
        RuntimeUnavailableError: Naming the Netron version and build date.
    """
    index = Path(netron.__file__).parent / "index.html"
    page = index.read_text(errors="replace") if index.is_file() else ""
    found = re.search(r'<meta name="date" content="([0-9-]+) ([0-9:]+)">', page)
    if not found:
        return
    built = datetime.fromisoformat(f"{found[1]}T{found[2]}+00:00")
    if (now or datetime.now(timezone.utc)) - built > _NETRON_SHELF_LIFE:
        raise RuntimeUnavailableError(
            f"netron {netron.__version__} was built on {built:%Y-%m-%d}, over 180 days ago: "
            "its page opens no model and only asks to be updated",
            hint="pip install -U netron")


def _address(url: str) -> tuple[str, int]:
    if url in _listening:
        return _listening[url]
    parsed = urlparse(url)
    return parsed.hostname, parsed.port


def wait(url: str) -> None:
    """Block until the server of ``url`` stops; Ctrl-C stops it and raises KeyboardInterrupt.

    Args:
        url: A URL :func:`serve` returned.
    """
    netron = require("netron", "view")
    try:
        while netron.status(_address(url)):
            time.sleep(0.2)
    finally:
        stop(url)


def stop(url: str) -> None:
    """Stop the server :func:`serve` started for ``url`` (nothing if it is not running).

    Args:
        url: A URL :func:`serve` returned.
    """
    netron = require("netron", "view")
    netron.stop(_address(url))
    _listening.pop(url, None)
