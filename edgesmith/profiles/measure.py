"""Measuring a bundle here: latency distribution, load time, memory, per-layer time.

``host`` is this machine's CPU. A GPU device from the catalog is measurable where
the first CUDA GPU here is that device (:func:`gpu_here`);
``cuda:0`` names that GPU whatever it is. Memory is host resident memory in both cases,
measured in a fresh child process (:func:`peak_memory_mb`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

from edgesmith.devices.catalog import Device
from edgesmith.errors import UsageError
from edgesmith.profiles.profile import LatencyStats, LayerTime, Profile


def gpu_here(device_files=()) -> Device | None:
    """The catalog (or user) device that the first CUDA GPU here is, or None (no GPU, or none matches).

    Args:
        device_files: The user's device files (the GPU may be one of theirs).
    """
    from edgesmith.devices.catalog import list_devices, match_gpu
    from edgesmith.runtimes.tensorrt.cuda import gpus

    names = gpus()
    return match_gpu(names[0], list_devices(device_files)) if names else None


def measurable_here(device_files=()) -> dict[str, str]:
    """Device name -> accelerator for what can be measured here: ``host``, and the GPU if there is one."""
    from edgesmith.runtimes.tensorrt.cuda import gpus

    found = {"host": "cpu"}
    if gpus():
        found["cuda:0"] = "cuda"
        here = gpu_here(device_files)
        if here is not None:
            found[here.name] = "cuda"
    return found


def _accelerator(device: str, device_files) -> str:
    """The accelerator that measures ``device``, or the error saying what can be measured here."""
    from edgesmith.devices.catalog import gpu_slug
    from edgesmith.runtimes.tensorrt.cuda import gpus

    here = measurable_here(device_files)
    if device in here:
        return here[device]
    gpu = gpus()
    unmatched = (f"; the GPU here, {gpu[0]!r}, matches no catalog device: add it with --device-file "
                 f"(name: {gpu_slug(gpu[0])})" if gpu and len(here) == 2 else "")
    raise UsageError(f"cannot measure on device {device!r} here",
                     hint=f"measurable here: {', '.join(here)}{unmatched}; other devices are predicted")


def peak_memory_mb(bundle: str | Path, *, threads: int = 0, accelerator: str | None = None,
                   compiled: bool = False, inputs: dict[str, np.ndarray] | None = None,
                   timeout_s: float = 600.0) -> float | None:
    """Peak memory of loading and running ``bundle``, measured in a fresh child process.

    The one mechanism behind every profile's memory figure (``profile``, ``run RECIPE`` and
    ``sweep`` alike): a process that has already loaded other bundles keeps its allocators'
    memory, so only a fresh one says what this bundle costs. The child is
    ``python -m edgesmith.runtimes.memory`` (see :mod:`edgesmith.runtimes.memory` for what the
    figure counts).

    Args:
        bundle: The bundle directory.
        threads: Runtime intra-op threads (0 = the runtime's default).
        accelerator: ``cpu`` or ``cuda``.
        compiled: Compile first (torch bundles).
        inputs: Inputs to run (default: the bundle's golden inputs).
        timeout_s: Give up (figure unknown) after this long.

    Returns:
        The figure in MiB, or None when it is unknown (the OS gives no peak, the child failed or
        timed out): a profile then shows it as unknown rather than as a number that misleads.
    """
    import json
    import os
    import subprocess
    import sys
    import tempfile

    import edgesmith

    env = dict(os.environ)
    # the child imports this very edgesmith, installed or not
    root = str(Path(edgesmith.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "edgesmith.runtimes.memory", str(bundle), "--threads", str(threads)]
    cmd += ["--accelerator", accelerator] if accelerator else []
    cmd += ["--compiled"] if compiled else []
    with tempfile.TemporaryDirectory(prefix="edgesmith-memory-") as tmp:
        if inputs is not None:
            np.savez(Path(tmp) / "inputs.npz", **inputs)
            cmd += ["--inputs", str(Path(tmp) / "inputs.npz")]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            return None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None
    return json.loads(lines[-1]).get("peak_memory_mb")


def time_runs(fn: Callable[[], object], warmup: int, runs: int,
              progress: Callable[[int], None] | None = None) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times timed.

    Returns:
        One latency per timed run, in milliseconds.
    """
    for _ in range(warmup):
        fn()
    samples = []
    for i in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1e6)
        if progress:
            progress(i + 1)
    return samples


def aggregate_layers(node_times: list[dict]) -> list[LayerTime]:
    """Sum runtime node times per source module (``op:<type>`` where none is known)."""
    by_layer: dict[str, float] = defaultdict(float)
    ops: dict[str, set[str]] = defaultdict(set)
    for nt in node_times:
        key = nt["scope"] or f"op:{nt['op_type']}"
        by_layer[key] += nt["mean_ms"]
        ops[key].add(nt["op_type"])
    total = sum(by_layer.values()) or 1.0
    return [
        LayerTime(name=k, op_types=sorted(ops[k]), mean_ms=v, share=v / total)
        for k, v in sorted(by_layer.items(), key=lambda kv: -kv[1])
    ]


def profile_bundle(
    bundle: str | Path,
    *,
    device: str = "host",
    warmup: int = 10,
    runs: int = 100,
    threads: int = 0,
    inputs: dict[str, np.ndarray] | None = None,
    layers: bool = True,
    progress: Callable[[int], None] | None = None,
    compiled: bool = False,
    device_files=(),
) -> Profile:
    """Measure a bundle on this machine.

    Args:
        bundle: The bundle directory (verified on load).
        device: Where to measure: ``host``, or the GPU here (its catalog name, or ``cuda:0``).
        warmup: Untimed runs first.
        runs: Timed runs.
        threads: Runtime intra-op threads (0 = runtime default).
        inputs: Inputs to time (default: the bundle's golden inputs).
        layers: Also collect per-layer times from the runtime's profiler.
        progress: Called with the number of timed runs done.
        compiled: Run torch bundles under ``torch.compile`` (compiled during the warm-up runs).
        device_files: The user's device files (a GPU here may be one of theirs).

    Returns:
        A ``measured`` :class:`Profile`.

    Raises:
        UsageError: A device that is not here, or fewer than one run.
    """
    from edgesmith.runtimes import open_runtime

    accelerator = _accelerator(device, device_files)
    if runs < 1:
        raise UsageError(f"--runs must be at least 1, got {runs}")
    if compiled:
        from edgesmith.bundle import Bundle
        from edgesmith.runtimes import RUNTIMES

        # among several bundles, only those whose runtime compiles (torch) are compiled
        compiled = RUNTIMES.get(Bundle.open(bundle, verify=False).manifest.runtime).compiles
        warmup = max(warmup, 3) if compiled else warmup  # the first calls compile
    start = time.perf_counter()
    runtime = open_runtime(bundle, threads=threads, accelerator=accelerator, compiled=compiled)
    load_ms = (time.perf_counter() - start) * 1e3
    feeds = runtime.prepare(inputs if inputs is not None else runtime.bundle.golden()[0])
    samples = time_runs(lambda: runtime.run_prepared(feeds), warmup, runs, progress)
    # after the timed runs: the child would compete with them for the cores
    memory_mb = peak_memory_mb(runtime.bundle.path, threads=threads, accelerator=accelerator,
                                  compiled=compiled, inputs=inputs)
    layer_times = aggregate_layers(runtime.node_times(feeds, min(runs, 20))) if layers and accelerator == "cpu" else []
    m = runtime.bundle.manifest
    stats = LatencyStats.from_samples(samples)
    batch = int(next(iter(feeds.values())).shape[0]) if feeds and next(iter(feeds.values())).ndim else 1
    return Profile(
        name=m.name, target=m.target, runtime=m.runtime, device=device, mode="measured",
        latency_ms=stats, samples_ms=samples, throughput_per_s=batch * 1e3 / stats.p50 if stats.p50 else 0.0,
        batch=batch, load_time_ms=load_ms, peak_memory_mb=memory_mb,
        file_size_bytes=runtime.bundle.size_bytes(), warmup=warmup, runs=runs, threads=threads,
        layers=layer_times, parity=m.parity, passes=m.passes, bundle=str(runtime.bundle.path),
        timing=runtime.timing,
    )
