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

    def _run_impl(self, feeds: dict[str, np.ndarray], state=None) -> dict[str, np.ndarray]:
        feeds = {k: v.astype(self._input_dtypes.get(k) or v.dtype, copy=False) for k, v in feeds.items()}
        if self.program is not None:
            out = self.program.run(feeds, state)
        else:
            out = self.model.predict(feeds, state=state) if state is not None else self.model.predict(feeds)
        return {s.name: np.asarray(out[s.name]).astype(s.dtype, copy=False) for s in self.bundle.manifest.outputs}

    # -- stateful models (a generation bundle's KV cache) --------------------------------------

    def make_state(self):
        """A fresh (zeroed) state of a stateful model: Core ML's ``MLState``, or the evaluator's cells."""
        return self.program.make_state() if self.program is not None else self.model.make_state()

    def run_state(self, feeds: dict[str, np.ndarray], state) -> dict[str, np.ndarray]:
        """Run a stateful model on ``feeds``, reading and writing ``state`` (from :meth:`make_state`)."""
        return self._run_impl(self.prepare(feeds), state)

    def kv_stepper(self, record: dict, capacity: int | None = None) -> "StateStepper | None":
        """Generation steps of a stateful bundle (its record's ``cache`` has ``state``); None for a
        bundle whose cache goes in and out as tensors (the generic numpy loop steps it)."""
        return StateStepper(self, record) if "state" in record.get("cache", {}) else None


class StateStepper:
    """Generation steps on a stateful Core ML model: the cache stays in the model's state.

    Each step feeds the new tokens, their positions and the causal mask over the cached
    positions (:func:`edgesmith.runtimes.kv.state_feeds`); Core ML (or the evaluator) writes
    their keys and values into the state, so nothing is copied between steps.
    """

    def __init__(self, runtime: CoremlRuntime, record: dict):
        self.runtime = runtime
        self.capacity = record["cache"]["capacity"]
        self.state = runtime.make_state()

    def step(self, ids: np.ndarray, start: int, extra: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Run one step; return the last position's logits ``(vocab,)``.

        Raises:
            BadInputError: The step would pass the cache's capacity, or extra feeds were given.
        """
        from edgesmith.runtimes.kv import state_feeds

        if extra:
            raise BadInputError(f"{self.runtime.bundle.path.name} takes no {', '.join(extra)} (a stateful "
                                "Core ML generation bundle takes token ids only)")
        if start + ids.shape[1] > self.capacity:
            raise BadInputError(f"step at {start} + {ids.shape[1]} positions overflows the Core ML KV cache of "
                                f"{self.capacity} positions", hint="re-export with a larger -O context=N")
        return self.runtime.run_state(state_feeds(ids, start), self.state)["logits"][0, -1]
