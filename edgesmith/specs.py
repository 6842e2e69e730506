"""Tensor signatures: names, shapes, dtypes and dynamic axes, without torch.

Used by models (what a model takes), bundles (what a manifest records) and
runtimes (what a device is fed), so it depends on numpy only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgesmith.errors import UsageError

_DTYPES = {"float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"}
_SPEC_RE = re.compile(r"^(?P<name>[A-Za-z_][\w.]*):(?P<shape>\d+(?:x\d+)*)(?::(?P<dtype>\w+))?$")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output.

    Attributes:
        name: Tensor name, as the model and the artifact call it.
        shape: Example shape; the size used for golden data.
        dtype: numpy dtype name (``float32``, ``int64``...).
        dynamic: Axis index -> symbolic name for axes that may vary (e.g. ``{0: "batch"}``).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    dynamic: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest form."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "dynamic_axes": {str(k): v for k, v in sorted(self.dynamic.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TensorSpec":
        """Rebuild a spec from :meth:`to_dict` output."""
        return cls(
            name=data["name"],
            shape=tuple(int(d) for d in data["shape"]),
            dtype=data["dtype"],
            dynamic={int(k): v for k, v in data.get("dynamic_axes", {}).items()},
        )

    def describe(self) -> str:
        """Return ``name: 1x3x224x224 float32`` with dynamic axes named."""
        dims = [self.dynamic.get(i, str(d)) for i, d in enumerate(self.shape)]
        return f"{self.name}: {'x'.join(dims) or 'scalar'} {self.dtype}"


def parse_input_spec(text: str) -> TensorSpec:
    """Parse a ``--input name:1x3x224x224:float32`` option (dtype defaults to float32).

    Raises:
        UsageError: If the text does not have that form or names an unknown dtype.
    """
    m = _SPEC_RE.match(text.strip())
    if not m:
        raise UsageError(
            f"cannot read --input {text!r}", hint="write it as name:1x3x224x224:float32"
        )
    dtype = m["dtype"] or "float32"
    if dtype not in _DTYPES:
        raise UsageError(
            f"--input {text!r}: unknown dtype {dtype!r}", hint=f"use one of {', '.join(sorted(_DTYPES))}"
        )
    shape = tuple(int(d) for d in m["shape"].split("x") if d)
    if any(d <= 0 for d in shape):
        raise UsageError(f"--input {text!r}: every dimension must be positive")
    return TensorSpec(m["name"], shape, dtype)


def example_array(spec: TensorSpec, seed: int = 0) -> np.ndarray:
    """Make a deterministic example tensor for a spec (normal floats, small ints, booleans)."""
    rng = np.random.default_rng(seed)
    if spec.dtype == "bool":
        return rng.random(spec.shape) < 0.5
    if np.issubdtype(np.dtype(spec.dtype), np.integer):
        return rng.integers(0, 2, size=spec.shape).astype(spec.dtype)
    return rng.standard_normal(spec.shape).astype(spec.dtype)
