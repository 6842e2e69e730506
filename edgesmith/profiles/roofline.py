"""The roofline model's figures: what the host reaches (:class:`Calibration`) and an op's roofline time.

An op takes at least the longer of computing its FLOPs at the peak and moving its
bytes at the memory bandwidth (Williams, Waterman and Patterson, "Roofline: an
insightful visual performance model for multicore architectures", CACM 2009).
:mod:`edgesmith.profiles.calibrate` measures the host's figures and
:mod:`edgesmith.profiles.predict` sums the roofline over a graph's nodes; both read
them from here, so neither leans on the other for the model itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CALIBRATION_VERSION = 4

#: What ``efficiency[class]`` is, for tables and reports (see :mod:`edgesmith.profiles.calibrate`).
EFFICIENCY_MEANING = ("roofline time / measured time per op class: 1 = at the roofline of the GEMM peak and "
                      "DRAM bandwidth; above 1 = faster than it (the op's data stayed in cache)")


@dataclass(frozen=True)
class Calibration:
    """Measured figures of the host (how each is measured: :mod:`edgesmith.profiles.calibrate`).

    Attributes:
        peak_gflops: What a large GEMM reaches, GFLOP/s.
        bandwidth_gbs: What a large elementwise add reaches, GB/s.
        efficiency: Per op class, roofline time / measured time (a speed factor, not a share).
        op_overhead_us: What one more trivial node adds to a run.
        kernel_floor_us: The shortest kernel of the suite.
        run_overhead_us: What a run costs beyond its nodes.
        spread: Median relative error of the calibrated roofline on the suite itself.
        threads: ONNX Runtime intra-op threads it applies to (0 = runtime default).
        graph_factor: Measured / predicted whole run of the reference network.
        reference: That network's ``measured_ms`` and ``predicted_ms``.
        machine: The CPU, cores, OS and ONNX Runtime version it was measured with.
        suite: One row per suite op (label, class, FLOPs, bytes, kernel and predicted ms).
        version: :data:`CALIBRATION_VERSION` when it was measured.
    """

    peak_gflops: float
    bandwidth_gbs: float
    efficiency: dict[str, float]
    op_overhead_us: float
    kernel_floor_us: float
    run_overhead_us: float
    spread: float
    threads: int
    graph_factor: float = 1.0
    reference: dict[str, float] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    suite: list[dict[str, Any]] = field(default_factory=list)
    version: int = CALIBRATION_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibration":
        """Rebuild from :meth:`to_dict` output."""
        return cls(**data)


def roofline_ms(flops: float, nbytes: float, gflops: float, gbs: float) -> float:
    """The roofline time of an op: the slower of computing and moving its data, in ms."""
    return max(flops / (gflops * 1e6), nbytes / (gbs * 1e6))
