"""The op table: MIL op type -> a small numpy function computing it.

Each function takes the op's inputs as keyword arguments named as in the MIL
op definition (``coremltools/converters/mil/mil/ops/defs``), with the optional
ones defaulted as there, and returns an array (or a tuple for ops with several
outputs). Floating-point inputs arrive as float32 (fp16 values widened exactly);
the program rounds every result to the dtype its op declares, so an fp16 program
is evaluated with fp16 storage between ops and fp32 arithmetic inside each op.

The op modules (:mod:`~edgesmith.runtimes.coreml.mil.elementwise`, ``nn``,
``tensor``) register into :data:`OPS`, with ``variadic=(...)`` naming the inputs
that take a tuple of values (``concat``'s ``values``);
:mod:`~edgesmith.runtimes.coreml.mil.program`, which runs the table, imports them.
"""

from __future__ import annotations

from edgesmith.registry import OpTable

OPS: OpTable = OpTable("the Core ML evaluator", "implementation",
                       hint="run the bundle on macOS, where Core ML itself runs it")
