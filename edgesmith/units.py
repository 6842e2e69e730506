"""How sizes and durations are written, everywhere edgesmith prints one.

Memory and file sizes use binary units with their IEC names (KiB, MiB, GiB: 1024
steps), so a size, a peak memory and a model's weights read in the same unit; a
figure is scaled to the largest unit it reaches (``86.7 MiB``, never ``88830 KiB``).
Durations carry their unit (``0.185 us``, ``12.3 ms``), chosen the same way, so a
sub-microsecond FPGA latency and a CPU latency are written by one rule.
"""

from __future__ import annotations

import math

_BYTES = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))
_SECONDS = (("s", 1e3), ("ms", 1.0), ("us", 1e-3), ("ns", 1e-6))


def _sig(v: float, digits: int) -> str:
    """``v`` with ``digits`` significant digits (at least), never in scientific notation."""
    if v == 0:
        return "0"
    decimals = max(digits - 1 - math.floor(math.log10(abs(v))), 0)
    return f"{v:.{decimals}f}"


def format_bytes(n: float | None, digits: int = 3) -> str:
    """A byte count in the largest binary unit it reaches: ``512 B``, ``3.34 MiB``, ``1.20 GiB``.

    Args:
        n: Bytes (None or a negative number: unknown, ``—``).
        digits: Significant digits.
    """
    if n is None or not isinstance(n, (int, float)) or n < 0 or not math.isfinite(n):
        return "—"
    for unit, scale in _BYTES:
        if n >= scale:
            return f"{_sig(n / scale, digits)} {unit}"
    return f"{int(n)} B"


def format_mib(mib: float | None, digits: int = 3) -> str:
    """A figure given in MiB (peak memory), written like :func:`format_bytes`; ``—`` when unknown."""
    return "—" if mib is None else format_bytes(mib * 2**20, digits)


def format_duration(ms: float | None, digits: int = 3) -> str:
    """A duration given in milliseconds, in the largest unit it reaches: ``0.185 us``, ``12.3 ms``.

    Args:
        ms: Milliseconds (None: unknown, ``—``).
        digits: Significant digits.
    """
    if ms is None or not isinstance(ms, (int, float)) or not math.isfinite(ms):
        return "—"
    if ms == 0:
        return "0 ms"
    for unit, scale in _SECONDS:
        if abs(ms) >= scale:
            return f"{_sig(ms / scale, digits)} {unit}"
    return f"{_sig(ms / 1e-6, digits)} ns"
