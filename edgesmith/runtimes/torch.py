"""PyTorch loader for ``torch`` bundles (``model.pt2``), on the CPU or a CUDA GPU.

The one runtime that imports torch (lazily): it is the reference the others are
profiled against, and the way a GPU from the device catalog is measured where one
is present (``accelerator="cuda"``, optionally under ``torch.compile``). On a GPU
the inputs are placed on the device once, in :meth:`TorchRuntime.prepare`, so a
timed run is the model's compute plus the copy of its outputs back to the host
(which also waits for the GPU to finish).
"""

from __future__ import annotations

import numpy as np

from edgesmith.errors import RuntimeUnavailableError, require
from edgesmith.runtimes.base import RUNTIMES, Runtime


@RUNTIMES.register
class TorchRuntime(Runtime):
    """Runs a ``torch.export`` program with PyTorch (tier ``verified``)."""

    name = "torch"
    tier = "verified"
    accelerators = ("cpu", "cuda")
    compiles = True

    @classmethod
    def available(cls) -> None:
        require("torch", "build")

    def _load_impl(self) -> None:
        self._torch = torch = require("torch", "build")
        if self.threads:
            torch.set_num_threads(self.threads)
        if self.accelerator == "cuda" and not torch.cuda.is_available():
            raise RuntimeUnavailableError(
                f"torch {torch.__version__} sees no CUDA GPU here",
                hint="measure on a machine with an NVIDIA GPU and a CUDA build of torch")
        self.device = torch.device("cuda" if self.accelerator == "cuda" else "cpu")
        program = torch.export.load(str(self.bundle.model_path))
        if self.device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            # weights, and the devices the graph names (an arange's device="cpu"), all to the GPU
            program = move_to_device_pass(program, self.device)
        self.module = program.module()
        if self.compiled:
            # no CUDA graphs: their replay would hide the per-run launch cost a user's loop pays
            self.module = torch.compile(self.module, mode="max-autotune-no-cudagraphs")

    def prepare(self, feeds: dict[str, np.ndarray]) -> dict:
        """Check the inputs (see :meth:`Runtime.prepare`); on a GPU, also copy them to it once."""
        checked = super().prepare(feeds)
        if self.device.type == "cpu":
            return checked
        return {k: self._torch.from_numpy(v).to(self.device) for k, v in checked.items()}

    def _run_impl(self, feeds: dict) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [feeds[s.name] if isinstance(feeds[s.name], torch.Tensor) else torch.from_numpy(feeds[s.name])
                for s in self.bundle.manifest.inputs]
        with torch.inference_mode():
            out = self.module(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {s.name: t.cpu().numpy() for s, t in zip(self.bundle.manifest.outputs, out)}
