"""MLX loader for ``mlx`` bundles (``model.mlxfn``).

MLX is Apple's array framework (Metal GPU on Apple silicon, CPU elsewhere,
``mlx[cpu]`` on Linux). The bundle holds one function exported with
``mx.export_function``, weights included; it is loaded with
``mx.import_function`` and run on MLX's default device. Inputs go in the
manifest's order, outputs are evaluated (``mx.eval``: MLX is lazy) and returned
as numpy arrays. MLX has no intra-op thread setting, so ``threads`` is ignored.

Speed on Linux: the ``mlx[cpu]`` wheel links a bundled reference BLAS (netlib
``libblas``, single-threaded, unoptimised) for its matrix multiplies, and a
transformer's time on it is almost all matmul: mlx-lm's own models run no
faster than these bundles there. A system OpenBLAS in ``LD_PRELOAD`` (e.g.
``LD_PRELOAD=libopenblas.so.0`` after ``apt-get install libopenblas0-pthread``)
takes over ``cblas_sgemm`` and makes them 10-30x faster; the numbers are in
BENCHMARKS.md ("MLX on Linux: bound by the wheel's matmul"). The preload must be
set before the process starts, so this runtime only documents it.

Generation bundles: :meth:`MlxRuntime.kv_stepper` keeps the KV cache as MLX arrays
between steps (each step's presents are the next one's pasts, never copied to numpy);
only the last position's logits come back. The function is shapeless, so one file
serves the prefill and every decode step at any cache length (see
:mod:`edgesmith.export.mlx`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgesmith.errors import require
from edgesmith.runtimes.base import RUNTIMES, Runtime
from edgesmith.runtimes.kv import empty_cache, step_feeds


@RUNTIMES.register
class MlxRuntime(Runtime):
    """Runs ``model.mlxfn`` with MLX (tier ``verified``)."""

    name = "mlx"
    tier = "verified"

    @classmethod
    def available(cls) -> None:
        require("mlx.core", "mlx")

    def _load_impl(self) -> None:
        self._mx = require("mlx.core", "mlx")
        self._fn = self._mx.import_function(str(self.bundle.model_path))

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mx = self._mx
        m = self.bundle.manifest
        outputs = self._fn(*[mx.array(feeds[s.name]) for s in m.inputs])
        mx.eval(outputs)
        return {s.name: np.array(o) for s, o in zip(m.outputs, outputs)}

    def kv_stepper(self, record: dict[str, Any], capacity: int | None = None) -> "MlxStepper":
        """A generation stepper that keeps the KV cache as MLX arrays between steps (``capacity``: unused,
        the cache grows by concatenation)."""
        return MlxStepper(self._mx, self._fn, self.bundle.manifest, record)


class MlxStepper:
    """Generation steps with the cache kept in MLX: numpy sees only the token ids and the logits."""

    def __init__(self, mx, fn, manifest, record: dict[str, Any]):
        self._mx = mx
        self._fn = fn
        self.inputs = [s.name for s in manifest.inputs]
        self.outputs = [s.name for s in manifest.outputs]
        self.past = {name: mx.array(arr) for name, arr in empty_cache(record).items()}

    def step(self, ids: np.ndarray, start: int, extra: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Run one step (``extra``: more feeds, such as a Dolphin decoder's memories); return the last
        position's logits ``(vocab,)``."""
        mx = self._mx
        feeds = {name: mx.array(arr) for name, arr in {**step_feeds(ids, start), **(extra or {})}.items()}
        feeds.update(self.past)
        values = dict(zip(self.outputs, self._fn(*[feeds[name] for name in self.inputs])))
        self.past = {name: values["present" + name[4:]] for name in self.past}
        logits = values["logits"][0, -1]
        # MLX is lazy: evaluate the cache too, or every step would recompute the ones before it
        mx.eval(logits, *self.past.values())
        return np.array(logits)
