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
"""

from __future__ import annotations

import numpy as np

from edgesmith.errors import require
from edgesmith.runtimes.base import RUNTIMES, Runtime



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
