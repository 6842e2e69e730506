"""PyTorch target: the variant as a ``torch.export`` program (``model.pt2``).

The reference every other target is compared against, packaged so that it is
loaded, run and profiled the same way as the others (runtime ``torch``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgesmith.export.base import EXPORTERS, Exporter


@dataclasses.dataclass
class TorchOptions:
    """Options of the ``torch`` target (none)."""


@EXPORTERS.register
class TorchExporter(Exporter):
    """Variant -> ``model.pt2``, verified on PyTorch."""

    name = "torch"
    runtime = "torch"
    model_file = "model.pt2"
    Options = TorchOptions

    def _export_impl(self, variant, stage: Path) -> None:
        import torch

        from edgesmith.errors import BadInputError
        from edgesmith.models.program import export_program

        if variant.module is None:
            raise BadInputError(f"{variant.name} is an ONNX model; the torch target needs a PyTorch model")
        torch.export.save(export_program(variant), str(stage / self.model_file))
