"""Measuring a bundle here: latency distribution, load time, memory, per-layer time.

``host`` is this machine's CPU. A GPU device from the catalog is measurable where
the first CUDA GPU here is that device (:func:`edgesmith.devices.catalog.gpu_here`);
``cuda:0`` names that GPU whatever it is. Memory is this process's resident (host)
memory in both cases.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

from edgesmith.errors import UsageError
from edgesmith.profiles.profile import LatencyStats, LayerTime, Profile


def measurable_here(device_files=()) -> dict[str, str]:
    """Device name -> accelerator for what can be measured here: ``host``, and the GPU if there is one."""
    from edgesmith.devices.catalog import gpu_here
    from edgesmith.runtimes.cuda import gpus

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
    from edgesmith.runtimes.cuda import gpus

    here = measurable_here(device_files)
    if device in here:
        return here[device]
    gpu = gpus()
    unmatched = (f"; the GPU here, {gpu[0]!r}, matches no catalog device: add it with --device-file "
                 f"(name: {gpu_slug(gpu[0])})" if gpu and len(here) == 2 else "")
    raise UsageError(f"cannot measure on device {device!r} here",
                     hint=f"measurable here: {', '.join(here)}{unmatched}; other devices are predicted")


class PeakRSS:
    """Sample this process's resident memory in a thread; ``peak_mb`` is the rise over the start."""

    def __init__(self, interval_s: float = 0.002):
        import psutil

        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.baseline = self._proc.memory_info().rss
        self.peak = self.baseline
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        """Peak resident memory above the baseline, in MiB."""
        return (self.peak - self.baseline) / 2**20


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
    with PeakRSS() as mem:
        start = time.perf_counter()
        runtime = open_runtime(bundle, threads=threads, accelerator=accelerator, compiled=compiled)
        load_ms = (time.perf_counter() - start) * 1e3
        feeds = runtime.prepare(inputs if inputs is not None else runtime.bundle.golden()[0])
        samples = time_runs(lambda: runtime.run_prepared(feeds), warmup, runs, progress)
    layer_times = aggregate_layers(runtime.node_times(feeds, min(runs, 20))) if layers and accelerator == "cpu" else []
    m = runtime.bundle.manifest
    stats = LatencyStats.from_samples(samples)
    batch = int(next(iter(feeds.values())).shape[0]) if feeds and next(iter(feeds.values())).ndim else 1
    return Profile(
        name=m.name, target=m.target, runtime=m.runtime, device=device, mode="measured",
        latency_ms=stats, samples_ms=samples, throughput_per_s=batch * 1e3 / stats.p50 if stats.p50 else 0.0,
        batch=batch, load_time_ms=load_ms, peak_memory_mb=mem.peak_mb,
        file_size_bytes=runtime.bundle.size_bytes(), warmup=warmup, runs=runs, threads=threads,
        layers=layer_times, parity=m.parity, passes=m.passes, bundle=str(runtime.bundle.path),
        timing=runtime.timing,
    )
