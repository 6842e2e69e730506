"""Peak memory of loading and running a bundle, measured in a fresh process.

A process that has already exported, checked parity or profiled other bundles keeps
the memory its allocators grew to, so the rise of *its* resident set while one more
bundle loads says little (often nothing: 0.0 MiB). The figure every profile reports
instead comes from a child that does only this job::

    python -m edgesmith.runtimes.memory BUNDLE [--threads N] [--accelerator cpu]
        [--compiled] [--inputs feeds.npz] [--runs 3]

It records the process's high-water resident set (``VmHWM`` on Linux, ``ru_maxrss``
elsewhere) once the interpreter, numpy and this layer are imported, then opens the bundle with
its runtime (which imports the runtime's library), runs it and reads the high-water
mark again. The figure is the difference: what loading the runtime library and the
model and running it add to a bare Python process's peak resident memory, in MiB.
It prints one JSON line, ``{"peak_memory_mb": ..., "baseline_mb": ..., "peak_rss_mb": ...}``.

Like the rest of :mod:`edgesmith.runtimes` it imports no torch of its own (a torch
bundle's runtime does, and that is part of what the figure counts), so it runs from a
runtime-only install on the device.
"""

from __future__ import annotations

import argparse
import json
import sys

#: What the figure means, for tables and reports.
MEANING = ("peak resident memory that loading and running the bundle adds to a fresh Python process "
           "(runtime library + model + run; the bare interpreter and numpy not counted)")


def high_water_mb() -> float | None:
    """This process's peak resident set so far, in MiB (None where the OS does not say)."""
    try:
        # Linux: the high-water mark of this process's own address space. getrusage's ru_maxrss
        # would not do: it carries over the parent's resident set through fork and exec, so a
        # child of a large process (one with torch loaded) would report the parent's peak.
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows: no getrusage
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # macOS reports bytes, others KiB


def measure(bundle: str, threads: int = 0, accelerator: str | None = None, compiled: bool = False,
            inputs: str | None = None, runs: int = 3) -> dict[str, float | None]:
    """Open ``bundle``, run it ``runs`` times and report this process's peak memory.

    Call it in a fresh process (``python -m edgesmith.runtimes.memory``); anywhere else the
    baseline includes whatever the process held before.

    Args:
        bundle: The bundle directory.
        threads: Runtime intra-op threads (0 = the runtime's default).
        accelerator: ``cpu`` or ``cuda`` (None: the runtime's own).
        compiled: Compile first (torch bundles).
        inputs: An ``.npz`` of inputs (default: the bundle's golden inputs).
        runs: Runs after loading (an allocator reaches its size in the first few).

    Returns:
        ``peak_memory_mb`` (the rise, see the module docstring), ``baseline_mb`` and
        ``peak_rss_mb``, all None where the OS gives no peak.
    """
    from edgesmith.arrays import load_arrays
    from edgesmith.runtimes import open_runtime

    baseline = high_water_mb()
    runtime = open_runtime(bundle, threads=threads, accelerator=accelerator, compiled=compiled)
    if inputs:
        feeds = load_arrays(inputs, "inputs")
    else:
        feeds = runtime.bundle.golden()[0]
    prepared = runtime.prepare(feeds)
    for _ in range(max(runs, 1)):
        runtime.run_prepared(prepared)
    peak = high_water_mb()
    rise = None if peak is None or baseline is None else max(peak - baseline, 0.0)
    return {"peak_memory_mb": rise, "baseline_mb": baseline, "peak_rss_mb": peak}


def main(argv: list[str] | None = None) -> int:
    """Command line of the child process (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m edgesmith.runtimes.memory", description=__doc__.split("\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--accelerator", default=None)
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--inputs", default=None)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    result = measure(args.bundle, args.threads, args.accelerator, args.compiled, args.inputs, args.runs)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
