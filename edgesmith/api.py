"""The Python API: the same steps as the command line, one function each.

Example::

    from edgesmith import api as es

    variant = es.load("zoo:digits-cnn")
    variant = es.optimize(variant, ["reparam"])
    bundle, parity = es.export(variant, "out", target="onnx")
    doc = es.profile([bundle.path])
    es.report([doc], "out/report.html")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from edgesmith.specs import TensorSpec, parse_input_spec


def load(model: str, *, weights: str | None = None, inputs: Iterable[str | TensorSpec] = (),
         gguf: str | None = None, seq_len: int | None = None, name: str | None = None):
    """Load a MODEL reference (see ARCHITECTURE.md) into a variant.

    Args:
        model: ``path.pt2``, a checkpoint directory, ``py:mod:factory``, ``path.onnx`` or ``zoo:NAME``.
        weights: Weights for a ``py:`` factory (loaded with ``weights_only=True``).
        inputs: Input specs (``"name:1x3x224x224:float32"`` or :class:`TensorSpec`).
        gguf: GGUF file inside a checkpoint directory.
        seq_len: Example sequence length for language models.
        name: Variant name.
    """
    from edgesmith.models import load_model

    specs = [parse_input_spec(s) if isinstance(s, str) else s for s in inputs]
    return load_model(model, weights=weights, inputs=specs or None, gguf=gguf, seq_len=seq_len, name=name)


def optimize(variant, passes: Iterable[str], *, defaults: dict[str, Any] | None = None,
             progress: Callable[[str, int, int], None] | None = None):
    """Apply passes given as ``NAME[:key=value,...]`` (``edgesmith passes list``).

    Args:
        variant: From :func:`load`.
        passes: Pass specs, applied in order.
        defaults: Values for options a spec leaves unset, given to each pass that has the option,
            e.g. ``{"data": "digits.npz", "checkpoint": "student.ckpt", "resume": True}`` for ``distill``.
        progress: ``(description, completed, total)`` callback of long passes (``distill``).
    """
    from edgesmith.optimize import apply_passes

    text = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (defaults or {}).items()}
    return apply_passes(variant, list(passes), text, progress)


def export(variant, out: str | Path, *, target: str = "onnx", name: str | None = None,
           options: dict[str, str] | None = None, force: bool = False, keep_failed: bool = False):
    """Export a variant to ``OUT/NAME.TARGET`` and check its parity.

    Returns:
        ``(Bundle, ParityResult)``.

    Raises:
        ParityError: The artifact computes something else than the source model.
    """
    from edgesmith.export import get_exporter

    return get_exporter(target, options).export(variant, out, name=name, force=force, keep_failed=keep_failed)


def verify(bundle: str | Path, threads: int = 0):
    """Verify a bundle's files and re-run its golden data on its runtime.

    Returns:
        The :class:`~edgesmith.parity.ParityResult` (check ``.passed``).
    """
    from edgesmith.runtimes import check_bundle

    return check_bundle(bundle, threads=threads)


def run(bundle: str | Path, inputs: dict[str, np.ndarray], threads: int = 0) -> dict[str, np.ndarray]:
    """Run a bundle on inputs (name -> array) with its runtime."""
    from edgesmith.runtimes import open_runtime

    return open_runtime(bundle, threads=threads).run(inputs)


def profile(bundles: Iterable[str | Path], *, device: str = "host", warmup: int = 10, runs: int = 100,
            threads: int = 0, layers: bool = True,
            progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Profile bundles on a device and return a profile document.

    Args:
        bundles: Bundle directories; a plain ``.onnx`` file is packaged into a
            temporary bundle first.
        device: ``host`` (measured).
        warmup: Untimed runs.
        runs: Timed runs.
        threads: Runtime threads (0 = default).
        layers: Collect per-layer times.
        progress: Called as ``progress(bundle_name, runs_done)``.
    """
    import tempfile

    from edgesmith.devices.catalog import get_device
    from edgesmith.devices.host import fingerprint
    from edgesmith.errors import UsageError
    from edgesmith.profiles.measure import profile_bundle
    from edgesmith.profiles.profile import profile_document

    target_device = get_device(device)  # an unknown name fails here, with the closest known ones
    if target_device.name != "host":
        raise UsageError(f"device {device!r} is not this machine, and edgesmith cannot predict latency yet",
                         hint="profile with --device host; prediction from the device's figures is planned")
    entries = []
    with tempfile.TemporaryDirectory(prefix="edgesmith-profile-") as tmp:
        for b in bundles:
            cb = (lambda n, _b=str(b): progress(_b, n)) if progress else None
            path = b
            if Path(b).suffix == ".onnx" and not Path(b).is_dir():
                path = export(load(str(b)), tmp, target="onnx")[0].path
            entry = profile_bundle(path, device=device, warmup=warmup, runs=runs, threads=threads,
                                   layers=layers, progress=cb)
            entry.bundle = str(b)
            entries.append(entry)
    return profile_document(entries, fingerprint(threads))


def report(profiles: Iterable[dict[str, Any] | str | Path], out: str | Path, force: bool = False) -> list[Path]:
    """Write a report (``.html`` + ``.md``, ``.md`` or ``.json``) from profile documents or files."""
    from edgesmith.profiles.profile import read_profile_document
    from edgesmith.profiles.report import write_report

    docs = [p if isinstance(p, dict) else read_profile_document(p) for p in profiles]
    return write_report(docs, out, force=force)


def models(patterns: Iterable[str] = (), details: bool = False,
           progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The built-in models: ``{"name", "task", "summary", "options"}`` each.

    Args:
        patterns: Shell-style name patterns (``lsnet-*``); all models if empty.
        details: Also count parameters and MACs (batch 1; backbones at 224x224 with 1000 classes)
            and give the paper's figures where the model has a paper (see
            :func:`edgesmith.models.complexity.zoo_complexity`); loads every model.
        progress: Called with each model's name before it is counted.
    """
    import dataclasses
    import fnmatch

    from edgesmith.errors import UsageError
    from edgesmith.models.complexity import zoo_complexity
    from edgesmith.models.zoo import ZOO

    patterns = [p.removeprefix("zoo:").replace("_", "-") for p in patterns]
    names = [n for n in ZOO.names() if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]
    if not names:
        raise UsageError(f"no zoo model matches {' '.join(patterns)}", hint="see edgesmith models list")
    rows = []
    for name in names:
        entry = ZOO.get(name)
        options = [f.name for f in dataclasses.fields(entry.Options)] if entry.Options else []
        row = {"name": f"zoo:{name}", "task": entry.task, "summary": entry.summary, "options": options}
        if details:
            if progress:
                progress(name)
            row.update(zoo_complexity(entry))
        rows.append(row)
    return rows


def devices(device_files: Iterable[str | Path] = ()) -> list:
    """The host, the catalog's devices and the user's device files, as :class:`~edgesmith.devices.catalog.Device`."""
    from edgesmith.devices.catalog import list_devices

    return list_devices(list(device_files))


def device(name: str, device_files: Iterable[str | Path] = ()):
    """One device by name (``host``, a catalog name, or one defined in ``device_files``)."""
    from edgesmith.devices.catalog import get_device

    return get_device(name, list(device_files))


def inspect(variant) -> dict[str, Any]:
    """Parameters, size, signature, FLOPs and op histogram of a variant."""
    from edgesmith.models.inspect import inspect_variant

    return inspect_variant(variant)
