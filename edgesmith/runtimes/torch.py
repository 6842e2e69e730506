"""PyTorch loader for ``torch`` bundles (``model.pt2``), and for in-memory modules.

The one runtime that imports torch (lazily): it is the reference the others are
profiled against.
"""

from __future__ import annotations

import numpy as np

from edgesmith.errors import require
from edgesmith.runtimes import RUNTIMES, Runtime



@RUNTIMES.register("torch")
class TorchRuntime(Runtime):
    """Runs a ``torch.export`` program with PyTorch (tier ``verified``)."""

    name = "torch"
    tier = "verified"

    @classmethod
    def available(cls) -> None:
        require("torch", "all")

    def _load_impl(self) -> None:
        self._torch = torch = require("torch", "all")
        if self.threads:
            torch.set_num_threads(self.threads)
        self.module = torch.export.load(str(self.bundle.model_path)).module()

    def _run_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(feeds[s.name]) for s in self.bundle.manifest.inputs]
        with torch.inference_mode():
            out = self.module(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {s.name: t.numpy() for s, t in zip(self.bundle.manifest.outputs, out)}
