"""A numpy evaluator for Core ML ML programs, for running ``coreml`` bundles off macOS.

Core ML itself only runs on Apple platforms. Elsewhere, :class:`MilProgram`
reads the converted program from ``model.mlpackage`` (the ``Model`` protobuf and
its weight blobs) and runs it op by op, each op a small numpy function in the
op table (:data:`~edgesmith.runtimes.coreml.mil.table.OPS`) following the op
definitions of coremltools' MIL (``coremltools/converters/mil/mil/ops/defs``).
Results are rounded to each op's declared dtype, so an fp16 program shows fp16
rounding. It is a faithful stand-in for parity (tier ``emulated``), not a
latency model. numpy and protobuf only: torch and coremltools' converters are
never imported.
"""

from edgesmith.runtimes.coreml.mil.program import MilProgram
from edgesmith.runtimes.coreml.mil.table import OPS

__all__ = ["MilProgram", "OPS"]
