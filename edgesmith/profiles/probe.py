"""The latency probe handed to passes: a candidate module exported to ONNX and profiled on a device.

A pass that searches within a latency budget (MatFormer's Mix'n'Match) needs the latency of
modules it builds. It may not import the exporters or the profiler (they sit above it), and
this layer may not import the exporters either, so :func:`edgesmith.api.optimize` binds the
export and profile functions here and hands the result to the passes in their context.
"""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Any, Callable


def latency_probe(variant, device: str, runs: int = 30, *, export: Callable[..., Any],
                  profile: Callable[..., dict[str, Any]]) -> Callable[[Any], tuple[float, str]]:
    """``probe(module) -> (p50 ms, mode)``: the module exported to ONNX and profiled on ``device``.

    Args:
        variant: The variant whose signature, example inputs and name the probed modules share.
        device: ``host`` (measured) or a catalog device (predicted).
        runs: Timed runs per measurement.
        export: :func:`edgesmith.api.export`.
        profile: :func:`edgesmith.api.profile`.

    Returns:
        The probe; ``mode`` is the profile's (``measured`` or ``predicted``).
    """

    def probe(module) -> tuple[float, str]:
        candidate = dataclasses.replace(variant, module=module, name=f"{variant.name}-candidate")
        with tempfile.TemporaryDirectory(prefix="edgesmith-mixnmatch-") as tmp:
            bundle, _ = export(candidate, tmp, target="onnx")
            doc = profile([bundle.path], device=device, warmup=5, runs=runs, layers=False)
        entry = doc["entries"][0]
        return float(entry["latency_ms"]["p50"]), entry["mode"]

    return probe
