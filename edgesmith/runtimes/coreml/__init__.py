"""Core ML loader for ``coreml`` bundles (``model.mlpackage``).

On macOS, where coremltools' native predictor loads, the package runs on Core
ML itself (``MLModel.predict`` with the compute units the bundle was exported
for): tier ``verified``, timings measured. Elsewhere the ML program is run op by
op by the numpy evaluator in :mod:`edgesmith.runtimes.coreml.mil`: tier
``emulated``, and its timings are the evaluator's, not a Core ML latency
(``timing = "emulated"``, which profiles record and reports show).

No torch here: the evaluator reads the package with protobuf only (see
:mod:`~edgesmith.runtimes.coreml.mil.mlpackage`). The macOS path imports
coremltools, which imports torch only if it is installed.
"""

from __future__ import annotations

import sys

import numpy as np

from edgesmith.errors import BadInputError
from edgesmith.quiet import quiet
from edgesmith.runtimes.base import RUNTIMES, Runtime

# Core ML multi-array data types (FeatureTypes.proto ArrayDataType) -> numpy
_ARRAY_DTYPES = {65568: np.float32, 65552: np.float16, 65600: np.float64, 131104: np.int32}


def native_coreml():
    """coremltools' ``MLModel`` where Core ML can run here (macOS with its native predictor), else None."""
    if sys.platform != "darwin":
        return None
    try:
        with quiet("coremltools"):
            import coremltools
            from coremltools.models import model as ct_model
    except ImportError:
        return None
    if getattr(ct_model, "_MLModelProxy", None) is None:
        return None
    return coremltools


@RUNTIMES.register
class CoremlRuntime(Runtime):
    """Runs ``model.mlpackage`` on Core ML (macOS, ``verified``) or the numpy ML-program evaluator (``emulated``)."""

    name = "coreml"
    tier = "verified"

    @classmethod
    def available(cls) -> None:
        if native_coreml() is None:
            from edgesmith.runtimes.coreml.mil.mlpackage import proto_modules

            proto_modules()  # raises RuntimeUnavailableError without coremltools' protobuf modules

    def _load_impl(self) -> None:
        from edgesmith.runtimes.coreml.mil.mlpackage import read_model

        spec, _ = read_model(self.bundle.model_path)
        self._input_dtypes = {
            i.name: _ARRAY_DTYPES.get(i.type.multiArrayType.dataType) for i in spec.description.input
        }
        self._ranges = {
            i.name: [(r.lowerBound, r.upperBound) for r in i.type.multiArrayType.shapeRange.sizeRanges]
            for i in spec.description.input
        }
        ct = native_coreml()
        if ct is not None:
            units = self.bundle.manifest.options.get("compute_units", "all").upper()
            self.model = ct.models.MLModel(str(self.bundle.model_path), compute_units=ct.ComputeUnit[units])
            self.program = None
            self.tier, self.timing = "verified", "measured"
        else:
            from edgesmith.runtimes.coreml.mil import MilProgram

            self.model = None
            self.program = MilProgram(self.bundle.model_path)
            self.tier, self.timing = "emulated", "emulated"

    def prepare(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check inputs as the base class does, and their dynamic axes against the model's shape ranges.

        Raises:
            BadInputError: Also for a dynamic axis outside the range the model was converted for.
        """
        checked = super().prepare(feeds)
        for name, arr in checked.items():
            for axis, (lo, hi) in enumerate(self._ranges.get(name, [])):
                if axis < arr.ndim and not (lo <= arr.shape[axis] and (hi < 0 or arr.shape[axis] <= hi)):
                    raise BadInputError(
                        f"input {name} has size {arr.shape[axis]} on axis {axis}; this Core ML model "
                        f"takes {lo}..{hi if hi >= 0 else 'any'} there",
                        hint="where that bound is the exporter's max_dim, re-export with -O max_dim=N"
                        if hi >= 0 else None,
                    )
        return checked

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: v.astype(self._input_dtypes.get(k) or v.dtype, copy=False) for k, v in feeds.items()}
        out = self.program.run(feeds) if self.program is not None else self.model.predict(feeds)
        return {s.name: np.asarray(out[s.name]).astype(s.dtype, copy=False) for s in self.bundle.manifest.outputs}
