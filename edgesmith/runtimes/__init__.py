"""Runtimes: load a bundle and run it. This is what ships to a device.

Nothing here imports torch or the exporters: only numpy, the bundle reader,
the parity helper and the target's own runtime library (imported lazily).
The base class, the registry and the input checks are in
:mod:`edgesmith.runtimes.base`; this package registers the built-in runtimes
(imported here, in one place) and opens and checks bundles with them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgesmith.bundle import Bundle
from edgesmith.errors import BadInputError
from edgesmith.runtimes.base import RUNTIMES, Runtime


def open_runtime(bundle: str | Path | Bundle, threads: int = 0, accelerator: str | None = None,
                 compiled: bool = False) -> Runtime:
    """Open a bundle (verifying it) with the runtime its manifest names.

    Args:
        bundle: The bundle.
        threads: Intra-op threads (0 = the runtime's default).
        accelerator: ``cpu`` or ``cuda`` (None: the runtime's own, the CPU except for TensorRT).
        compiled: Compile first (torch bundles).

    Raises:
        BadInputError: The bundle fails verification.
        RuntimeUnavailableError: The runtime's library is missing here, or it cannot run on that
            accelerator (exit code 5).
        UsageError: It has nothing to compile.
    """
    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle)
    if bundle.manifest.runtime not in RUNTIMES.names() and bundle.manifest.runtime not in RUNTIMES.broken():
        raise BadInputError(f"bundle {bundle.path}: its manifest names the runtime {bundle.manifest.runtime!r}, "
                            "which edgesmith does not have",
                            hint=f"runtimes: {', '.join(RUNTIMES.names())}; a plugin's runtime needs its package")
    cls = RUNTIMES.get(bundle.manifest.runtime)
    cls.available()
    return cls(bundle, threads=threads, accelerator=accelerator, compiled=compiled)


def check_bundle(bundle: str | Path | Bundle, extra: list[tuple[dict, dict]] = (), threads: int = 0):
    """Run a bundle on its golden inputs and compare with the golden outputs.

    Args:
        bundle: The bundle (verified on open).
        extra: More ``(inputs, reference outputs)`` pairs to check (e.g. another batch size), or
            ``(inputs, reference outputs, label)`` (the label names them in the result: ``prefill``).
        threads: Runtime threads.

    Returns:
        The :class:`~edgesmith.parity.ParityResult`, at the runtime's tier.
    """
    from edgesmith.parity import compare

    runtime = open_runtime(bundle, threads)
    m = runtime.bundle.manifest
    inputs, reference = runtime.bundle.golden()
    classify = m.task in ("classifier", "lm")
    result = compare(reference, runtime.run(inputs), precision=m.precision, tier=runtime.tier, classify=classify)
    for feeds, ref, *label in extra:
        more = compare(ref, runtime.run(feeds), precision=m.precision, tier=runtime.tier, classify=classify)
        tag = label[0] if label else f"batch{next(iter(feeds.values())).shape[0]}"
        result.failures += [f"{f} ({tag.replace('batch', 'batch ', 1) if not label else tag})" for f in more.failures]
        result.outputs += [dataclasses.replace(o, name=f"{o.name}@{tag}") for o in more.outputs]
        result.passed = not result.failures
    return result


def _register_builtins() -> None:
    from edgesmith.runtimes import coreml, hls, mlx, onnxruntime, tensorrt, torch  # noqa: F401


_register_builtins()
