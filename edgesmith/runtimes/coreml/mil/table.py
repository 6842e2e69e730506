"""The op table: MIL op type -> a small numpy function computing it.

Each function takes the op's inputs as keyword arguments named as in the MIL
op definition (``coremltools/converters/mil/mil/ops/defs``), with the optional
ones defaulted as there, and returns an array (or a tuple for ops with several
outputs). Floating-point inputs arrive as float32 (fp16 values widened exactly);
the program rounds every result to the dtype its op declares, so an fp16 program
is evaluated with fp16 storage between ops and fp32 arithmetic inside each op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class OpDef:
    """One evaluated op.

    Attributes:
        name: The MIL op type.
        fn: The numpy implementation.
        variadic: Inputs that take a tuple of values (``concat``'s ``values``).
    """

    name: str
    fn: Callable
    variadic: tuple[str, ...] = ()


OPS: dict[str, OpDef] = {}


def op(*names: str, variadic: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Register a function for one or more MIL op types."""

    def register(fn: Callable) -> Callable:
        for name in names:
            if name in OPS:
                raise ValueError(f"MIL op {name!r} is registered twice")
            OPS[name] = OpDef(name, fn, variadic)
        return fn

    return register


def ops() -> dict[str, OpDef]:
    """The complete op table (the op modules register themselves on first import)."""
    from edgesmith.runtimes.coreml.mil import elementwise, nn, tensor  # noqa: F401

    return OPS
