"""The machine edgesmith runs on: detection and an environment fingerprint."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib import metadata
from typing import Any

_LIBRARIES = ("edgesmith", "numpy", "onnx", "onnxruntime", "onnxscript", "torch", "transformers")


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name, or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def fingerprint(threads: int = 0) -> dict[str, Any]:
    """Describe the host for a profile: CPU, cores, memory, OS, library versions.

    Args:
        threads: Intra-op threads used by the measurement (0 = runtime default).
    """
    import psutil

    libs = {}
    for name in _LIBRARIES:
        try:
            libs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "device": "host",
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cores_logical": os.cpu_count(),
        "cores_usable": usable_cores(),
        "threads": threads,
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "libraries": libs,
    }
