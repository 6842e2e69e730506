"""Exporters: variant -> artifact bundle, each checked for parity on its runtime.

The base class and the registry are in :mod:`edgesmith.export.base`; this package
registers the built-in exporters (imported here, in one place) and builds them by
target name. :data:`EXPORTERS` as imported from here holds the built-ins.
"""

from __future__ import annotations

from edgesmith.export.base import EXPORTERS, Exporter
from edgesmith.options import build_options


def get_exporter(target: str, options: dict[str, str] | None = None) -> Exporter:
    """Build the exporter for a target with ``key=value`` options.

    Raises:
        UsageError: Unknown target or option.
    """
    cls = EXPORTERS.get(target)
    return cls(build_options(cls.Options, options or {}, f"target {target!r}"))


def _register_builtins() -> None:
    from edgesmith.export import coreml, hls, mlx, onnx, tensorrt, torch  # noqa: F401


_register_builtins()
